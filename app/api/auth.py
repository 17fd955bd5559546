"""REST API v1: auth."""

from fastapi import APIRouter

router = APIRouter(tags=["auth"])
