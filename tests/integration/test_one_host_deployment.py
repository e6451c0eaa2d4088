"""The README's one-host deployment, run for real: gunicorn with deploy/gunicorn.conf.py (two
worker processes), two Celery workers on different queues and beat with its lock, all on one
PostgreSQL and one Redis, sharing one metrics directory.

A buyer pays, finance reconciles and exports; the request id of each finance request shows up in
the log lines of the worker that ran its task (and only there), and gunicorn's `/metrics` adds up
what every process of the host counted: requests, the tasks of both Celery workers' pools, the
webhook, the paid order; the front worker serves the same figures on its own port. The compose
file's health checks of beat and of a worker are run against these processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from shop.config import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from tests.conftest import (
    HUIZHOU_ADDRESS,
    PASSWORD,
    Samples,
    demo_shop,
    emptied_redis,
    emulator_control,
    free_port,
    metric_samples,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379"
BROKER, RESULTS = f"{REDIS}/5", f"{REDIS}/6"
LOCK_KEY = "shop:beat-lock"
GOODS_FEN = 2 * 12800  # two boxes of 普安红茶（特级）


@dataclass
class Host:
    url: str
    logs: dict[str, Path]
    metrics_dir: Path
    worker_port: int
    env: dict[str, str]

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kwargs)

    def answering(self) -> bool:
        try:
            return self.get("/healthz").ok
        except requests.ConnectionError:
            return False

    def token(self, email: str) -> dict[str, str]:
        response = self.post("/api/v1/auth/tokens", json={"email": email, "password": PASSWORD})
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        """The process's JSON log lines; a line that is not JSON fails the test."""
        lines = self.logs[name].read_text(encoding="utf-8").splitlines()
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"{name} wrote a line that is not JSON: {line!r}") from None
        return parsed


def value(metrics: Samples, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


CELERY = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]


