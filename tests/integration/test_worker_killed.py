"""A real Celery worker killed with SIGKILL half-way through a large reconciliation: the next one
finishes it and the ledger is exact."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from flask import Flask
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from shop.config import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from shop.ledger.models import LedgerEntry, Source
from shop.orders.models import Order, OrderLine, StatusChange
from shop.orders.services import RequestedLine
from shop.reconciliation.models import Discrepancy
from tests.conftest import (
    celery_worker_command,
    paid_unheard_orders,
    stop_process,
    wait_for,
)

REDIS = "redis://127.0.0.1:6379"
BROKER = f"{REDIS}/1"
RESULTS = f"{REDIS}/2"
ORDERS = 300
BASKET = [RequestedLine("PA-TEA-005", 1), RequestedLine("XR-YR-001", 1)]
ROOT = Path(__file__).resolve().parents[2]
# Everything after the task is sent, the kill and the second worker included.
DEADLINE_SECONDS = 85
VISIBILITY_TIMEOUT = 5


@pytest.fixture
def clean_redis() -> Iterator[None]:
    clients = [redis.Redis.from_url(url, socket_connect_timeout=2) for url in (BROKER, RESULTS)]
    try:
        for client in clients:
            client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis at {REDIS} is not reachable: {exc}")
    for client in clients:
        client.flushdb()
    yield
    for client in clients:
        client.flushdb()
        client.close()


def start_worker(database_url: str, emulator: str, name: str, log: Path) -> subprocess.Popen[Any]:
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        STRIPE_API_BASE=emulator,
        STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
        CELERY_BROKER_URL=BROKER,
        CELERY_RESULT_BACKEND=RESULTS,
        CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
    )
    return subprocess.Popen(
        celery_worker_command(f"--hostname={name}@%h"),
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def paid_count(engine: Engine, numbers: list[str]) -> int:
    with engine.connect() as conn:
        count = conn.scalar(
            select(func.count())
            .select_from(Order)
            .where(Order.number.in_(numbers), Order.status == "paid")
        )
        conn.rollback()
    return int(count or 0)


def test_a_worker_killed_mid_reconciliation_leaves_exact_totals_after_the_next(
    app: Flask,
    database_url: str,
    emulator: str,
    clean_redis: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Celery prefers these variables to any configuration: the sender must use our broker.
    monkeypatch.setenv("CELERY_BROKER_URL", BROKER)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", RESULTS)
    numbers = paid_unheard_orders(app, emulator, ORDERS, BASKET)
    engine = create_engine(database_url)
    log = tmp_path / "workers.log"
    first = start_worker(database_url, emulator, "doomed", log)
    second: subprocess.Popen[Any] | None = None
    sender = Celery("sender", broker=BROKER, backend=RESULTS, set_as_current=False)
    try:
        result = sender.send_task("shop.reconcile_payments")
        deadline = time.monotonic() + DEADLINE_SECONDS
        some = wait_for(
            lambda: paid_count(engine, numbers) > 0,
            deadline - time.monotonic(),
            "the first repairs",
            log,
        )
        assert some
        first_seen = time.monotonic()
        at_kill = paid_count(engine, numbers)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert 0 < at_kill < ORDERS, f"{at_kill} of {ORDERS} paid when the worker was killed"
        assert paid_count(engine, numbers) < ORDERS, "the killed worker had finished"

        # The unacknowledged task becomes visible again once the timeout has passed since it was
        # taken (before the first repair); a worker starting after that takes it up at once.
        time.sleep(max(0.0, first_seen + VISIBILITY_TIMEOUT + 0.5 - time.monotonic()))
        second = start_worker(database_url, emulator, "heir", log)
        wait_for(
            lambda: paid_count(engine, numbers) == ORDERS,
            deadline - time.monotonic(),
            "every order paid",
            log,
        )
        report = result.get(timeout=max(1.0, deadline - time.monotonic()))
        assert 0 < report["repaired"] < ORDERS
        assert report["failed"] == 0
    finally:
        stop_process(first, kill=True)
        if second is not None:
            stop_process(second, kill=True)
        sender.close()

    with engine.connect() as conn:
        goods = conn.scalar(select(func.sum(Order.goods_fen)).where(Order.number.in_(numbers)))
        lines = conn.scalar(
            select(func.count()).select_from(OrderLine).join(Order).where(Order.number.in_(numbers))
        )
        entries = conn.execute(
            select(
                func.count(),
                func.count(func.distinct(LedgerEntry.order_line_id)),
                func.sum(LedgerEntry.amount_fen),
            ).where(LedgerEntry.reference.in_(numbers), LedgerEntry.source == Source.PAYMENT.value)
        ).one()
        paid_transitions = conn.scalar(
            select(func.count())
            .select_from(StatusChange)
            .join(Order)
            .where(Order.number.in_(numbers), StatusChange.to_status == "paid")
        )
        found = conn.execute(
            select(
                func.count(),
                func.count(func.distinct(Discrepancy.order_id)),
            ).where(
                Discrepancy.order_number.in_(numbers),
                Discrepancy.kind == "paid_at_stripe_not_in_shop",
                Discrepancy.status == "repaired",
            )
        ).one()
        every_discrepancy = conn.scalar(
            select(func.count())
            .select_from(Discrepancy)
            .where(Discrepancy.order_number.in_(numbers))
        )
    engine.dispose()
    assert lines == 2 * ORDERS
    assert tuple(entries) == (lines, lines, goods)
    assert paid_transitions == ORDERS
    assert tuple(found) == (ORDERS, ORDERS)
    assert every_discrepancy == ORDERS
