"""Soak: the whole shop under a mixed load for minutes on end, then its books checked.

Run `.venv/bin/python bench/soak.py [--duration 300] [--clients 16]`. It needs PostgreSQL on
127.0.0.1:5432 (user postgres, trust auth) and Redis on 127.0.0.1:6379. It drops and recreates
its own database (`--database-url`, default …/bench_soak) and empties its own two Redis databases
(`--broker-db 9`, `--result-db 10`); nothing else in Redis is touched.

What runs, each in a process of its own, all on 127.0.0.1:
- the Stripe emulator, delivering signed webhooks to the shop;
- the shop under gunicorn (`--workers`, default twice the cores, gthread with `--threads` 4);
- two Celery workers (prefork, `--concurrency 1` each) on Redis;
- Celery beat with the product's schedule (expire unpaid orders and roll up every minute,
  recognise every 5 minutes) except that reconciliation runs every `--reconcile-every` seconds
  (30) instead of every 15 minutes: the bench starts beat itself (`soak.py --beat`) after
  replacing that one entry of `shop.background.BEAT_SCHEDULE`.

The database is migrated and the demo loaded; then every SKU's stock is raised to 1,000,000 so
that the run cannot sell out, except PA-TEA-003, kept at its demo stock (150) so that it sells
out under the load and the checkouts that want it afterwards are refused (409, counted apart).

`--clients` clients, each with its own keep-alive connection to the shop, pick an action at
random and run it, back to back, for `--duration` seconds:
- 70% catalogue reads: a page of the catalogue, a county's page or one product;
- 20% individual checkouts: POST /api/v1/orders as the buyer (1–3 SKUs, sometimes the scarce
  one); 9 in 10 are then paid at the emulator (its control endpoint pays the Checkout Session
  and the emulator sends the signed webhooks to the shop), 1 in 10 cancelled by the buyer;
- 8% unit bulk orders: the officer uploads a CSV file (GBK or UTF-8, 2–4 rows to several
  canteens) as a draft and submits it, the approver approves it (a Stripe invoice is sent);
  3 in 4 invoices are then paid at the emulator, the rest stay awaiting payment;
- 2% refunds, by the admin, of an order the bench paid: in full, by an amount or by one unit of
  a line; 1 in 10 asks again for an order already refunded in full (409 expected, counted
  apart). Until some order is paid, a refund turn reads the catalogue instead.

When the time is up every action under way finishes, beat is stopped, the emulator's webhooks
are waited for and one last reconciliation runs (POST /api/v1/finance/reconcile as finance, on
a worker). Then the books are checked, and the run fails (exit code 1) if any check fails or
any error was seen. Ctrl-C (or SIGTERM) stops the run early and every process it started.
The processes' logs are kept, and their folder printed, when the run fails (or `--keep-logs`).

How to read it:
- "requests/s" counts every answered request of the clients to the shop; the emulator's
  control calls (paying a session or an invoice) are shown apart, as are the finance requests
  of the checks. p50/p99 are client-side,
  over every answer. "errors" are answers other than the expected one (and transport failures);
  the intended 409s (short stock, refunding a refunded order) are counted apart.
- "webhooks" are the emulator's deliveries to the shop, with the shop's own time to answer
  them from gunicorn's access log; a delivery answered other than 2xx is an error. The emulator
  sends them one at a time, in order: when the load creates events faster than that, they
  queue ("backlog") and the periodic reconciliation records many payments before their
  webhooks arrive, which then change nothing.
- "reconciliation" sums the periodic runs from the workers' logs: how many, how long, and what
  they repaired (a payment whose webhook was still queued when the run read Stripe; each is
  recorded as a `repaired` discrepancy) or opened as discrepancies. Each run re-reads the last
  day of Stripe objects (RECONCILE_OVERLAP_SECONDS), so a run lasts longer as the day fills.
- The CPU line splits the machine's cores (100% = all of them) between the processes started
  here, "everything else" (someone's test run, short-lived processes, the kernel) and idle:
  the throughput is what this machine gave while shared, not the shop's capacity.
- The checks: stock never negative (sampled every 2 s, and at the end), stock taken per SKU ==
  quantity held by orders not cancelled; every order paid at the emulator paid in the shop;
  the ledger sum == goods of paid orders − the goods part of their refunds (shipping is given
  back last), each paid order's payment entries == its goods, each order's refunded amount ==
  its succeeded refunds; what Stripe charged less what it refunded == what the shop holds as
  paid less refunded; no open discrepancy after the final reconciliation; no deadlock in
  PostgreSQL's statistics of the database; the daily totals kept
  by the rollups == the totals summed from the ledger == the totals after `shop ledger rebuild`
  (and /api/v1/finance/totals answers the same before and after the rebuild); and no error:
  none seen by the clients, no webhook retried, no 5xx in gunicorn's access log, no failed
  task, no traceback in any process's log.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from _load import (
    HOST,
    ROOT,
    Call,
    Gunicorn,
    _CpuMeter,
    _KeepAlive,
    _machine_seconds,
    _prepared,
    free_port,
    fresh_database,
    machine_note,
    postgres_processes,
    process_tree,
    request_json,
    shop_env,
    stripe_emulator,
)
from bulk_upload import HEADER, order_lines, shop_command
from checkout import ADDRESS
from sqlalchemy import Engine, create_engine, select, text

from shop.config import EMULATOR_SECRET_KEY

DEFAULT_DATABASE_URL = f"postgresql+psycopg://postgres@{HOST}:5432/bench_soak"
PASSWORD = "demo-password"  # nosec B105: the demo accounts' published password
ACCOUNTS = {
    "buyer": "buyer@example.com",
    "admin": "admin@example.com",
    "finance": "finance@example.com",
    "officer": "officer@example.com",
    "approver": "approver@example.com",
}
BENCH_STOCK = 1_000_000
SCARCE_SKU = "PA-TEA-003"  # the gift box: kept at its demo stock, so it sells out
MIX = {"catalogue": 70, "checkout": 20, "bulk": 8, "refund": 2}
PAY_SHARE = 0.9  # of checkouts; the rest are cancelled by the buyer
SCARCE_SHARE = 0.15  # of checkouts that also want the scarce SKU
INVOICE_PAY_SHARE = 0.75  # of approved unit orders
REREFUND_SHARE = 0.1  # of refunds: ask again for an order refunded in full
ELSEWHERE = {"province": "广东省", "city": "广州市", "district": "天河区"}
INTENDED = {
    "out_of_stock": "short stock",
    "invalid_transition": "already refunded",
    "nothing_to_refund": "already refunded",
}
WEBHOOK_PATH = "/api/v1/stripe/webhook"
ACCESS_FORMAT = "%(m)s %(U)s %(s)s %(D)s"  # method, path, status, microseconds
SAMPLE_SECONDS = 2.0
# gunicorn closes a keep-alive connection idle for 2 s: a client idle longer opens a new one.
IDLE_SECONDS = 1.0
DRAIN_SECONDS = 300.0
TASK_LINE = re.compile(r"Task (shop\.[a-z_]+)\[[0-9a-f-]+\] succeeded in ([0-9.]+)s: (.*)$")
TASK_FAILED = re.compile(r"Task (shop\.[a-z_]+)\[[0-9a-f-]+\] (raised|retry)")
REFUNDABLE = {"paid", "shipped", "completed", "partially_refunded"}


# --- the tally ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one client saw; merged when the run ends."""

    latencies: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    intended: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    actions: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        for label, values in other.latencies.items():
            self.latencies[label] += values
        for label, counts in other.errors.items():
            self.errors[label] += counts
        for label, counts in other.intended.items():
            self.intended[label] += counts
        self.actions += other.actions
        self.samples += other.samples[: max(0, 10 - len(self.samples))]

    def error(self, label: str, what: str, detail: str) -> None:
        self.errors[label][what] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{label}: {what} {detail[:300]}")