def run(host: Host, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """A command with the processes' environment, as a health check runs in their container."""
    return subprocess.run(argv, env={**host.env, **env}, capture_output=True, text=True, timeout=60)


def worker(queues: str, name: str) -> list[str]:
    return [
        *CELERY,
        *("--quiet", "worker"),
        *(f"--queues={queues}", f"--hostname={name}", "--concurrency=2"),
        *("--without-gossip", "--without-mingle"),
    ]


@pytest.fixture
def host(database_url: str, emulator: str, own_broker: None, tmp_path: Path) -> Iterator[Host]:
    if not database_url.startswith("postgresql"):
        pytest.skip("the one-host deployment runs on PostgreSQL")
    port, worker_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = tmp_path / "metrics"
    env = {
        **os.environ,
        "SHOP_ENV": "production",
        "SECRET_KEY": "one-host-test-secret",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": BROKER,
        "CELERY_RESULT_BACKEND": RESULTS,
        "RATELIMIT_STORAGE_URI": f"{REDIS}/5",
        "STRIPE_SECRET_KEY": EMULATOR_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": EMULATOR_WEBHOOK_SECRET,
        "STRIPE_API_BASE": emulator,
        "SHOP_BASE_URL": url,
        "SHOP_INSTANCE_DIR": str(tmp_path / "var"),
        "EXPORT_DIR": str(tmp_path / "files" / "exports"),
        "UPLOAD_DIR": str(tmp_path / "files" / "uploads"),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_MAX_WORKERS": "2",
        "GUNICORN_THREADS": "4",
    }
    commands = {
        "web": [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(ROOT / "deploy" / "gunicorn.conf.py"),
            "shop:create_app()",
        ],
        # As the README starts them: prefork pools, the ledger queue apart from the others.
        "ledger-worker": worker("reconciliation", "ledger@%h"),
        "front-worker": worker("celery,payments,exports", "front@%h"),
        "beat": [*CELERY, "--quiet", "beat", "--schedule", str(tmp_path / "celerybeat-schedule")],
    }
    # Logs go to stderr; stdout has only Celery's start-up banner.
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    processes = []
    with emptied_redis(BROKER, RESULTS), demo_shop(database_url, emulator):
        emulator_control(emulator, "webhooks", url=f"{url}/api/v1/stripe/webhook", drop_next=0)
        try:
            for name, argv in commands.items():
                # The front worker also serves its host's metrics on a port of its own.
                own = {"WORKER_METRICS_PORT": str(worker_port)} if name == "front-worker" else {}
                with logs[name].open("wb") as err, (tmp_path / f"{name}.out").open("wb") as out:
                    processes.append(
                        subprocess.Popen(
                            argv, env={**env, **own}, cwd=tmp_path, stdout=out, stderr=err
                        )
                    )
            host = Host(
                url=url, logs=logs, metrics_dir=metrics_dir, worker_port=worker_port, env=env
            )
            wait_for(host.answering, 30, "gunicorn answering", *logs.values())
            yield host
        finally:
            emulator_control(emulator, "deliveries/wait", timeout=10)
            emulator_control(emulator, "webhooks", url=None, drop_next=0)
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


def test_one_host_runs_web_two_workers_and_beat_with_logs_and_metrics_across_processes(
    host: Host, emulator: str
) -> None:
    # Ready: database, broker and Stripe (the emulator) all answer.
    ready = host.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "stripe": "ok"}

    # Beat holds the lock in the broker's Redis.
    lock = redis.Redis.from_url(BROKER)
    wait_for(lambda: lock.get(LOCK_KEY), 30, "beat taking its lock", *host.logs.values())

    # The compose file's health checks of beat and of a worker, run against these processes.
    beat_check = run(host, [sys.executable, "-m", "shop.beat"])
    assert (beat_check.returncode, beat_check.stdout.strip()) == (0, "beat lock: held")
    elsewhere = run(host, [sys.executable, "-m", "shop.beat"], BEAT_LOCK_URL=RESULTS)
    assert elsewhere.returncode == 1 and "nobody holds it" in elsewhere.stdout
    ping = [*CELERY, "--quiet", "inspect", "ping"]
    answered = run(
        host, [*ping, "--timeout", "10", "--destination", f"ledger@{socket.gethostname()}"]
    )
    assert answered.returncode == 0, answered.stdout + answered.stderr
    assert "pong" in answered.stdout
    nobody = run(host, [*ping, "--timeout", "1", "--destination", f"nobody@{socket.gethostname()}"])
    assert nobody.returncode != 0

    # A buyer orders two boxes of Puan tea and pays on the emulator's Checkout.
    buyer = host.token("buyer@example.com")
    created = host.post(
        "/api/v1/orders",
        headers={**buyer, "X-Request-ID": "deploy-order-1"},
        json={"lines": [{"sku": "PA-TEA-001", "quantity": 2}], "address": HUIZHOU_ADDRESS},
    )
    assert created.status_code == 201, created.text
    assert created.headers["X-Request-ID"] == "deploy-order-1"
    order = created.json()
    session = order["checkout_url"].rstrip("/").rsplit("/", 1)[-1]
    emulator_control(emulator, f"checkout/sessions/{session}/pay")
    wait_for(
        lambda: (
            host.get(f"/api/v1/orders/{order['number']}", headers=buyer).json()["status"] == "paid"
        ),
        30,
        "the webhook marking the order paid",
        *host.logs.values(),
    )

    # Finance reconciles now: the task runs on the reconciliation queue's worker.
    finance = host.token("finance@example.com")
    reconciled = host.post(
        "/api/v1/finance/reconcile", headers={**finance, "X-Request-ID": "deploy-reconcile-1"}
    )
    assert reconciled.status_code == 200, reconciled.text
    totals = host.get("/api/v1/finance/totals", headers=finance).json()
    assert totals["total_fen"] == GOODS_FEN

    # An xlsx export as a task: the exports queue's worker writes it.
    started = host.post(
        "/api/v1/finance/exports",
        headers={**finance, "X-Request-ID": "deploy-export-1"},
        json={"report": "totals", "format": "xlsx", "group_by": "county"},
    )
    assert started.status_code == 202, started.text
    job = wait_for(
        lambda: (
            (j := host.get(started.json()["url"], headers=finance).json())["status"] == "done" and j
        ),
        60,
        "the export job finishing",
        *host.logs.values(),
    )
    download = host.get(job["download_url"], headers=finance)
    assert download.status_code == 200 and download.content.startswith(b"PK")

    # Each task ran on the worker for its queue, under the id of the request that caused it.
    def task_lines(worker: str, request_id: str) -> list[dict[str, Any]]:
        return [
            line
            for line in host.log_lines(worker)
            if line.get("request_id") == request_id and line["logger"] == "shop.tasks"
        ]

    def finished(worker: str, request_id: str, task: str) -> bool:
        return any(
            line["message"] == f"task {task} finished: SUCCESS"
            for line in task_lines(worker, request_id)
        )

    wait_for(
        lambda: finished("front-worker", "deploy-export-1", "shop.export"),
        10,
        "export log",
        *host.logs.values(),
    )
    assert finished("ledger-worker", "deploy-reconcile-1", "shop.reconcile_payments")
    assert task_lines("front-worker", "deploy-reconcile-1") == []
    assert task_lines("ledger-worker", "deploy-export-1") == []
    for line in task_lines("front-worker", "deploy-export-1"):
        assert line["task_name"] == "shop.export" and line["task_id"]
    # The web's own line for each request, with the same id.
    web = host.log_lines("web")
    answered = {
        (line["request_id"], line["endpoint"], line["status"])
        for line in web
        if line["logger"] == "shop.requests"
    }
    assert ("deploy-order-1", "orders_api.create_order", 201) in answered
    assert ("deploy-reconcile-1", "reconciliation_api.reconcile_now", 200) in answered
    assert ("deploy-export-1", "finance_api.start_export", 202) in answered
    assert any(line["logger"] == "gunicorn.error" for line in web)

    # Requests over fresh connections, to whichever gunicorn worker the kernel hands each one.
    for _ in range(40):
        assert host.get("/api/v1/products", params={"county": "522323"}).ok
    metrics = metric_samples(host.get("/metrics").text)
    assert (
        value(
            metrics,
            "shop_http_requests_total",
            method="GET",
            endpoint="catalog_api.list_products",
            status="200",
        )
        == 40
    )
    assert (
        value(
            metrics,
            "shop_http_request_duration_seconds_count",
            method="GET",
            endpoint="catalog_api.list_products",
        )
        == 40
    )
    # Each process writes its own files: at least one gunicorn worker and a pool process of each
    # Celery worker.
    writers = {path.stem.rsplit("_", 1)[-1] for path in host.metrics_dir.iterdir()}
    assert len(writers) >= 3, writers
    # The workers' task runs, counted in their processes, seen through the web's /metrics.
    assert value(metrics, "shop_task_runs_total", task="shop.export") == 1
    assert value(metrics, "shop_task_runs_total", task="shop.reconcile_payments") >= 1
    assert value(metrics, "shop_task_failures_total", task="shop.export") == 0
    assert value(metrics, "shop_task_duration_seconds_count", task="shop.export") == 1
    # Stripe sends several events for one payment; exactly one of them marks it paid.
    webhooks = {
        (dict(labels)["type"], dict(labels)["outcome"]): count
        for (name, labels), count in metrics.items()
        if name == "shop_webhook_events_total"
    }
    assert sum(n for (_, outcome), n in webhooks.items() if outcome == "applied") == 1, webhooks
    assert (
        sum(n for (kind, _), n in webhooks.items() if kind == "checkout.session.completed") == 1
    ), webhooks
    assert value(metrics, "shop_orders", status="paid", channel="online") == 1
    assert value(metrics, "shop_orders", status="awaiting_payment", channel="online") == 0
    assert value(metrics, "shop_metrics_database_up") == 1

    # The worker's own port shows the same host-wide task counts (a host without a web process).
    served = metric_samples(
        requests.get(f"http://127.0.0.1:{host.worker_port}/metrics", timeout=10).text
    )
    assert value(served, "shop_task_runs_total", task="shop.export") == 1
    assert value(served, "shop_task_runs_total", task="shop.reconcile_payments") >= 1
