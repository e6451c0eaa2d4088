"""Celery the Flask way: tasks run inside the app context, config from app.config["CELERY"]."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.schedules import crontab
from flask import Flask
from kombu import Queue

from shop.beat import is_redis_url

# Workers on several machines split the work by queue (`celery worker -Q reconciliation`);
# a worker started without -Q consumes them all. Task names are public: routes go by name.
DEFAULT_QUEUE = "celery"
QUEUES = (DEFAULT_QUEUE, "payments", "reconciliation", "exports")
TASK_ROUTES = {
    # Talks to Stripe about orders.
    "shop.expire_unpaid_orders": {"queue": "payments"},
    # The ledger work.
    "shop.reconcile_payments": {"queue": "reconciliation"},
    "shop.recognise": {"queue": "reconciliation"},
    "shop.rollup": {"queue": "reconciliation"},
    "shop.close_month": {"queue": "reconciliation"},
    "shop.import_offline_sales": {"queue": "reconciliation"},
    "shop.export": {"queue": "exports"},
}

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
    celery_app.conf.task_default_queue = DEFAULT_QUEUE
    celery_app.conf.task_queues = [Queue(name) for name in QUEUES]
    celery_app.conf.task_routes = TASK_ROUTES
    # Beat runs once: with the broker on Redis, only the beat holding the lock sends.
    if is_redis_url(celery_app.conf.get("beat_lock_url") or celery_app.conf.broker_url):
        celery_app.conf.beat_scheduler = "shop.beat:LockedScheduler"
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    # Registers the tasks with this app, so the web process can enqueue them too.
    # Request ids into task headers, task metrics and log context (Celery signals).
    import shop.observability.tasks  # noqa: F401
    import workers.tasks  # noqa: F401

    return celery_app
