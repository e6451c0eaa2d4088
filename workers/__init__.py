"""Celery worker entry points; the behaviour lives in `shop`."""
