"""Scaling out: workers on separate queues share one Redis, and beat runs once (a lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from shop.background import TASK_ROUTES
from shop.config import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from tests.conftest import celery_worker_command, emptied_redis, stop_process, wait_for

REDIS = "redis://127.0.0.1:6379"
BROKER = f"{REDIS}/3"
RESULTS = f"{REDIS}/4"
ROOT = Path(__file__).resolve().parents[2]
LOCK_TIMEOUT = 4
SENT = "Sending due task"
# Beat with the product's scheduler and one cheap task every second.
BEAT_SCRIPT = """
import sys
from datetime import timedelta
from workers.celery_app import celery
celery.conf.beat_schedule = {"tick": {"task": "shop.rollup", "schedule": timedelta(seconds=1)}}
celery.start(["beat", "--schedule", sys.argv[1]])
"""


@pytest.fixture
def broker(own_broker: None) -> Iterator[redis.Redis]:
    """This test's own Redis databases, not the suite's: the sender and the processes use them."""
    with emptied_redis(BROKER, RESULTS) as (client, _):
        yield client


def shop_env(database_url: str, emulator: str) -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=database_url,
        STRIPE_API_BASE=emulator,
        STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
        CELERY_BROKER_URL=BROKER,
        CELERY_RESULT_BACKEND=RESULTS,
        BEAT_LOCK_TIMEOUT=str(LOCK_TIMEOUT),
    )


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def sends(log: Path) -> int:
    return log.read_text(errors="replace").count(SENT) if log.exists() else 0


def test_a_task_waits_in_its_queue_until_a_worker_for_that_queue_starts(
    database_url: str, emulator: str, broker: redis.Redis, tmp_path: Path
) -> None:
    env = shop_env(database_url, emulator)
    exports_log, ledger_log = tmp_path / "exports-worker.log", tmp_path / "ledger-worker.log"
    sender = Celery("sender", broker=BROKER, backend=RESULTS, set_as_current=False)
    sender.conf.task_routes = TASK_ROUTES
    workers = [
        start(
            celery_worker_command("-Q", "exports,celery,payments", "--hostname=front@%h"),
            env,
            exports_log,
        )
    ]
    try:
        expired = sender.send_task("shop.expire_unpaid_orders")
        reconciled = sender.send_task("shop.reconcile_payments")
        # The other worker runs the payments task, so it is up and consuming; the ledger work
        # is left for a worker on its queue.
        assert expired.get(timeout=30) == 0
        assert broker.llen("reconciliation") == 1
        assert not reconciled.ready()

        workers.append(
            start(
                celery_worker_command("-Q", "reconciliation", "--hostname=ledger@%h"),
                env,
                ledger_log,
            )
        )
        report: dict[str, Any] = reconciled.get(timeout=30)
        assert report["failed"] == 0
        assert broker.llen("reconciliation") == 0
    finally:
        for worker in workers:
            stop_process(worker)


def test_of_two_beats_only_the_lock_holder_sends_and_the_other_takes_over_when_it_dies(
    database_url: str, emulator: str, broker: redis.Redis, tmp_path: Path
) -> None:
    env = shop_env(database_url, emulator)
    logs = [tmp_path / "beat-a.log", tmp_path / "beat-b.log"]
    beats = [
        start([sys.executable, "-c", BEAT_SCRIPT, str(tmp_path / f"schedule-{n}")], env, log)
        for n, log in enumerate(logs)
    ]
    try:
        wait_for(lambda: max(map(sends, logs)) >= 2, 30, "a beat sending every second", *logs)
        holder = 0 if sends(logs[0]) >= 2 else 1
        standby = 1 - holder
        assert sends(logs[standby]) == 0, "both beats sent the schedule"
        # What the holder sent goes to the ledger queue (nobody consumes it here); beat logs a
        # task just before the message reaches Redis.
        wait_for(lambda: broker.llen("reconciliation") >= 2, 10, "two rollups queued", *logs)

        beats[holder].send_signal(signal.SIGKILL)
        beats[holder].wait(timeout=10)
        # The lock lapses LOCK_TIMEOUT seconds after the last renewal; the other beat looks
        # again every LOCK_TIMEOUT / 5 seconds.
        wait_for(
            lambda: sends(logs[standby]) >= 1,
            LOCK_TIMEOUT * 3,
            "the second beat taking over",
            *logs,
        )
        assert beats[standby].poll() is None
    finally:
        for beat in beats:
            stop_process(beat)
