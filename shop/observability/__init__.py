"""What operators see of a running shop: JSON logs that follow a request into the tasks it
causes, and Prometheus metrics at `/metrics`."""

from __future__ import annotations

from flask import Flask

from shop.observability.logs import configure_logging, init_request_ids
from shop.observability.metrics import init_metrics


def init_observability(app: Flask) -> None:
    configure_logging(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])
    init_request_ids(app)
    init_metrics(app)


__all__ = ["init_observability"]
