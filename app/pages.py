"""Browser pages (Jinja2 templates) at the URLs of DESIGN.md section 6."""

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
