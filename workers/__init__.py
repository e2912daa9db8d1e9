"""Celery app, the design task and the job runner it calls."""
