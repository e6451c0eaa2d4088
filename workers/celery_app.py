"""`celery -A workers.celery_app worker` / `beat` start here."""

from shop import create_app

flask_app = create_app()
celery = flask_app.extensions["celery"]
