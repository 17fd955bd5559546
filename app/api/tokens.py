"""REST API v1: tokens."""

from fastapi import APIRouter

router = APIRouter(tags=["tokens"])
