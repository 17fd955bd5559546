"""REST API v1: annotations."""

from fastapi import APIRouter

router = APIRouter(tags=["annotations"])
