"""What an operator reads off a running shop: /metrics figures that move by exactly what happened
and match the database, and JSON log lines that carry one request id from the request into the
tasks it runs."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import func, select

from shop.config import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET, ConfigError, load_config
from shop.extensions import db
from shop.orders.models import Channel, Order, Status
from shop.payments.models import StripeEvent
from shop.reconciliation.models import Discrepancy, DiscrepancyKind, DiscrepancyStatus
from tests.conftest import (
    HUIZHOU_ADDRESS,
    LiveShop,
    Samples,
    bearer,
    demo_shop,
    free_port,
    make_app,
    metric_samples,
    served_demo_shop,
    signed,
    wait_until_up,
)

ROOT = Path(__file__).resolve().parents[2]
FRESH_ID = re.compile(r"[0-9a-f]{32}")


# --- reading /metrics -------------------------------------------------------------------------


def scrape(client: Any, headers: dict[str, str] | None = None) -> Samples:
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.content_type.startswith("text/plain")
    return metric_samples(response.get_data(as_text=True))


def scrape_live(live: LiveShop) -> Samples:
    response = requests.get(f"{live.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text[:500]
    return metric_samples(response.text)


def series(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """One sample name's values, keyed by the named labels' values in that order."""
    found = {}
    for (sample, pairs), value in samples.items():
        if sample == name:
            given = dict(pairs)
            found[tuple(given[label] for label in labels)] = value
    return found


def difference(
    old: dict[tuple[str, ...], float], new: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    """What changed from old to new, a series absent on one side counting as 0; nothing else."""
    return {
        key: new.get(key, 0.0) - old.get(key, 0.0)
        for key in old.keys() | new.keys()
        if new.get(key, 0.0) != old.get(key, 0.0)
    }


def moves(before: Samples, after: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """How much each series of `name` moved between two scrapes; those that did not are left out."""
    return difference(series(before, name, *labels), series(after, name, *labels))


# --- requests ----------------------------------------------------------------------------------


def test_requests_are_counted_by_route_and_status_and_timed(app: Flask, client: Any) -> None:
    before = scrape(client)
    for _ in range(3):
        assert client.get("/products/PA-TEA-001").status_code == 200
    assert client.get("/products/NO-SUCH-SKU").status_code == 404
    assert client.get("/wp-login.php").status_code == 404
    assert client.get("/.env").status_code == 404
    assert client.open("/products/PA-TEA-001", method="BREW").status_code == 405
    after = scrape(client)

    # The first scrape was counted once it had answered, so it shows in the second.
    assert moves(before, after, "shop_http_requests_total", "method", "endpoint", "status") == {
        ("GET", "catalog.product", "200"): 3,
        ("GET", "catalog.product", "404"): 1,
        ("GET", "unmatched", "404"): 2,
        ("other", "unmatched", "405"): 1,
        ("GET", "metrics.metrics", "200"): 1,
    }
    timed = moves(before, after, "shop_http_request_duration_seconds_count", "method", "endpoint")
    assert timed == {
        ("GET", "catalog.product"): 4,
        ("GET", "unmatched"): 2,
        ("other", "unmatched"): 1,
        ("GET", "metrics.metrics"): 1,
    }
    # Every request lands in the +Inf bucket: it and the count agree for each series.
    infinite = moves(
        before, after, "shop_http_request_duration_seconds_bucket", "method", "endpoint", "le"
    )
    assert {(m, e): n for (m, e, le), n in infinite.items() if le == "+Inf"} == timed

    # No path a client made up became a series of its own: every endpoint is a route's name.
    endpoints = {e for (e,) in series(after, "shop_http_requests_total", "endpoint")}
    assert endpoints <= set(app.view_functions) | {"unmatched"}


# --- orders ------------------------------------------------------------------------------------


def orders_gauge(samples: Samples) -> dict[tuple[str, ...], float]:
    return series(samples, "shop_orders", "status", "channel")


def orders_in_db(app: Flask) -> dict[tuple[str, ...], float]:
    """Every status and channel, the ones with no orders at 0, as a dashboard wants them."""
    with app.app_context():
        rows = db.session.execute(
            select(Order.status, Order.channel, func.count()).group_by(Order.status, Order.channel)
        ).all()
        db.session.remove()
    counts = {(str(status), str(channel)): n for status, channel, n in rows}
    return {
        (s.value, c.value): float(counts.get((s.value, c.value), 0))
        for s in Status
        for c in Channel
    }


def place(live: LiveShop, headers: dict[str, str]) -> dict[str, Any]:
    response = requests.post(
        f"{live.url}/api/v1/orders",
        headers=headers,
        timeout=30,
        json={"lines": [{"sku": "PA-TEA-001", "quantity": 1}], "address": HUIZHOU_ADDRESS},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def session_id(order: dict[str, Any]) -> str:
    return str(order["checkout_url"]).rstrip("/").rsplit("/", 1)[-1]


def status_of(live: LiveShop, number: str) -> str:
    with live.app.app_context():
        status = db.session.scalar(select(Order.status).where(Order.number == number))
        db.session.remove()
    return str(status)


def test_orders_by_status_match_the_database_and_move_when_a_buyer_orders_and_pays(
    database_url: str, emulator: str
) -> None:
    with served_demo_shop(database_url, emulator, sales=3) as live:
        start = orders_gauge(scrape_live(live))
        assert start == orders_in_db(live.app)
        assert start[("paid", "online")] > 0

        buyer = live.token("buyer@example.com")
        order = place(live, buyer)
        placed = scrape_live(live)
        assert orders_gauge(placed) == orders_in_db(live.app)
        assert difference(start, orders_gauge(placed)) == {("awaiting_payment", "online"): 1}

        live.control(f"checkout/sessions/{session_id(order)}/pay")
        live.wait_for_webhooks()
        assert status_of(live, order["number"]) == "paid"
        paid = scrape_live(live)
        assert orders_gauge(paid) == orders_in_db(live.app)
        assert difference(orders_gauge(placed), orders_gauge(paid)) == {
            ("awaiting_payment", "online"): -1,
            ("paid", "online"): 1,
        }

        # Stripe told the shop more than once (the session, the payment); one of them paid it.
        webhooks = moves(placed, paid, "shop_webhook_events_total", "type", "outcome")
        assert sum(n for (_type, outcome), n in webhooks.items() if outcome == "applied") == 1
        assert {outcome for _type, outcome in webhooks} <= {"applied", "ignored"}


# --- webhooks ----------------------------------------------------------------------------------


def post_event(live: LiveShop, payload: bytes, **sign: Any) -> requests.Response:
    return requests.post(
        f"{live.url}/api/v1/stripe/webhook",
        data=payload,
        timeout=10,
        headers={"Stripe-Signature": signed(payload, **sign), "Content-Type": "application/json"},
    )


def stripe_events_stored(live: LiveShop) -> int:
    with live.app.app_context():
        count = db.session.scalar(select(func.count()).select_from(StripeEvent))
        db.session.remove()
    return int(count or 0)


def test_webhook_events_are_counted_by_type_and_outcome(live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer)
    # Stripe's deliveries are held back: this test posts the event itself.
    live_shop.control("webhooks", drop_next=1000)
    live_shop.control(f"checkout/sessions/{session_id(order)}/pay")
    live_shop.wait_for_webhooks()
    stripe = live_shop.app.extensions["stripe"]
    completed = [
        event.to_dict()
        for event in stripe.v1.events.list(
            {"type": "checkout.session.completed", "limit": 100}
        ).auto_paging_iter()
        if event.to_dict()["data"]["object"]["id"] == session_id(order)
    ]
    assert len(completed) == 1
    payload = json.dumps(completed[0]).encode()
    stored = stripe_events_stored(live_shop)

    start = scrape_live(live_shop)
    assert post_event(live_shop, payload, secret="whsec_someone_else").status_code == 400
    assert post_event(live_shop, b"not an event", secret=EMULATOR_WEBHOOK_SECRET).status_code == 400
    rejected = scrape_live(live_shop)
    # Whatever type a forger claims, it is counted as unverified; a signed body that is no event
    # as invalid; and nothing changed.
    assert moves(start, rejected, "shop_webhook_events_total", "type", "outcome") == {
        ("unverified", "rejected"): 1,
        ("invalid", "rejected"): 1,
    }
    assert status_of(live_shop, order["number"]) == "awaiting_payment"
    assert stripe_events_stored(live_shop) == stored
    assert orders_gauge(rejected) == orders_gauge(start)

    # Verified but not what the shop can handle: 500 so that Stripe sends it again, counted as
    # failed, and not recorded as handled.
    broken = json.loads(payload)
    broken["id"] = "evt_obs_cannot_handle"
    del broken["data"]["object"]["amount_total"]
    assert post_event(live_shop, json.dumps(broken).encode()).status_code == 500
    failed = scrape_live(live_shop)
    assert moves(rejected, failed, "shop_webhook_events_total", "type", "outcome") == {
        ("checkout.session.completed", "failed"): 1
    }
    assert status_of(live_shop, order["number"]) == "awaiting_payment"
    assert stripe_events_stored(live_shop) == stored

    first = post_event(live_shop, payload)
    assert first.status_code == 200 and first.json()["changed"] is True
    applied = scrape_live(live_shop)
    assert moves(failed, applied, "shop_webhook_events_total", "type", "outcome") == {
        ("checkout.session.completed", "applied"): 1
    }
    assert status_of(live_shop, order["number"]) == "paid"

    again = post_event(live_shop, payload)
    assert again.status_code == 200 and again.json()["changed"] is False
    repeated = scrape_live(live_shop)
    assert moves(applied, repeated, "shop_webhook_events_total", "type", "outcome") == {
        ("checkout.session.completed", "ignored"): 1
    }
    assert orders_gauge(repeated) == orders_gauge(applied) == orders_in_db(live_shop.app)


# --- tasks -------------------------------------------------------------------------------------

TASK_SERIES = (
    "shop_task_runs_total",
    "shop_task_failures_total",
    "shop_task_duration_seconds_count",
)


def task_moves(before: Samples, after: Samples) -> dict[str, dict[tuple[str, ...], float]]:
    return {name: moves(before, after, name, "task") for name in TASK_SERIES}


def test_task_runs_failures_and_durations_are_counted_per_task(app: Flask, client: Any) -> None:
    """As a worker runs them: a task that raises is recorded as failed, not raised to the caller."""
    tasks = app.extensions["celery"].tasks
    before = scrape(client)
    assert tasks["shop.rollup"].apply().successful()
    assert tasks["shop.rollup"].apply().successful()
    failed = tasks["shop.close_month"].apply(args=("2020-01", 10**9), throw=False)
    assert failed.failed() and isinstance(failed.result, ValueError)
    after = scrape(client)
    assert task_moves(before, after) == {
        "shop_task_runs_total": {("shop.rollup",): 2, ("shop.close_month",): 1},
        "shop_task_failures_total": {("shop.close_month",): 1},
        "shop_task_duration_seconds_count": {("shop.rollup",): 2, ("shop.close_month",): 1},
    }
    durations = moves(before, after, "shop_task_duration_seconds_sum", "task")
    assert durations[("shop.rollup",)] > 0


def test_a_task_that_raises_in_process_is_counted_as_failed(app: Flask, client: Any) -> None:
    """Without a broker (the demo) tasks run inside the request and their errors propagate:
    such a run fails all the same, and the failures counter must say so."""
    close_month = app.extensions["celery"].tasks["shop.close_month"]
    before = scrape(client)
    with pytest.raises(ValueError, match="no user"):
        close_month.apply(args=("2020-01", 10**9))
    after = scrape(client)
    assert task_moves(before, after) == {
        "shop_task_runs_total": {("shop.close_month",): 1},
        "shop_task_failures_total": {("shop.close_month",): 1},
        "shop_task_duration_seconds_count": {("shop.close_month",): 1},
    }


# --- discrepancies -----------------------------------------------------------------------------


def open_in_db(app: Flask) -> dict[tuple[str, ...], float]:
    with app.app_context():
        rows = db.session.execute(
            select(Discrepancy.kind, func.count())
            .where(Discrepancy.status == DiscrepancyStatus.OPEN)
            .group_by(Discrepancy.kind)
        ).all()
        db.session.remove()
    counts = {str(kind): n for kind, n in rows}
    return {(kind.value,): float(counts.get(kind.value, 0)) for kind in DiscrepancyKind}


def add_discrepancy(app: Flask, kind: DiscrepancyKind, stripe_object: str) -> int:
    """What reconciliation writes when the shop and Stripe disagree."""
    with app.app_context():
        found = Discrepancy(
            kind=kind,
            stripe_object=stripe_object,
            shop_fen=12800,
            stripe_fen=12700,
            currency="cny",
            detail="Stripe 收款比订单少 1 元",
        )
        db.session.add(found)
        db.session.commit()
        found_id = found.id
        db.session.remove()
    return found_id


def test_open_discrepancies_by_kind_match_the_database(app: Flask, client: Any) -> None:
    gauge = "shop_discrepancies_open"
    start = series(scrape(client), gauge, "kind")
    assert start == open_in_db(app)

    amount = add_discrepancy(app, DiscrepancyKind.AMOUNT_DIFFERS, "pi_obs_amount")
    add_discrepancy(app, DiscrepancyKind.REFUND_DIFFERS, "re_obs_refund")
    found = series(scrape(client), gauge, "kind")
    assert found == open_in_db(app)
    assert difference(start, found) == {("amount_differs",): 1, ("refund_differs",): 1}

    finance = bearer(client, "finance@example.com")
    resolved = client.post(
        f"/api/v1/finance/discrepancies/{amount}/resolve",
        headers=finance,
        json={"note": "Stripe 手续费，已核对"},
    )
    assert resolved.status_code == 200, resolved.get_json()
    after = series(scrape(client), gauge, "kind")
    assert after == open_in_db(app)
    assert difference(start, after) == {("refund_differs",): 1}


# --- who may scrape ----------------------------------------------------------------------------


def test_a_metrics_token_keeps_the_figures_from_anyone_without_it(
    database_url: str, emulator: str
) -> None:
    token = "obs-scrape-token-7f3a"
    with demo_shop(database_url, emulator, METRICS_TOKEN=token) as app:
        client = app.test_client()
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Bearer {token}x"},
            {"Authorization": "Bearer "},
            {"Authorization": token},
        ):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            body = refused.get_data(as_text=True)
            assert "shop_orders" not in body and "awaiting_payment" not in body
            assert "shop_http_requests" not in body
        allowed = scrape(client, {"Authorization": f"Bearer {token}"})
        assert orders_gauge(allowed) == orders_in_db(app)
        assert orders_gauge(scrape(client, {"Authorization": f"bearer {token}"}))


def test_with_the_database_down_metrics_still_report_the_process_counters(emulator: str) -> None:
    app = make_app(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test", emulator)
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    answer = client.get("/metrics")
    assert answer.status_code == 200
    samples = metric_samples(answer.get_data(as_text=True))
    assert series(samples, "shop_metrics_database_up") == {(): 0}
    assert orders_gauge(samples) == {}
    assert (
        series(samples, "shop_http_requests_total", "endpoint", "status")[("health.healthz", "200")]
        >= 1
    )


# --- logs --------------------------------------------------------------------------------------


def log_lines(text: str) -> list[dict[str, Any]]:
    """Every line the shop wrote, each one JSON object a log shipper can read without help."""
    lines = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        assert record["time"].endswith("Z"), line
        datetime.fromisoformat(record["time"])
        lines.append(record)
    assert lines, "the shop wrote no log lines"
    return lines


@contextmanager
def shop_process(database_url: str, emulator: str, workdir: Path) -> Iterator[tuple[str, Path]]:
    """The shop as `flask run` serves it, in the demo's setting (tasks in-process), its stderr
    in a file."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CELERY_", "FLASK_", "LOG_", "METRICS_", "PROMETHEUS_"))
    }
    env.update(
        DATABASE_URL=database_url,
        STRIPE_API_BASE=emulator,
        STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        EXPORT_DIR=str(workdir / "exports"),
        UPLOAD_DIR=str(workdir / "uploads"),
    )
    stderr = workdir / "shop.stderr"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "shop:create_app()",
                "run",
                "--port",
                str(port),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/healthz")
        yield url, stderr
    finally:
        process.terminate()
        process.wait(timeout=10)


