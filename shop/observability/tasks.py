"""Celery's side of the logs and metrics, wired through Celery's signals.

Publishing a task copies the current request id into its message headers; the worker puts it
back in the log context for the run, so a task's log lines carry the id of the request that
caused it (beat's tasks have none: their lines carry the task id). Each run is counted and timed.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

from celery import signals, states
from prometheus_client import start_http_server

from shop.observability import logs
from shop.observability.metrics import (
    TASK_DURATION,
    TASK_FAILURES,
    TASK_RUNS,
    process_registry,
)

log = logging.getLogger("shop.tasks")
HEADER = "request_id"


@signals.before_task_publish.connect
def carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    current = logs.request_id.get()
    if current and headers is not None:
        headers.setdefault(HEADER, current)


@signals.task_prerun.connect
def task_started(task_id: str, task: Any, **_: Any) -> None:
    tokens = [logs.task_id.set(task_id), logs.task_name.set(task.name)]
    carried = task.request.get(HEADER)
    if carried or not task.request.is_eager:
        # In a worker: this run's id, or none (a task from beat). Run in-process (the demo), the
        # task stays in the request that called it.
        tokens.append(logs.request_id.set(carried))
    # Kept on this run's request context: two runs of one task id (a redelivery while the first
    # still runs) in one process each keep their own.
    task.request.shop_observed = (time.perf_counter(), tokens)
    TASK_RUNS.labels(task.name).inc()
    log.info("task %s started", task.name)


@signals.task_failure.connect
def task_failed(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    log.error("task %s failed: %r", getattr(sender, "name", "unknown"), exception)


@signals.task_postrun.connect
def task_finished(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started, tokens = task.request.get("shop_observed") or (None, [])
    if state is None:
        # Run in-process, the task raised straight to its caller: Celery sends no task_failure.
        state = states.FAILURE
        log.error("task %s failed", task.name)
    if state == states.FAILURE:
        TASK_FAILURES.labels(task.name).inc()
    if started is not None:
        elapsed = time.perf_counter() - started
        TASK_DURATION.labels(task.name).observe(elapsed)
        log.info(
            "task %s finished: %s",
            task.name,
            state,
            extra={"state": state, "duration_ms": round(elapsed * 1000, 1)},
        )
    for token in reversed(tokens):
        token.var.reset(token)


@signals.setup_logging.connect
def worker_logging(**_: Any) -> None:
    """The worker logs as the web does (create_app configured it); Celery leaves the root alone."""


@signals.worker_init.connect
def serve_worker_metrics(sender: Any = None, **_: Any) -> None:
    """WORKER_METRICS_PORT: the worker's own /metrics, for hosts that run workers but no web."""
    conf = sender.app.conf
    port = conf.get("worker_metrics_port")
    if not port:
        return
    # shop/config.py refuses the port without PROMETHEUS_MULTIPROC_DIR: the pool's processes
    # count the tasks, and only the shared directory shows them to this main process.
    address = conf.get("worker_metrics_address")
    try:
        start_http_server(port, addr=address, registry=process_registry())
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Another worker of this host serves the port, from the same directory: the same figures.
        log.info("worker metrics: port %s already served on this host", port)
        return
    log.info("worker metrics on http://%s:%s/metrics", address, port)
