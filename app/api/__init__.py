"""REST API v1 routers (mounted under /api/v1 by app.main)."""
