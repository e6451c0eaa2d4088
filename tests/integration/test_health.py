"""The probes a load balancer asks: /healthz (the process answers) and /readyz (it can work),
against the real database, the real broker when one is configured, and the real emulator; and
with each dependency pointed at a port where nothing listens."""

from __future__ import annotations

import os
import time
from typing import Any

from tests.conftest import free_port, make_app


def test_healthz_answers_and_readyz_checks_database_broker_and_stripe(client: Any) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    checks = ready.get_json()["checks"]
    assert checks["database"] == "ok" and checks["stripe"] == "ok"
    broker_expected = "ok" if os.environ.get("CELERY_BROKER_URL") else "in-process"
    assert checks["broker"] == broker_expected


def test_readyz_names_what_is_down_and_asks_to_come_back(
    database_url: str, emulator: str, own_broker: None
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    celery = {
        "broker_url": f"redis://{nowhere}/0",
        "task_always_eager": False,
        "broker_connection_timeout": 1,
    }
    app = make_app(database_url, f"http://{nowhere}", CELERY=celery)
    started = time.monotonic()
    answer = app.test_client().get("/readyz")
    assert time.monotonic() - started < 10  # bounded: a probe never hangs on a dead dependency
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    body = answer.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("unavailable")
    assert body["checks"]["stripe"].startswith("unavailable")
    assert app.test_client().get("/healthz").status_code == 200


def test_readyz_is_503_when_the_database_is_unreachable(emulator: str) -> None:
    app = make_app(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test", emulator)
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["database"].startswith("unavailable")
