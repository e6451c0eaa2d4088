"""Shared fixtures: a migrated database (SQLite by default, PostgreSQL when DATABASE_URL says so),
a real Stripe emulator process, the app, and the shop served over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from sqlalchemy import create_engine, select, text
from werkzeug.serving import make_server

from shop import create_app
from shop.accounts import audit_sql
from shop.accounts.models import User
from shop.config import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from shop.db import Base
from shop.demo import load_demo_data, load_demo_sales
from shop.extensions import db
from shop.migrate import upgrade
from shop.orders.services import Address, RequestedLine
from shop.payments.services import checkout

PASSWORD = "demo-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout} s")


def wait_for(condition: Callable[[], Any], seconds: float, what: str, *logs: Path) -> Any:
    """Poll until `condition` returns something true, and return it; after `seconds`, fail with
    the end of each log (of the processes the test started)."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:g} s\n{log_tails(*logs)}")
        time.sleep(0.02)


def log_tails(*logs: Path, chars: int = 3000) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-chars:] if log.exists() else ''}"
        for log in logs
    )


def stop_process(process: subprocess.Popen[Any], *, kill: bool = False) -> None:
    """SIGTERM (and SIGKILL if it lingers), or SIGKILL at once; then reap it."""
    if process.poll() is None:
        if kill:
            process.kill()
        else:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The database under test, migrated once with Alembic (never create_all)."""
    url = os.environ.get("DATABASE_URL") or (
        f"sqlite:///{tmp_path_factory.mktemp('db') / 'shop.sqlite3'}"
    )
    if url.startswith("postgresql"):
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        except Exception as exc:  # say so loudly: a PostgreSQL run must not pass without one
            pytest.exit(f"PostgreSQL at {url} is not reachable: {exc}", returncode=3)
        finally:
            engine.dispose()
    upgrade(create_app({"SQLALCHEMY_DATABASE_URI": url}))
    return url


@contextmanager
def running_emulator() -> Iterator[str]:
    """A real Stripe emulator process on a free port, delivering webhooks nowhere until told."""
    port = free_port()
    env = dict(
        os.environ,
        STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
    )
    env.pop("EMULATOR_WEBHOOK_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "shop.payments.emulator", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/_emulator/health")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    """The emulator the tests share; each test points its webhooks where it needs them."""
    with running_emulator() as url:
        yield url


def emulator_control(emulator_url: str, path: str, **payload: Any) -> Any:
    response = requests.post(f"{emulator_url}/_emulator/{path}", json=payload, timeout=10)
    response.raise_for_status()
    return response.json()


def reset_database(url: str) -> None:
    engine = create_engine(url)
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    dialect = engine.dialect.name
    with engine.begin() as conn:
        # audit_entries refuses to be emptied: its triggers are lifted for the reset and put
        # back with the very statements migration 0004 installs.
        for statement in audit_sql.drop_statements(dialect):
            conn.execute(text(statement))
        if dialect == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
        for statement in audit_sql.install_statements(dialect):
            conn.execute(text(statement))
    engine.dispose()


def make_app(database_url: str, emulator_url: str, **overrides: Any) -> Flask:
    config = {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "STRIPE_SECRET_KEY": EMULATOR_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": EMULATOR_WEBHOOK_SECRET,
        "STRIPE_API_BASE": emulator_url,
        "STRIPE_TIMEOUT_SECONDS": 2.0,
        "STRIPE_MAX_NETWORK_RETRIES": 1,
        "LOGIN_RATE_LIMIT": "1000 per minute",
        "LOGIN_ACCOUNT_RATE_LIMIT": "1000 per minute",
        "WTF_CSRF_ENABLED": True,
        "TESTING": True,
        **overrides,
    }
    return create_app(config)


@contextmanager
def demo_shop(
    database_url: str, emulator_url: str, *, sales: int = 0, **overrides: Any
) -> Iterator[Flask]:
    """A fresh shop: empty tables, the demo catalogue and accounts, and `sales` paid orders."""
    emulator_control(emulator_url, "failures", mode="none")
    emulator_control(emulator_url, "webhooks", url=None, drop_next=0)
    reset_database(database_url)
    app = make_app(database_url, emulator_url, **overrides)
    with app.app_context():
        load_demo_data(db.session)
        if sales:
            load_demo_sales(db.session, orders=sales)
        db.session.commit()
        db.session.remove()
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(database_url: str, emulator: str) -> Iterator[Flask]:
    """A fresh shop: empty tables, then the demo catalogue and accounts."""
    with demo_shop(database_url, emulator) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


def bearer(client: Any, email: str, password: str = PASSWORD) -> dict[str, str]:
    response = client.post("/api/v1/auth/tokens", json={"email": email, "password": password})
    assert response.status_code == 201, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['token']}"}


@pytest.fixture
def buyer(client: Any) -> dict[str, str]:
    return bearer(client, "buyer@example.com")


@pytest.fixture
def admin(client: Any) -> dict[str, str]:
    return bearer(client, "admin@example.com")


HUIZHOU_ADDRESS = {
    "name": "张小惠",
    "phone": "13800138000",
    "province": "广东省",
    "city": "惠州市",
    "district": "惠城区",
    "detail": "江北街道文昌一路 8 号",
}


@dataclass
class LiveShop:
    url: str
    emulator_url: str
    app: Flask

    def control(self, path: str, **payload: Any) -> Any:
        return emulator_control(self.emulator_url, path, **payload)

    def token(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        response = requests.post(
            f"{self.url}/api/v1/auth/tokens",
            json={"email": email, "password": password},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def wait_for_webhooks(self, timeout: float = 15.0) -> None:
        self.control("deliveries/wait", timeout=timeout)


@contextmanager
def served_demo_shop(database_url: str, emulator_url: str, **options: Any) -> Iterator[LiveShop]:
    """A fresh demo shop served over real HTTP, with the emulator delivering webhooks to it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with demo_shop(database_url, emulator_url, SHOP_BASE_URL=url, TESTING=False, **options) as app:
        server = make_server("127.0.0.1", port, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        emulator_control(emulator_url, "webhooks", url=f"{url}/api/v1/stripe/webhook", drop_next=0)
        try:
            yield LiveShop(url=url, emulator_url=emulator_url, app=app)
        finally:
            emulator_control(emulator_url, "deliveries/wait", timeout=10)
            emulator_control(emulator_url, "webhooks", url=None, drop_next=0)
            server.shutdown()
            thread.join(timeout=10)


@pytest.fixture
def live_shop(database_url: str, emulator: str) -> Iterator[LiveShop]:
    """The shop served over real HTTP, with the emulator delivering webhooks to it."""
    with served_demo_shop(database_url, emulator) as shop:
        yield shop


# Each sample of a /metrics page by its name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """A Prometheus text page, parsed by prometheus_client; no sample may appear twice."""
    from prometheus_client.parser import text_string_to_metric_families

    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"{sample.name} {sample.labels} is exposed twice"
            found[key] = sample.value
    return found


def paid_unheard_orders(
    app: Flask, emulator_url: str, count: int, basket: list[RequestedLine]
) -> list[str]:
    """Orders paid at Stripe while the emulator had nowhere to send the webhooks."""
    emulator_control(emulator_url, "webhooks", url=None, drop_next=0)
    with app.app_context():
        buyer = db.session.scalar(select(User).where(User.email == "buyer@example.com"))
        assert buyer is not None
        stripe = app.extensions["stripe"]
        numbers = []
        for _ in range(count):
            order = checkout(
                db.session, stripe, buyer, basket, Address(**HUIZHOU_ADDRESS), app.config
            )
            emulator_control(
                emulator_url, f"checkout/sessions/{order.stripe_checkout_session_id}/pay"
            )
            numbers.append(order.number)
        db.session.remove()
    return numbers


def shots_dir() -> Path:
    path = Path(os.environ.get("SHOTS_DIR", "/tmp/shots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def signed(payload: bytes, secret: str = EMULATOR_WEBHOOK_SECRET, at: int | None = None) -> str:
    """A Stripe-Signature header computed the way Stripe documents it."""
    import hashlib
    import hmac

    at = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


ALL_QUEUES = "celery,payments,reconciliation,exports"


def celery_worker_command(*options: str) -> list[str]:
    """`celery worker` for this project: one task at a time, no chatter between workers.

    It consumes every queue unless the options name their own (`-Q` / `--queues`)."""
    own_queues = any(o == "-Q" or o.startswith(("-Q", "--queues")) for o in options)
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--pool=solo",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        *(() if own_queues else ("-Q", ALL_QUEUES)),
        *options,
    ]


@pytest.fixture(scope="session")
def celery_worker(database_url: str, emulator: str) -> Iterator[str | None]:
    """With a broker configured, a real `celery worker` process; without one, tasks run eagerly."""
    broker = os.environ.get("CELERY_BROKER_URL")
    if not broker:
        yield None
        return
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        STRIPE_API_BASE=emulator,
        STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
        LOG_LEVEL="WARNING",
    )
    process = subprocess.Popen(celery_worker_command(), env=env)
    try:
        yield broker
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def emptied_redis(*urls: str) -> Iterator[list[redis.Redis]]:
    """Redis databases of a test's own, empty when it starts and when it ends; without a
    reachable Redis the test is skipped."""
    clients = [redis.Redis.from_url(url, socket_connect_timeout=2) for url in urls]
    try:
        clients[0].ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis at {urls[0]} is not reachable: {exc}")
    for client in clients:
        client.flushdb()
    try:
        yield clients
    finally:
        for client in clients:
            client.flushdb()
            client.close()


@pytest.fixture
def own_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test that names its own broker: Celery lets CELERY_BROKER_URL and
    CELERY_RESULT_BACKEND in the environment override a broker given in code or config."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)


@pytest.fixture
def run_task(app: Flask, celery_worker: str | None) -> Any:
    """Run a task as this configuration runs it: on the worker over the broker, or in-process."""

    def run(task: Any, *args: Any) -> Any:
        with app.app_context():
            return task.delay(*args).get(timeout=60)

    return run
