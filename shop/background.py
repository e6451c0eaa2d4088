"""Celery the Flask way: tasks run inside the app context, config from app.config["CELERY"]."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.schedules import crontab
from flask import Flask

BEAT_SCHEDULE = {
    "expire-unpaid-orders": {"task": "shop.expire_unpaid_orders", "schedule": crontab(minute="*")},
    "rollup": {"task": "shop.rollup", "schedule": crontab(minute="*")},
    "recognise": {"task": "shop.recognise", "schedule": crontab(minute="*/5")},
    "reconcile-payments": {"task": "shop.reconcile_payments", "schedule": crontab(minute="*/15")},
}


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.conf.beat_schedule = BEAT_SCHEDULE
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    # Registers the tasks with this app, so the web process can enqueue them too.
    import workers.tasks  # noqa: F401

    return celery_app