def folded_request(url: str, path: str, request_id_lines: str) -> tuple[int, str]:
    """A request sent byte for byte: its X-Request-ID folded over two lines (obsolete HTTP)."""
    host, port = url.removeprefix("http://").split(":")
    raw = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Request-ID: {request_id_lines}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(raw)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = dict(line.split(": ", 1) for line in head[1:])
    return status, headers["X-Request-ID"]


def test_json_logs_carry_the_request_id_into_the_request_line_and_its_tasks(
    app: Flask, database_url: str, emulator: str, tmp_path: Path
) -> None:
    sent: dict[str, str] = {}  # the id the shop answered with, by what the client sent
    with shop_process(database_url, emulator, tmp_path) as (url, stderr):
        page = f"{url}/products/PA-TEA-001"
        for given in ("abc-123", "a" * 64, "lb-7.node:2_x", "has spaces", "a" * 65, "<script>"):
            response = requests.get(page, headers={"X-Request-ID": given}, timeout=10)
            assert response.status_code == 200
            sent[given] = response.headers["X-Request-ID"]
        status, folded = folded_request(url, "/products/PA-TEA-001", "abc\r\n\tinjected")
        assert status == 200
        unnamed = requests.get(page, timeout=10).headers["X-Request-ID"]

        token = requests.post(
            f"{url}/api/v1/auth/tokens",
            json={"email": "finance@example.com", "password": "demo-password"},
            timeout=10,
        ).json()["token"]
        reconciled = requests.post(
            f"{url}/api/v1/finance/reconcile",
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "reconcile-now-42"},
            timeout=60,
        )
        assert reconciled.status_code == 200, reconciled.text
        assert reconciled.headers["X-Request-ID"] == "reconcile-now-42"
    lines = log_lines(stderr.read_text(encoding="utf-8"))

    # Well-formed ids come back as they were sent; anything else is replaced by a fresh one.
    for given in ("abc-123", "a" * 64, "lb-7.node:2_x"):
        assert sent[given] == given
    fresh = [sent["has spaces"], sent["a" * 65], sent["<script>"], folded, unnamed]
    assert all(FRESH_ID.fullmatch(rid) for rid in fresh), fresh
    assert len(set(fresh)) == len(fresh)

    requests_lines = {
        line["request_id"]: line for line in lines if line["logger"] == "shop.requests"
    }
    for rid in [*sent.values(), folded, unnamed]:
        line = requests_lines[rid]
        assert line["level"] == "INFO"
        assert (line["method"], line["path"], line["endpoint"], line["status"]) == (
            "GET",
            "/products/PA-TEA-001",
            "catalog.product",
            200,
        )
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    rejected = {"has spaces", "a" * 65, "<script>", "abc", "injected"}
    assert not rejected & {line.get("request_id") for line in lines}
    assert not any("injected" in json.dumps(line) for line in lines)

    # The reconciliation ran inside the request: every line of it has the request's id.
    reconcile = requests_lines["reconcile-now-42"]
    assert (reconcile["method"], reconcile["endpoint"], reconcile["status"]) == (
        "POST",
        "reconciliation_api.reconcile_now",
        200,
    )
    # The run's task ids end with the run: the request's own line, written after it, has none.
    assert "task_id" not in reconcile and "task_name" not in reconcile
    task_lines = [line for line in lines if line.get("task_name") == "shop.reconcile_payments"]
    messages = [line["message"] for line in task_lines]
    assert "task shop.reconcile_payments started" in messages
    assert "task shop.reconcile_payments finished: SUCCESS" in messages
    assert {line["request_id"] for line in task_lines} == {"reconcile-now-42"}
    assert len({line["task_id"] for line in task_lines}) == 1


