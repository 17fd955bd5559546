"""The Celery worker: training and prediction tasks, the periodic scheduler and the model registry.

Uses app/ services for all database work and sage/ for all ML. Nothing here is imported by app/.
"""
