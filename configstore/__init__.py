"""The config store: the Django project and the config-store app (state machine, admin, API)."""

from .celery import app as celery_app

__all__ = ("celery_app",)
