"""REST API v1: models."""

from fastapi import APIRouter

router = APIRouter(tags=["models"])
