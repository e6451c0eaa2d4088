"""Prometheus metrics at `/metrics`.

Counted as they happen, in the process they happen in: requests (by endpoint and status, with
latency), Stripe webhook events (by type and outcome) and task runs (with failures and durations).
Read from the database at each scrape: orders by status and open discrepancies, so every web
process reports the same figures.

Under gunicorn (several processes) and in Celery workers, set PROMETHEUS_MULTIPROC_DIR to one
directory shared by the processes of a host: each writes its counters there and `/metrics`
adds them up, so a scrape sees every process, the workers' tasks included. Without it (the demo,
one process) the counters live in memory.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from shop.config import ConfigError
from shop.extensions import db
from shop.observability.logs import UNMATCHED

HTTP_REQUESTS = Counter(
    "shop_http_requests",
    "HTTP requests answered, by endpoint and status.",
    ["method", "endpoint", "status"],
)
HTTP_LATENCY = Histogram(
    "shop_http_request_duration_seconds",
    "Time to answer an HTTP request, by endpoint.",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
WEBHOOK_EVENTS = Counter(
    "shop_webhook_events",
    "Stripe webhook events received, by type and outcome (applied, ignored, rejected, failed).",
    ["type", "outcome"],
)
TASK_RUNS = Counter("shop_task_runs", "Celery task runs started, by task.", ["task"])
TASK_FAILURES = Counter("shop_task_failures", "Celery task runs that raised, by task.", ["task"])
TASK_DURATION = Histogram(
    "shop_task_duration_seconds",
    "Time a Celery task ran, by task.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0),
)

# Requests that matched no route are counted under one name, not one per made-up path; so are
# made-up methods.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
QUERY_TIMEOUT_MS = 5000
log = logging.getLogger(__name__)


class DatabaseCollector(Collector):
    """Figures read from the database when scraped (inside the `/metrics` request). With the
    database down they are left out and `shop_metrics_database_up` says 0: the process counters
    still come through, when they matter most."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "shop_metrics_database_up", "1 if this scrape could read the database figures."
        )
        try:
            families = list(self._database_families())
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.warning("metrics: database figures left out: %s", exc.__class__.__name__)
            families = []
        up.add_metric([], 1 if families else 0)
        yield up
        yield from families

    def _database_families(self) -> Iterator[GaugeMetricFamily]:
        from shop.orders.models import Channel, Order, Status
        from shop.reconciliation.models import Discrepancy, DiscrepancyKind, DiscrepancyStatus

        if db.session.get_bind().dialect.name == "postgresql":
            # A scrape never queues behind a slow database for long.
            db.session.execute(text(f"SET LOCAL statement_timeout = {QUERY_TIMEOUT_MS}"))
        counts = db.session.execute(
            select(Order.status, Order.channel, func.count()).group_by(Order.status, Order.channel)
        ).all()
        found = dict(
            db.session.execute(
                select(Discrepancy.kind, func.count())
                .where(Discrepancy.status == DiscrepancyStatus.OPEN)
                .group_by(Discrepancy.kind)
            ).all()
        )

        orders = GaugeMetricFamily(
            "shop_orders", "Orders by status and channel.", labels=["status", "channel"]
        )
        by_key = {(status, channel): n for status, channel, n in counts}
        for status in Status:
            for channel in Channel:
                orders.add_metric([status, channel], by_key.get((status, channel), 0))
        yield orders

        open_ = GaugeMetricFamily(
            "shop_discrepancies_open",
            "Reconciliation discrepancies still open, by kind.",
            labels=["kind"],
        )
        for kind in sorted(set(DiscrepancyKind) | set(found)):
            open_.add_metric([str(kind)], found.get(kind, 0))
        yield open_


def multiprocess_directory() -> str:
    """prometheus_client reads the same variable when it loads: set it before the process starts."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def process_registry() -> CollectorRegistry:
    """The counters of every process of this host (multiprocess mode), or of this one."""
    directory = multiprocess_directory()
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    token = current_app.config["METRICS_TOKEN"]
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return Response(
                "Bearer token required.\n", 401, {"WWW-Authenticate": 'Bearer realm="metrics"'}
            )
    database = CollectorRegistry()
    database.register(DatabaseCollector())
    body = generate_latest(process_registry()) + generate_latest(database)
    db.session.rollback()
    return Response(body, content_type=CONTENT_TYPE_LATEST)


def init_metrics(app: Flask) -> None:
    directory = multiprocess_directory()
    if directory:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"PROMETHEUS_MULTIPROC_DIR={directory} cannot be created ({exc.strerror}): create"
                " it, writable by the shop's user (the systemd units do), or leave the setting out"
            ) from exc
    app.register_blueprint(bp)

    @app.after_request
    def count_request(response: Response) -> Response:
        started = g.get("request_started")
        if started is None:
            return response
        endpoint = request.endpoint or UNMATCHED
        method = request.method if request.method in METHODS else "other"
        try:
            HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
            HTTP_LATENCY.labels(method, endpoint).observe(time.perf_counter() - started)
        except OSError:
            # The metrics directory is gone or full: the answer still goes out.
            log.exception("metrics: request not counted")
        return response
