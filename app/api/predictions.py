"""REST API v1: predictions."""

from fastapi import APIRouter

router = APIRouter(tags=["predictions"])