def percentile_ms(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


# --- the shared state of the run ----------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """What the clients choose from, read from the database before the run."""

    skus: list[str]  # in season today: individual checkouts
    unit_lines: list[tuple[str, int]]  # in season, with the smallest valid unit quantity
    counties: list[str]
    districts: list[str]


@dataclass
class Paid:
    """Orders the bench paid at the emulator, for the refunders and the final checks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    refundable: list[str] = field(default_factory=list)
    refunded: list[str] = field(default_factory=list)
    at_stripe: set[str] = field(default_factory=set)

    def add(self, number: str) -> None:
        with self.lock:
            self.refundable.append(number)
            self.at_stripe.add(number)

    def take(self, rng: random.Random) -> str | None:
        with self.lock:
            if not self.refundable:
                return None
            return self.refundable.pop(rng.randrange(len(self.refundable)))

    def put_back(self, number: str, *, refunded_in_full: bool) -> None:
        with self.lock:
            (self.refunded if refunded_in_full else self.refundable).append(number)

    def a_refunded(self, rng: random.Random) -> str | None:
        with self.lock:
            return rng.choice(self.refunded) if self.refunded else None


@dataclass
class Answer:
    status: int
    body: Any


class Client:
    """One simulated person at a time: a keep-alive connection to the shop and a tally."""

    def __init__(
        self,
        port: int,
        emulator_port: int,
        tokens: Mapping[str, str],
        tally: Tally,
        rng: random.Random,
    ) -> None:
        self.port = port
        self.emulator_port = emulator_port
        self.tokens = tokens
        self.tally = tally
        self.rng = rng
        self.connection = _KeepAlive(port)
        self.last_used = 0.0

    def call(
        self,
        label: str,
        method: str,
        path: str,
        *,
        as_: str | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        expect: int = 200,
        intended: Sequence[str] = (),
    ) -> Answer | None:
        """One request; None when it failed (counted as an error), else the answer."""
        headers: dict[str, str] = {}
        if as_ is not None:
            headers["Authorization"] = f"Bearer {self.tokens[as_]}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = _prepared(Call(method, "/api/v1" + path, body, headers), self.port)
        started = time.perf_counter()
        if started - self.last_used > IDLE_SECONDS:
            self.connection.close()
        try:
            status, raw = self.connection.exchange_body(request)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self.connection.close()
            self.tally.error(label, type(exc).__name__, str(exc))
            return None
        self.last_used = time.perf_counter()
        self.tally.latencies[label].append(self.last_used - started)
        return self._judge(label, status, raw, expect, intended)

    def _judge(
        self, label: str, status: int, raw: bytes, expect: int, intended: Sequence[str]
    ) -> Answer | None:
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status == expect:
            return Answer(status, payload)
        code = ""
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            code = str(payload["error"].get("code", ""))
        if status == 409 and code in intended:
            self.tally.intended[label][INTENDED[code]] += 1
            return Answer(status, payload)
        self.tally.error(label, f"{status} {code}".strip(), raw.decode(errors="replace"))
        return None

    def emulator(self, label: str, path: str) -> Answer | None:
        """A control call to the emulator (it answers on a new connection each time)."""
        started = time.perf_counter()
        try:
            status, raw = request_json(
                self.emulator_port,
                "POST",
                f"/_emulator/{path}",
                b"{}",
                {"Content-Type": "application/json"},
            )
        except (OSError, http.client.HTTPException) as exc:
            self.tally.error(label, type(exc).__name__, str(exc))
            return None
        self.tally.latencies[label].append(time.perf_counter() - started)
        return self._judge(label, status, raw, 200, ())

    def close(self) -> None:
        self.connection.close()


# --- the actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Everything an action needs besides its client."""

    catalogue: Catalogue
    paid: Paid
    engine: Engine


def read_catalogue(client: Client, world: World) -> None:
    rng = client.rng
    roll = rng.random()
    if roll < 0.4:
        client.call("GET /products", "GET", f"/products?page={rng.randint(1, 2)}")
    elif roll < 0.7:
        county = quote(rng.choice(world.catalogue.counties))
        client.call("GET /products?county=", "GET", f"/products?county={county}")
    else:
        client.call("GET /products/<sku>", "GET", f"/products/{rng.choice(world.catalogue.skus)}")


def checkout(client: Client, world: World) -> None:
    rng = client.rng
    skus = rng.sample([s for s in world.catalogue.skus if s != SCARCE_SKU], rng.randint(1, 3))
    if rng.random() < SCARCE_SHARE:
        skus[0] = SCARCE_SKU
    address = dict(ADDRESS, district=rng.choice(world.catalogue.districts))
    if rng.random() < 0.2:
        address.update(ELSEWHERE)
    order = client.call(
        "POST /orders",
        "POST",
        "/orders",
        as_="buyer",
        json_body={
            "lines": [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus],
            "address": address,
        },
        expect=201,
        intended=("out_of_stock",),
    )
    if order is None or order.status != 201:
        return
    number = order.body["number"]
    if rng.random() >= PAY_SHARE:
        client.call("POST /orders/<n>/cancel", "POST", f"/orders/{number}/cancel", as_="buyer")
        return
    session = order.body["checkout_url"].rstrip("/").rsplit("/", 1)[-1]
    if client.emulator("emulator: pay session", f"checkout/sessions/{session}/pay"):
        world.paid.add(number)


def bulk_file(rng: random.Random, catalogue: Catalogue) -> tuple[bytes, str]:
    """A small unit order file: 2–4 SKUs, each to its own canteen; GBK or UTF-8."""
    lines = rng.sample(
        [line for line in catalogue.unit_lines if line[0] != SCARCE_SKU], rng.randint(2, 4)
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for sku, minimum in lines:
        canteen = rng.randrange(1000)
        writer.writerow(
            [
                sku,
                minimum * rng.randint(1, 3),
                f"食堂管理员{canteen:03d}",
                f"138{rng.randrange(10**8):08d}",
                f"幸福路 {canteen} 号 第{canteen:03d}食堂",
                rng.choice(catalogue.districts),
            ]
        )
    encoding = rng.choice(("gb18030", "utf-8"))
    return out.getvalue().encode(encoding), encoding


def multipart(filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = f"soak{random.getrandbits(64):016x}"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def bulk_order(client: Client, world: World) -> None:
    rng = client.rng
    content, encoding = bulk_file(rng, world.catalogue)
    body, content_type = multipart(f"order-{encoding}.csv", content)
    draft = client.call(
        "POST /procurement/orders",
        "POST",
        "/procurement/orders",
        as_="officer",
        body=body,
        content_type=content_type,
        expect=201,
    )
    if draft is None:
        return
    order_id = draft.body["id"]
    submitted = client.call(
        "POST /procurement/orders/<id>/submit",
        "POST",
        f"/procurement/orders/{order_id}/submit",
        as_="officer",
        intended=("out_of_stock",),
    )
    if submitted is None or submitted.status != 200:
        return
    approved = client.call(
        "POST /procurement/orders/<id>/approve",
        "POST",
        f"/procurement/orders/{order_id}/approve",
        as_="approver",
    )
    if approved is None or rng.random() >= INVOICE_PAY_SHARE:
        return
    with world.engine.connect() as connection:
        invoice = connection.scalar(
            text("SELECT stripe_invoice_id FROM orders WHERE id = :id"), {"id": order_id}
        )
    if invoice is None:
        client.tally.error("emulator: pay invoice", "no invoice", f"unit order {order_id}")
        return
    if client.emulator("emulator: pay invoice", f"invoices/{invoice}/pay"):
        world.paid.add(approved.body["number"])


def refund(client: Client, world: World) -> str | None:
    """Refund an order the bench paid; what was done, or None when no order is paid yet."""
    rng = client.rng
    if rng.random() < REREFUND_SHARE and (number := world.paid.a_refunded(rng)):
        # Only a 409 is right here: any other answer, a 201 above all, is an error.
        client.call(
            "POST /orders/<n>/refunds",
            "POST",
            f"/orders/{number}/refunds",
            as_="admin",
            json_body={"reason": "重复申请"},
            expect=0,
            intended=("invalid_transition", "nothing_to_refund"),
        )
        return "refund asked again"
    number = world.paid.take(rng)
    if number is None:
        return None
    seen = client.call("GET /orders/<n>", "GET", f"/orders/{number}", as_="admin")
    if seen is None or seen.body["status"] not in REFUNDABLE:
        world.paid.put_back(number, refunded_in_full=False)
        return "refund put off (payment not recorded yet)"
    order = seen.body
    request = refund_request(rng, order)
    done = client.call(
        "POST /orders/<n>/refunds",
        "POST",
        f"/orders/{number}/refunds",
        as_="admin",
        json_body={**request, "reason": "买家申请退款"},
        expect=201,
    )
    after = done.body if done is not None else order
    world.paid.put_back(number, refunded_in_full=after["refunded_fen"] >= after["total_fen"])
    return "refund"


def refund_request(rng: random.Random, order: Mapping[str, Any]) -> dict[str, Any]:
    """In full, by an amount up to half of what is left, or one unit of a line."""
    left = order["total_fen"] - order["refunded_fen"]
    roll = rng.random()
    if roll < 0.4 or left < 2:
        return {}
    if roll < 0.7:
        lines = [
            line
            for line in order["lines"]
            if line["quantity"] > line["refunded_quantity"] and line["unit_price_fen"] <= left
        ]
        if lines:
            line = rng.choice(lines)
            return {"lines": [{"sku": line["sku"], "quantity": 1}]}
    return {"amount_fen": rng.randint(1, left // 2)}


def run_client(
    client: Client, world: World, begin: threading.Barrier, stop: threading.Event
) -> None:
    names = list(MIX)
    weights = list(MIX.values())
    begin.wait()
    while not stop.is_set():
        action = client.rng.choices(names, weights)[0]
        try:
            if action == "catalogue":
                read_catalogue(client, world)
            elif action == "checkout":
                checkout(client, world)
            elif action == "bulk":
                bulk_order(client, world)
            elif done := refund(client, world):
                action = done
            else:
                action = "catalogue (no paid order to refund yet)"
                read_catalogue(client, world)
        except Exception as exc:  # a bug in the bench must not pass for a quiet run
            client.tally.error(f"bench action {action}", type(exc).__name__, repr(exc))
        client.tally.actions[action] += 1
    client.close()


# --- the processes ------------------------------------------------------------------------------


@contextlib.contextmanager
def process_group(
    name: str, argv: Sequence[str], env: Mapping[str, str], logs: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A process and its children in a session of their own, ended together at the end.

    Its output goes to `logs/<name>.log`.
    """
    with (logs / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to the group (a warm shutdown for Celery), then SIGKILL if it does not end."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The leader is not reaped yet, so its group id cannot belong to anyone else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_line(process: subprocess.Popen[bytes], log: Path, marker: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if marker in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"{what} did not start; its output:\n{tail}")


def run_beat(schedule_file: str, every: float) -> int:
    """Celery beat with the product's schedule, reconciliation every `every` seconds."""
    from workers.celery_app import celery

    celery.conf.beat_schedule = {
        **celery.conf.beat_schedule,
        "reconcile-payments": {
            "task": "shop.reconcile_payments",
            "schedule": timedelta(seconds=every),
        },
    }
    return int(celery.start(["beat", "--schedule", schedule_file, "--loglevel", "INFO"]) or 0)


@dataclass(frozen=True)
class Redis:
    url: str
    broker_db: int
    result_db: int

    @property
    def broker(self) -> str:
        return f"{self.url.rstrip('/')}/{self.broker_db}"

    @property
    def results(self) -> str:
        return f"{self.url.rstrip('/')}/{self.result_db}"

    def empty(self) -> None:
        """Empty the bench's two databases (and only those)."""
        import redis

        for url in (self.broker, self.results):
            client = redis.Redis.from_url(url, socket_connect_timeout=3)
            try:
                client.flushdb()
            except redis.exceptions.ConnectionError as exc:
                raise SystemExit(f"Redis at {url} is not reachable: {exc}") from exc
            finally:
                client.close()


@dataclass
class Processes:
    emulator: subprocess.Popen[bytes]
    gunicorn: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    beat: subprocess.Popen[bytes]

    def cpu_groups(self, engine: Engine) -> dict[str, Callable[[], Sequence[int]]]:
        def trees(processes: Sequence[subprocess.Popen[bytes]]) -> list[int]:
            return [pid for p in processes for pid in process_tree(p.pid)]

        return {
            "load generator": lambda: [os.getpid()],
            "gunicorn": partial(process_tree, self.gunicorn.pid),
            "Celery workers": partial(trees, self.workers),
            "beat": partial(process_tree, self.beat.pid),
            "emulator": partial(process_tree, self.emulator.pid),
            "PostgreSQL": partial(postgres_processes, engine),
        }


def start_processes(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    server: Gunicorn,
    ports: tuple[int, int],
    logs: Path,
    redis_dbs: Redis,
) -> Processes:
    port, emulator_port = ports
    emulator = stack.enter_context(
        stripe_emulator(emulator_port, logs, f"http://{HOST}:{port}{WEBHOOK_PATH}")
    )
    celery_env = {
        "CELERY_BROKER_URL": redis_dbs.broker,
        "CELERY_RESULT_BACKEND": redis_dbs.results,
        "RATELIMIT_STORAGE_URI": redis_dbs.results,
    }
    access = ["--access-logfile", str(logs / "access.log"), "--access-logformat", ACCESS_FORMAT]
    gunicorn = stack.enter_context(
        server.shop(
            port,
            logs,
            emulator_port=emulator_port,
            database_url=args.database_url,
            env=celery_env,
            extra=access,
        )
    )
    env = {**shop_env(port, emulator_port, args.database_url), **celery_env}
    workers = []
    for n in (1, 2):
        argv = [
            *(sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker"),
            *("--concurrency", "1", "--loglevel", "INFO", f"--hostname=soak{n}@%h"),
            *("--without-gossip", "--without-mingle"),
            *("--queues", "celery,payments,reconciliation,exports"),
        ]
        worker = stack.enter_context(process_group(f"worker{n}", argv, env, logs))
        workers.append(worker)
    for n, worker in enumerate(workers, 1):
        wait_for_line(worker, logs / f"worker{n}.log", " ready.", f"Celery worker {n}")
    argv = [sys.executable, str(Path(__file__).resolve()), "--beat", str(logs / "beat-schedule")]
    argv += ["--reconcile-every", str(args.reconcile_every)]
    beat = stack.enter_context(process_group("beat", argv, env, logs))
    wait_for_line(beat, logs / "beat.log", "beat: Starting", "Celery beat")
    return Processes(emulator, gunicorn, workers, beat)


# --- before and during the run ------------------------------------------------------------------


def raise_stock(engine: Engine) -> dict[str, int]:
    """Stock for the whole run on every SKU but the scarce one; the stock each SKU starts with."""
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE products SET stock = :stock WHERE sku <> :scarce"),
            {"stock": BENCH_STOCK, "scarce": SCARCE_SKU},
        )
        return {
            sku: stock for sku, stock in connection.execute(text("SELECT sku, stock FROM products"))
        }


def read_world(database_url: str) -> tuple[Catalogue, Any]:
    """The SKUs in season, the valid unit quantities, the counties and districts; and the app
    the final checks read the ledger through."""
    from shop import create_app
    from shop.catalog.models import County, District, Product
    from shop.db import utcnow
    from shop.extensions import db
    from shop.timezones import shanghai_today

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        today = shanghai_today(utcnow())
        products = db.session.scalars(select(Product).where(Product.active).order_by(Product.sku))
        catalogue = Catalogue(
            skus=[p.sku for p in products if p.in_season(today)],
            unit_lines=order_lines(db.session, today),
            counties=list(db.session.scalars(select(County.name).order_by(County.id))),
            districts=list(db.session.scalars(select(District.name).order_by(District.id))),
        )
        db.session.remove()
    return catalogue, app


def bearer_tokens(port: int) -> dict[str, str]:
    tokens = {}
    for role, email in ACCOUNTS.items():
        status, body = request_json(
            port,
            "POST",
            "/api/v1/auth/tokens",
            json.dumps({"email": email, "password": PASSWORD}).encode(),
            {"Content-Type": "application/json"},
        )
        if status != 201:
            raise SystemExit(f"no token for {email} ({status}): {body[:300]!r}")
        tokens[role] = json.loads(body)["token"]
    return tokens


def emulator_call(port: int, method: str, path: str, body: Any = None) -> Any:
    status, raw = request_json(
        port,
        method,
        path,
        json.dumps(body).encode() if body is not None else None,
        {"Content-Type": "application/json", "Authorization": f"Bearer {EMULATOR_SECRET_KEY}"},
    )
    if status != 200:
        raise RuntimeError(f"emulator {method} {path}: {status} {raw[:300]!r}")
    return json.loads(raw)


@dataclass
class Watch:
    """Sampled every two seconds during the run."""

    samples: int = 0
    lowest_stock: int | None = None
    negative: int = 0
    backlog: list[int] = field(default_factory=list)


def watch(engine: Engine, emulator_port: int, stop: threading.Event, seen: Watch) -> None:
    query = text("SELECT min(stock), count(*) FILTER (WHERE stock < 0) FROM products")
    while not stop.wait(SAMPLE_SECONDS):
        with engine.connect() as connection:
            lowest, negative = connection.execute(query).one()
        seen.samples += 1
        seen.lowest_stock = lowest if seen.lowest_stock is None else min(seen.lowest_stock, lowest)
        seen.negative += int(negative)
        with contextlib.suppress(OSError, RuntimeError, http.client.HTTPException):
            waited = emulator_call(
                emulator_port, "POST", "/_emulator/deliveries/wait", {"timeout": 0}
            )
            seen.backlog.append(int(waited["pending"]))


@dataclass
class Run:
    seconds: float
    tally: Tally
    watched: Watch
    cpu_seconds: dict[str, float]
    machine_busy_seconds: float
    machine_seconds: float


def drive(
    args: argparse.Namespace,
    world: World,
    tokens: Mapping[str, str],
    ports: tuple[int, int],
    groups: Mapping[str, Callable[[], Sequence[int]]],
) -> Run:
    """The mixed load for `--duration` seconds; every action under way is finished."""
    port, emulator_port = ports
    tallies = [Tally() for _ in range(args.clients)]
    clients = [
        Client(port, emulator_port, tokens, tally, random.Random(args.seed * 1000 + n))
        for n, tally in enumerate(tallies)
    ]
    begin = threading.Barrier(args.clients + 1)
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_client, args=(c, world, begin, stop), daemon=True)
        for c in clients
    ]
    seen = Watch()
    watcher = threading.Thread(
        target=watch, args=(world.engine, emulator_port, stop, seen), daemon=True
    )
    for thread in threads:
        thread.start()
    begin.wait()
    started = time.perf_counter()
    meters = {name: _CpuMeter(processes) for name, processes in groups.items()}
    busy_before, total_before = _machine_seconds()
    watcher.start()
    try:
        stop.wait(args.duration)
    finally:
        stop.set()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    cpu_seconds = {name: meter.seconds() for name, meter in meters.items()}
    busy_after, total_after = _machine_seconds()
    watcher.join()
    tally = Tally()
    for each in tallies:
        tally.merge(each)
    return Run(
        seconds, tally, seen, cpu_seconds, busy_after - busy_before, total_after - total_before
    )


# --- after the run ------------------------------------------------------------------------------


def drain_webhooks(emulator_port: int) -> tuple[bool, float]:
    """Wait until the emulator has delivered every webhook; (done, seconds waited)."""
    started = time.monotonic()
    while time.monotonic() - started < DRAIN_SECONDS:
        waited = emulator_call(emulator_port, "POST", "/_emulator/deliveries/wait", {"timeout": 30})
        if waited["idle"]:
            return True, time.monotonic() - started
    return False, time.monotonic() - started


@dataclass
class Webhooks:
    deliveries: int
    delivered: int
    first_try: int
    retried: int
    failed: int
    by_type: Counter[str]


def webhook_log(emulator_port: int) -> Webhooks:
    log = emulator_call(emulator_port, "GET", "/_emulator/deliveries")
    return Webhooks(
        deliveries=len(log),
        delivered=sum(d["status"] == "delivered" for d in log),
        first_try=sum(d["status"] == "delivered" and d["attempts"] == 1 for d in log),
        retried=sum(d["attempts"] > 1 for d in log),
        failed=sum(d["status"] not in ("delivered",) for d in log),
        by_type=Counter(d["type"] for d in log),
    )


def stripe_money(emulator_port: int) -> tuple[int, int]:
    """What Stripe charged and refunded (fen), over every charge."""
    charged = refunded = 0
    after = ""
    while True:
        query = urlencode({"limit": 100, **({"starting_after": after} if after else {})})
        page = emulator_call(emulator_port, "GET", f"/v1/charges?{query}")
        for charge in page["data"]:
            if charge["status"] == "succeeded":
                charged += int(charge["amount_captured"])
                refunded += int(charge["amount_refunded"])
        if not page["has_more"]:
            return charged, refunded
        after = page["data"][-1]["id"]


@dataclass
class Check:
    label: str
    ok: bool


STOCK_HELD = """
SELECT p.sku, p.stock, coalesce(h.held, 0)
FROM products p
LEFT JOIN (
    SELECT l.product_id, sum(l.quantity) AS held
    FROM order_lines l JOIN orders o ON o.id = l.order_id
    WHERE o.status NOT IN ('draft', 'cancelled')
    GROUP BY l.product_id
) h ON h.product_id = p.id
"""
LEDGER_SUM = "SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries WHERE source <> 'offline'"
EXPECTED_LEDGER_SUM = """
SELECT coalesce(sum(goods_fen - least(refunded_fen, goods_fen)), 0)
FROM orders WHERE paid_at IS NOT NULL
"""
PAYMENT_ENTRIES_DIFFER = """
SELECT count(*) FROM orders o
LEFT JOIN (
    SELECT source_id, sum(amount_fen) AS fen FROM ledger_entries WHERE source = 'payment'
    GROUP BY source_id
) e ON e.source_id = o.id
WHERE (o.paid_at IS NOT NULL AND coalesce(e.fen, -1) <> o.goods_fen)
   OR (o.paid_at IS NULL AND e.fen IS NOT NULL)
"""
REFUNDED_DIFFER = """
SELECT count(*) FROM orders o
LEFT JOIN (
    SELECT order_id, sum(amount_fen) AS fen FROM refunds WHERE status = 'succeeded'
    GROUP BY order_id
) r ON r.order_id = o.id
WHERE o.refunded_fen <> coalesce(r.fen, 0)
"""
SHOP_MONEY = """
SELECT coalesce(sum(total_fen), 0), coalesce(sum(refunded_fen), 0)
FROM orders WHERE paid_at IS NOT NULL
"""


def yuan(fen: int) -> str:
    return f"{fen / 100:,.2f} 元"


def check_stock(engine: Engine, initial: Mapping[str, int], seen: Watch) -> list[Check]:
    with engine.connect() as connection:
        rows = connection.execute(text(STOCK_HELD)).all()
    drift = [
        (sku, initial[sku] - stock, held)
        for sku, stock, held in rows
        if initial[sku] - stock != held
    ]
    negative = [sku for sku, stock, _ in rows if stock < 0]
    scarce_left = next(stock for sku, stock, _ in rows if sku == SCARCE_SKU)
    print(
        f"  stock never negative: {seen.samples} samples during the run"
        f" (lowest {seen.lowest_stock}, {seen.negative} negative),"
        f" {len(negative)} negative at the end;"
        f" {SCARCE_SKU} left: {scarce_left}"
    )
    print(
        f"  stock taken == quantity held by orders not cancelled, for each of {len(rows)} SKUs:"
        f" {len(drift)} differ" + (f" {drift[:5]}" if drift else "")
    )
    return [
        Check("stock never negative", seen.negative == 0 and not negative),
        Check("stock taken == quantity held", not drift),
    ]


def check_money(engine: Engine, emulator_port: int, paid_at_stripe: set[str]) -> list[Check]:
    with engine.connect() as connection:
        ledger = int(connection.scalar(text(LEDGER_SUM)) or 0)
        expected = int(connection.scalar(text(EXPECTED_LEDGER_SUM)) or 0)
        entries_differ = int(connection.scalar(text(PAYMENT_ENTRIES_DIFFER)) or 0)
        refunded_differ = int(connection.scalar(text(REFUNDED_DIFFER)) or 0)
        paid_fen, refunded_fen = connection.execute(text(SHOP_MONEY)).one()
        unpaid = int(
            connection.scalar(
                text("SELECT count(*) FROM orders WHERE number = ANY(:n) AND paid_at IS NULL"),
                {"n": sorted(paid_at_stripe)},
            )
            or 0
        )
        statuses: dict[str, int] = dict(
            connection.execute(text("SELECT status, count(*) FROM orders GROUP BY 1")).all()
        )
        refunds: dict[str, int] = dict(
            connection.execute(text("SELECT status, count(*) FROM refunds GROUP BY 1")).all()
        )
    charged, given_back = stripe_money(emulator_port)
    held_at_stripe = charged - given_back
    held_in_shop = int(paid_fen) - int(refunded_fen)
    print(f"  orders by status: {dict(sorted(statuses.items()))}; refunds: {refunds}")
    print(
        f"  every order paid at the emulator is paid in the shop: {len(paid_at_stripe)} paid,"
        f" {unpaid} not recorded"
    )
    print(
        f"  ledger sum {yuan(ledger)} == goods paid − goods refunded {yuan(expected)};"
        f" orders whose payment entries differ from their goods: {entries_differ};"
        f" orders whose refunded amount differs from their refunds: {refunded_differ}"
    )
    print(
        f"  Stripe charged − refunded {yuan(charged)} − {yuan(given_back)} = {yuan(held_at_stripe)}"
        f" == shop paid − refunded {yuan(int(paid_fen))} − {yuan(int(refunded_fen))}"
        f" = {yuan(held_in_shop)}"
    )
    return [
        Check("every payment at Stripe recorded", unpaid == 0),
        Check("ledger sum == paid − refunded", ledger == expected and entries_differ == 0),
        Check("refunded amounts == succeeded refunds", refunded_differ == 0),
        Check("Stripe == shop", held_at_stripe == held_in_shop),
    ]


def totals_snapshot(client: Client) -> Any:
    answer = client.call(
        "GET /finance/totals",
        "GET",
        "/finance/totals?group_by=county,day,channel,kind",
        as_="finance",
    )
    return answer.body if answer else None


def check_rebuild(app: Any, database_url: str, client: Client) -> list[Check]:
    """The daily totals the rollups kept == the ledger summed == the totals after a rebuild."""
    from shop.extensions import db
    from shop.ledger.services import daily_cells_from_ledger, daily_cells_from_table

    shop_command("ledger", "rollup", database_url=database_url)
    with app.app_context():
        kept = daily_cells_from_table(db.session)
        summed = daily_cells_from_ledger(db.session)
        db.session.remove()
    api_before = totals_snapshot(client)
    shop_command("ledger", "rebuild", database_url=database_url)
    with app.app_context():
        rebuilt = daily_cells_from_table(db.session)
        db.session.remove()
    api_after = totals_snapshot(client)
    print(
        f"  daily totals kept by the rollups ({len(kept)} cells) == summed from the ledger"
        f" ({len(summed)}) == rebuilt ({len(rebuilt)}): {kept == summed == rebuilt};"
        f" /finance/totals the same before and after the rebuild:"
        f" {api_before is not None and api_before == api_after}"
    )
    return [
        Check("totals == rebuild", kept == summed == rebuilt),
        Check(
            "API totals unchanged by rebuild", api_before is not None and api_before == api_after
        ),
    ]


def check_discrepancies(engine: Engine, client: Client) -> list[Check]:
    answer = client.call(
        "GET /finance/discrepancies", "GET", "/finance/discrepancies?status=open", as_="finance"
    )
    open_ = answer.body["discrepancies"] if answer else None
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT kind, status, count(*) FROM discrepancies GROUP BY 1, 2 ORDER BY 1, 2")
        ).all()
    every = ", ".join(f"{kind}/{status}: {n}" for kind, status, n in found) or "none"
    print(
        f"  open discrepancies after the final reconciliation:"
        f" {len(open_) if open_ is not None else 'unknown'} (all recorded: {every})"
    )
    for item in (open_ or [])[:5]:
        print(
            f"    {item['kind']} {item['order_number']} {item['stripe_object']}: {item['detail']}"
        )
    return [Check("zero open discrepancies", open_ == [])]


def check_deadlocks(engine: Engine) -> list[Check]:
    """PostgreSQL's own count of deadlocks it broke in the bench database (fresh at the start)."""
    with engine.connect() as connection:
        deadlocks = connection.scalar(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        )
    print(f"  deadlocks PostgreSQL broke in the database: {deadlocks}")
    return [Check("no deadlock", deadlocks == 0)]


# --- the logs -----------------------------------------------------------------------------------


@dataclass
class Tasks:
    runs: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    reconcile: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)


def read_task_logs(logs: Path) -> Tasks:
    import ast

    tasks = Tasks()
    for path in sorted(logs.glob("worker*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if done := TASK_LINE.search(line):
                name, seconds, result = done.groups()
                tasks.runs[name].append(float(seconds))
                if name == "shop.reconcile_payments":
                    with contextlib.suppress(ValueError, SyntaxError):
                        tasks.reconcile.update(ast.literal_eval(result))
            elif failed := TASK_FAILED.search(line):
                tasks.failed[failed[1]] += 1
    return tasks


def read_access_log(logs: Path) -> tuple[list[float], Counter[int], Counter[str]]:
    """The webhook's server-side times and statuses; every 5xx answer by path."""
    times: list[float] = []
    statuses: Counter[int] = Counter()
    server_errors: Counter[str] = Counter()
    path = logs / "access.log"
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        parts = line.split()
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        method, url, status, micros = parts
        if int(status) >= 500:
            server_errors[f"{method} {url}"] += 1
        if url == WEBHOOK_PATH:
            statuses[int(status)] += 1
            times.append(int(micros) / 1e6)
    return times, statuses, server_errors


def tracebacks(logs: Path) -> dict[str, int]:
    found = {}
    for path in sorted(logs.glob("*.log")):
        count = path.read_text(errors="replace").count("Traceback (most recent call last)")
        if count:
            found[path.stem] = count
    return found


# --- the report ---------------------------------------------------------------------------------

LABELS = (
    "GET /products",
    "GET /products?county=",
    "GET /products/<sku>",
    "POST /orders",
    "POST /orders/<n>/cancel",
    "POST /procurement/orders",
    "POST /procurement/orders/<id>/submit",
    "POST /procurement/orders/<id>/approve",
    "GET /orders/<n>",
    "POST /orders/<n>/refunds",
)


def endpoint_line(label: str, tally: Tally) -> str:
    times = tally.latencies.get(label, [])
    errors = sum(tally.errors.get(label, Counter()).values())
    intended = sum(tally.intended.get(label, Counter()).values())
    detail = ", ".join(f"{k}×{n}" for k, n in tally.errors.get(label, Counter()).most_common())
    return (
        f"  {label:<38} {len(times):7d} {percentile_ms(times, 50):8.1f}"
        f" {percentile_ms(times, 99):8.1f} {errors:7d} {intended:9d}"
        + (f"  ({detail})" if detail else "")
    )


def print_load(
    run: Run,
    webhooks: Webhooks,
    access: tuple[list[float], Counter[int], Counter[str]],
    tasks: Tasks,
    every: float,
) -> None:
    print()
    print_requests(run)
    print_background(run, webhooks, access, tasks, every)
    print(f"  CPU: {cpu_shares(run)}")
    if run.tally.samples:
        print("  first errors:")
        for sample in run.tally.samples:
            print(f"    {sample}")


def print_requests(run: Run) -> None:
    """Throughput, the mix as run, and each endpoint's count, p50, p99, errors, 409s."""
    tally = run.tally
    answered = sum(len(tally.latencies.get(label, [])) for label in LABELS)
    errors = sum(sum(tally.errors.get(label, Counter()).values()) for label in LABELS)
    print(
        f"load: {answered:,} shop requests answered in {run.seconds:.1f} s ="
        f" {answered / run.seconds:.1f} requests/s; errors {errors}"
    )
    actions = sum(tally.actions.values()) or 1
    kinds: Counter[str] = Counter()
    for name, n in tally.actions.items():
        kinds[name.split()[0]] += n
    mix = ", ".join(f"{kind} {kinds[kind] / actions:.1%}" for kind in MIX)
    print(f"  {actions:,} actions ({actions / run.seconds:.1f}/s): {mix}")
    print(f"    ({', '.join(f'{name} {n}' for name, n in tally.actions.most_common())})")
    print(
        f"  {'endpoint':<38} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
        f" {'409 meant':>9}"
    )
    for label in LABELS:
        print(endpoint_line(label, tally))
    intended: Counter[str] = Counter()
    for counts in tally.intended.values():
        intended += counts
    print(f"  intended 409s: {sum(intended.values())} ({dict(intended) or 'none'})")
    others = sorted(
        label for label in tally.latencies.keys() | tally.errors.keys() if label not in LABELS
    )
    if others:
        print("  besides the clients' shop requests:")
        for label in others:
            print(endpoint_line(label, tally))


def print_background(
    run: Run,
    webhooks: Webhooks,
    access: tuple[list[float], Counter[int], Counter[str]],
    tasks: Tasks,
    every: float,
) -> None:
    """The webhooks, the 5xx answers gunicorn logged, the periodic tasks."""
    times, statuses, server_errors = access
    print(
        f"  webhooks: {webhooks.deliveries} sent by the emulator, {webhooks.delivered} delivered"
        f" ({webhooks.first_try} at the first attempt, {webhooks.retried} retried,"
        f" {webhooks.failed} not delivered); shop's answer p50 {percentile_ms(times, 50):.1f} ms"
        f" p99 {percentile_ms(times, 99):.1f} ms, statuses {dict(statuses)};"
        f" backlog at the emulator: max {max(run.watched.backlog, default=0)}"
    )
    print(f"    by type: {dict(webhooks.by_type.most_common())}")
    print(f"  5xx answers in gunicorn's access log: {dict(server_errors) or 0}")
    runs = tasks.runs.get("shop.reconcile_payments", [])
    print(
        f"  reconciliation every {every:g} s (beat): {len(runs)} runs,"
        f" median {statistics.median(runs) if runs else float('nan'):.1f} s,"
        f" longest {max(runs, default=float('nan')):.1f} s; summed: {dict(tasks.reconcile) or '-'}"
    )
    others = {
        name: f"{len(r)} runs, longest {max(r):.2f} s"
        for name, r in sorted(tasks.runs.items())
        if name != "shop.reconcile_payments"
    }
    print(f"  other periodic tasks: {others or '-'}; task failures: {dict(tasks.failed) or 0}")


def cpu_shares(run: Run) -> str:
    """Where the machine's CPU went during the load, as shares of all its cores."""
    total = run.machine_seconds or 1.0
    shares = [f"{name} {seconds / total:.0%}" for name, seconds in run.cpu_seconds.items()]
    rest = max(0.0, run.machine_busy_seconds - sum(run.cpu_seconds.values())) / total
    shares += [
        f"everything else {rest:.0%}",
        f"idle {max(0.0, 1 - run.machine_busy_seconds / total):.0%}",
    ]
    return ", ".join(shares)


# --- the run ------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: types.FrameType | None) -> None:
    # Once: a second Ctrl-C must not cut the stopping of the processes short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument(
        "--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated"
    )
    parser.add_argument("--redis-url", default=f"redis://{HOST}:6379")
    parser.add_argument("--broker-db", type=int, default=9, help="Redis database of the broker")
    parser.add_argument("--result-db", type=int, default=10, help="Redis database of results")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1), help="gunicorn")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--reconcile-every", type=float, default=30.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument("--beat", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.beat:
        return run_beat(args.beat, args.reconcile_every)
    # Ctrl-C or a kill ends the run early; every process started here is stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    server = Gunicorn(args.workers, args.threads)
    redis_dbs = Redis(args.redis_url, args.broker_db, args.result_db)
    print(machine_note("gunicorn, two Celery workers, beat, PostgreSQL and the Stripe emulator"))
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{args.clients} clients × {args.duration:g} s; {server}; 2 Celery workers (prefork,"
        f" concurrency 1) on {redis_dbs.broker}, results on {redis_dbs.results}; beat with the"
        f" product's schedule, reconciliation every {args.reconcile_every:g} s instead of 15 min"
    )
    database_url = fresh_database(args.database_url)
    print(f"database {database_url} migrated, demo loaded")
    engine = create_engine(database_url, pool_size=4, max_overflow=args.clients + 4)
    initial = raise_stock(engine)
    print(
        f"stock raised to {BENCH_STOCK:,} for the bench on every SKU but {SCARCE_SKU}, kept at"
        f" {initial[SCARCE_SKU]} so that it sells out (short-stock 409s)"
    )
    catalogue, app = read_world(database_url)
    redis_dbs.empty()
    logs = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        ok = soak(args, server, redis_dbs, logs, engine, initial, catalogue, app)
    except KeyboardInterrupt:
        print(f"\ninterrupted; every process started here is stopped; logs kept in {logs}")
        return 130
    except BaseException:
        print(f"logs kept in {logs}")
        raise
    finally:
        engine.dispose()
    if not ok or args.keep_logs:
        print(f"logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 0 if ok else 1


def soak(
    args: argparse.Namespace,
    server: Gunicorn,
    redis_dbs: Redis,
    logs: Path,
    engine: Engine,
    initial: Mapping[str, int],
    catalogue: Catalogue,
    app: Any,
) -> bool:
    """Start everything, drive the load, check the books; True when every check passed."""
    checks: list[Check] = []
    ports = (free_port(), free_port())
    after = io.StringIO()  # printed after the load's figures, which need the logs complete
    with contextlib.ExitStack() as stack:
        processes = start_processes(stack, args, server, ports, logs, redis_dbs)
        tokens = bearer_tokens(ports[0])
        world = World(catalogue, Paid(), engine)
        run = drive(args, world, tokens, ports, processes.cpu_groups(engine))
        stop_group(processes.beat)
        with contextlib.redirect_stdout(after):
            drained, waited = drain_webhooks(ports[1])
            print(f"  every webhook delivered, {waited:.1f} s after the load: {drained}")
            checks.append(Check("webhooks drained", drained))
            finance = Client(ports[0], ports[1], tokens, run.tally, random.Random(0))
            final = finance.call(
                "POST /finance/reconcile (final)", "POST", "/finance/reconcile", as_="finance"
            )
            print(f"  final reconciliation: {final.body if final else 'failed'}")
            drain_webhooks(ports[1])
            webhooks = webhook_log(ports[1])
            checks += check_stock(engine, initial, run.watched)
            checks += check_money(engine, ports[1], world.paid.at_stripe)
            checks += check_discrepancies(engine, finance)
            checks += check_deadlocks(engine)
            checks += check_rebuild(app, args.database_url, finance)
            finance.close()
    access = read_access_log(logs)
    tasks = read_task_logs(logs)
    print_load(run, webhooks, access, tasks, args.reconcile_every)
    errors = (
        sum(sum(c.values()) for c in run.tally.errors.values())
        + webhooks.retried
        + webhooks.failed
        + sum(access[2].values())
        + sum(tasks.failed.values())
    )
    traced = tracebacks(logs)
    print(f"  tracebacks in the processes' logs: {traced or 0}")
    checks.append(Check("errors == 0", errors == 0 and not traced))
    print()
    print("checks")
    print(after.getvalue(), end="")
    print()
    print("verdict")
    for check in checks:
        print(f"  {check.label}: {'OK' if check.ok else 'FAILED'}")
    return all(check.ok for check in checks)


if __name__ == "__main__":
    sys.exit(main())
