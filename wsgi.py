"""WSGI entry point for gunicorn and `flask --app wsgi`."""

from shop import create_app

app = create_app()
