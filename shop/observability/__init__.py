"""What operators see of a running shop: JSON logs that follow a request into the tasks it
causes, and Prometheus metrics at `/metrics`."""

from __future__ import annotations

import os

# prometheus_client counts in files once the variable exists, even empty (a line left blank in an
# env file); here an empty one means what an absent one does: this process's memory.
if "PROMETHEUS_MULTIPROC_DIR" in os.environ and not os.environ["PROMETHEUS_MULTIPROC_DIR"]:
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]

from flask import Flask

from shop.observability.logs import configure_logging, init_request_ids
from shop.observability.metrics import init_metrics


def init_observability(app: Flask) -> None:
    configure_logging(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])
    init_request_ids(app)
    init_metrics(app)


__all__ = ["init_observability"]
