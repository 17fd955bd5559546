"""REST API v1: images."""

from fastapi import APIRouter

router = APIRouter(tags=["images"])
