"""The Claworc control plane project: settings, Celery app, URLs and ASGI entry point."""

from claworc.celery import app as celery_app

__all__ = ("celery_app",)
