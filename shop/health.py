"""Probes for load balancers and process managers.

`/healthz` says the process answers; `/readyz` says it can do its work: the database answers, the
Celery broker accepts connections, and Stripe (or the emulator) is reachable. Each check has a
short timeout, so a probe never hangs on a dead dependency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests
from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from shop.api import RETRY_AFTER_SECONDS
from shop.extensions import db

bp = Blueprint("health", __name__)

CHECK_TIMEOUT_SECONDS = 2.0
STRIPE_API = "https://api.stripe.com"


def _database() -> str:
    db.session.execute(text("SELECT 1"))
    return "ok"


def _broker() -> str:
    celery = current_app.extensions["celery"]
    if celery.conf.task_always_eager:
        return "in-process"
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
    return "ok"


def _stripe() -> str:
    # Any HTTP answer means the API is reachable; authentication is not spent on a probe.
    base = current_app.config.get("STRIPE_API_BASE") or STRIPE_API
    requests.get(base, timeout=CHECK_TIMEOUT_SECONDS)
    return "ok"


CHECKS: dict[str, Callable[[], str]] = {
    "database": _database,
    "broker": _broker,
    "stripe": _stripe,
}


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception as exc:  # every failure is an answer here, named, not a 500
            if name == "database":
                db.session.rollback()
            current_app.logger.warning("readiness check %s failed: %s", name, exc)
            results[name] = f"unavailable: {type(exc).__name__}"
    ready = all(not value.startswith("unavailable") for value in results.values())
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": results})
    if ready:
        return response
    return response, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}
