"""REST API v1: projects."""

from fastapi import APIRouter

router = APIRouter(tags=["projects"])