def test_a_request_id_with_a_line_break_never_reaches_the_logs(
    database_url: str, emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server in front may pass on what werkzeug's own would not: the shop still refuses it."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with demo_shop(database_url, emulator, LOG_FORMAT="json", LOG_LEVEL="INFO") as app:
        forged = 'abc\n{"level": "INFO", "logger": "shop.requests", "request_id": "forged"}'
        response = app.test_client().get(
            "/products/PA-TEA-001", environ_overrides={"HTTP_X_REQUEST_ID": forged}
        )
        assert response.status_code == 200
    rid = response.headers["X-Request-ID"]
    assert FRESH_ID.fullmatch(rid)
    lines = log_lines(stderr.getvalue())
    assert [line["path"] for line in lines if line.get("request_id") == rid] == [
        "/products/PA-TEA-001"
    ]
    assert "forged" not in stderr.getvalue()


def test_text_logs_show_the_request_id_of_each_line(
    database_url: str, emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with demo_shop(database_url, emulator, LOG_FORMAT="text", LOG_LEVEL="INFO") as app:
        response = app.test_client().get(
            "/products/PA-TEA-001", headers={"X-Request-ID": "abc-123"}
        )
        assert response.headers["X-Request-ID"] == "abc-123"
        # A line break in a path stays inside its line, escaped: it cannot forge the next one.
        forged = "/x%0A2026-01-01 00:00:00,000 INFO shop.requests [admin] GET /admin 200"
        assert app.test_client().get(forged).status_code == 404
        assert app.test_client().get(forged.replace("%0A", "%E2%80%A8")).status_code == 404
        logging.getLogger("shop.tests").info("outside any request")
    # Split as any reader may: on every line break Python knows, U+2028 included.
    lines = stderr.getvalue().splitlines()
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines), lines
    assert any("GET /x\\n2026-01-01" in line and " 404" in line for line in lines), lines
    assert any("GET /x\\u20282026-01-01" in line and " 404" in line for line in lines), lines
    assert any(
        " INFO shop.requests [abc-123] GET /products/PA-TEA-001 200" in line for line in lines
    ), lines
    assert any(line.endswith(" INFO shop.tests [-] outside any request") for line in lines)


# --- settings ----------------------------------------------------------------------------------


def test_log_and_metrics_settings_default_sensibly_and_refuse_nonsense() -> None:
    development = load_config({})
    assert (development["LOG_FORMAT"], development["LOG_LEVEL"]) == ("text", "INFO")
    assert development["METRICS_TOKEN"] == ""
    production = load_config(
        {
            "SHOP_ENV": "production",
            "SECRET_KEY": "s",
            "DATABASE_URL": "postgresql+psycopg://shop@db/shop",
            "STRIPE_SECRET_KEY": "sk_live_x",
            "STRIPE_WEBHOOK_SECRET": "whsec_x",
        }
    )
    assert (production["LOG_FORMAT"], production["LOG_LEVEL"]) == ("json", "INFO")
    chosen = load_config({"LOG_FORMAT": "json", "LOG_LEVEL": "WARNING", "METRICS_TOKEN": "t"})
    assert (chosen["LOG_FORMAT"], chosen["LOG_LEVEL"], chosen["METRICS_TOKEN"]) == (
        "json",
        "WARNING",
        "t",
    )
    assert load_config({"LOG_LEVEL": "debug", "LOG_FORMAT": "JSON"})["LOG_LEVEL"] == "DEBUG"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_config({"LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        load_config({"LOG_LEVEL": "LOUD"})
    with pytest.raises(ConfigError, match="WORKER_METRICS_PORT"):
        load_config({"WORKER_METRICS_PORT": "ninety"})
    with pytest.raises(ConfigError, match="needs PROMETHEUS_MULTIPROC_DIR"):
        load_config({"WORKER_METRICS_PORT": "9100"})
    served = load_config({"WORKER_METRICS_PORT": "9100", "PROMETHEUS_MULTIPROC_DIR": "/run/m"})
    assert served["CELERY"]["worker_metrics_port"] == 9100


def test_an_empty_multiprocess_directory_setting_counts_in_memory(tmp_path: Path) -> None:
    """A blank `PROMETHEUS_MULTIPROC_DIR=` line in an env file means no directory, not this one."""
    script = (
        "import shop.observability, os\n"
        "from shop.observability.metrics import TASK_RUNS\n"
        "from prometheus_client import REGISTRY\n"
        "TASK_RUNS.labels('shop.rollup').inc()\n"
        "print(REGISTRY.get_sample_value('shop_task_runs_total', {'task': 'shop.rollup'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1.0"
    assert list(tmp_path.iterdir()) == []  # no counter files written where it ran
