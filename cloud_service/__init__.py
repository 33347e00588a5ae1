"""Cloud service (issue 4): FastAPI + Celery + SQLAlchemy."""
