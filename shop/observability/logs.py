"""Structured logs: one JSON object a line, each carrying the request id of the web request that
caused it, in the web process and in the Celery tasks that request enqueued.

The id comes from the `X-Request-ID` header (nginx sets it, `$request_id`) when it is well formed,
or is made here; it goes back in the response's `X-Request-ID`, into every log line of the request,
and into the headers of every task the request publishes (shop/observability/tasks.py).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "X-Request-ID"
# What we accept from a proxy: short, and nothing that could break a log line or a header.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
task_id: ContextVar[str | None] = ContextVar("task_id", default=None)
task_name: ContextVar[str | None] = ContextVar("task_name", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
OUTSIDE = "-"  # the text format's request id outside a request
UNMATCHED = "unmatched"  # the endpoint of a request that matched no route
JSON_FIELDS = ["asctime", "levelname", "name", "message"]
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}
OPTIONAL = frozenset({"request_id", "task_id", "task_name"})


class ContextFilter(logging.Filter):
    """Stamps each record with the request and task it belongs to (None outside either)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.task_id = task_id.get()
        record.task_name = task_name.get()
        return True


class UtcJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # A line from outside a request or task does not carry empty ids.
        return {k: v for k, v in log_data.items() if v is not None or k not in OPTIONAL}


class _ShopHandler(logging.StreamHandler[TextIO]):
    """Our handler on the root logger; a second configure_logging replaces it, never doubles it."""


def json_formatter() -> logging.Formatter:
    """Also named by deploy/gunicorn.conf.py, so gunicorn's own lines are JSON too."""
    return UtcJsonFormatter(JSON_FIELDS, rename_fields=RENAMED, json_ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain lines; a line break in a message (a path from a request) cannot start a forged line."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        if getattr(record, "request_id", None) is None:
            record.request_id = getattr(record, "task_id", None) or OUTSIDE
        record.msg, record.args = escaped(record.getMessage()), None
        return super().format(record)


def escaped(message: str) -> str:
    """Control characters and line or paragraph separators (U+2028, …) as their escapes."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in message)


def formatter(fmt: str) -> logging.Formatter:
    return json_formatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)


def configure_logging(fmt: str, level: str) -> None:
    """Root logger to stderr as JSON (or text), with request and task ids on every record."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ShopHandler)]:
        root.removeHandler(handler)
    handler = _ShopHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # Warnings (a library's deprecation, Celery's "running as root") become log lines too.
    logging.captureWarnings(True)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # One line a request comes from shop.requests below; werkzeug's own would say it twice.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def incoming_request_id(value: str | None) -> str:
    if value and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return uuid.uuid4().hex


requests_log = logging.getLogger("shop.requests")


def init_request_ids(app: Flask) -> None:
    @app.before_request
    def start_request() -> None:
        g.request_id = incoming_request_id(request.headers.get(REQUEST_ID_HEADER))
        g.request_token = request_id.set(g.request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def finish_request(response: Response) -> Response:
        rid = g.get("request_id")
        if rid is None:
            return response
        response.headers[REQUEST_ID_HEADER] = rid
        fields: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "endpoint": request.endpoint or UNMATCHED,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.request_started) * 1000, 1),
            "remote_addr": request.remote_addr,
        }
        requests_log.info(
            "%s %s %s", request.method, request.path, response.status_code, extra=fields
        )
        return response

    @app.teardown_request
    def forget_request(_exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            request_id.reset(token)
