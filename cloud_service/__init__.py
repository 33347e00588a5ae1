"""Cloud service: FastAPI + Celery + SQLAlchemy (REST API, jobs, artifacts, rollouts, dashboard)."""
