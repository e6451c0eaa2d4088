"""The ledger rules of SPEC §5, through real HTTP, the Stripe emulator and its signed webhooks."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select

from shop.accounts.models import User
from shop.db import utcnow
from shop.errors import Conflict
from shop.extensions import db
from shop.ledger.models import ClosedMonth, LedgerEntry, NotCounted, Source
from shop.ledger.services import (
    close_month,
    month_unchanged,
    parse_month,
    recognise_all,
    rollup,
    totals,
)
from shop.orders.models import Order, Refund
from shop.orders.services import get_order
from shop.payments.services import apply_stripe_refund
from shop.procurement.models import Organisation
from shop.timezones import shanghai_today
from tests.conftest import HUIZHOU_ADDRESS, LiveShop, signed

GUIYANG_ADDRESS = {
    "name": "王黔生",
    "phone": "13900139000",
    "province": "贵州省",
    "city": "贵阳市",
    "district": "云岩区",
    "detail": "中华北路 1 号",
}


# --- helpers ----------------------------------------------------------------------------------


def api(live: LiveShop, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    return requests.request(method, f"{live.url}/api/v1{path}", headers=headers, timeout=60, **kw)


def place(
    live: LiveShop,
    headers: dict[str, str],
    lines: list[tuple[str, int]],
    address: dict[str, str] = HUIZHOU_ADDRESS,
) -> dict[str, Any]:
    response = api(
        live,
        "POST",
        "/orders",
        headers,
        json={"lines": [{"sku": s, "quantity": q} for s, q in lines], "address": address},
    )
    assert response.status_code == 201, response.text
    return response.json()


def session_id(order: dict[str, Any]) -> str:
    return order["checkout_url"].rstrip("/").rsplit("/", 1)[-1]


def pay(live: LiveShop, order: dict[str, Any]) -> None:
    live.control(f"checkout/sessions/{session_id(order)}/pay")
    live.wait_for_webhooks()


def stripe_events(live: LiveShop, **filters: Any) -> list[dict[str, Any]]:
    client = live.app.extensions["stripe"]
    return [
        event.to_dict()
        for event in client.v1.events.list({"limit": 100, **filters}).auto_paging_iter()
    ]


def post_event(live: LiveShop, event: dict[str, Any]) -> requests.Response:
    payload = json.dumps(event).encode()
    response = requests.post(
        f"{live.url}/api/v1/stripe/webhook",
        data=payload,
        timeout=10,
        headers={"Stripe-Signature": signed(payload), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    return response


def pay_as_if_at(live: LiveShop, order: dict[str, Any], when: datetime) -> None:
    """Pay at Stripe, but let the shop hear of it from a signed event dated `when`."""
    live.control("webhooks", drop_next=1000)
    live.control(f"checkout/sessions/{session_id(order)}/pay")
    live.control("webhooks", drop_next=0)
    completed = next(
        event
        for event in stripe_events(live, type="checkout.session.completed")
        if event["data"]["object"]["id"] == session_id(order)
    )
    completed["created"] = int(when.timestamp())
    assert post_event(live, completed).json()["changed"] is True


def entries_of(live: LiveShop, number: str) -> list[LedgerEntry]:
    with live.app.app_context():
        rows = db.session.scalars(
            select(LedgerEntry)
            .join(Order, Order.id == LedgerEntry.order_id)
            .where(Order.number == number)
            .order_by(LedgerEntry.id)
        ).all()
        db.session.expunge_all()
        return list(rows)


def payment_entries(live: LiveShop, number: str) -> list[LedgerEntry]:
    return [e for e in entries_of(live, number) if e.source == Source.PAYMENT]


def refund_entries(live: LiveShop, number: str) -> list[LedgerEntry]:
    return [e for e in entries_of(live, number) if e.source == Source.REFUND]


def shanghai_now() -> date:
    return shanghai_today(utcnow())


def first_of_month(day: date, months_back: int) -> date:
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def last_day(month_first: date) -> date:
    return parse_month(f"{month_first:%Y-%m}")[1]


def finance_user() -> User:
    user = db.session.scalar(select(User).where(User.email == "finance@example.com"))
    assert user is not None
    return user


def year_totals(**kw: Any) -> Any:
    today = shanghai_now()
    return totals(db.session, start=date(today.year - 1, 1, 1), end=today, **kw)


# --- rule 4: attribution ----------------------------------------------------------------------


def test_an_individual_in_huizhou_is_attributed_to_the_address_district_as_purchase(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    address = {**HUIZHOU_ADDRESS, "district": "惠阳区"}
    # the bananas are cold-chain: a shipping line the ledger must leave out
    order = place(live_shop, buyer, [("PA-TEA-001", 2), ("CH-BN-001", 1)], address)
    assert order["shipping_fen"] > 0
    before = shanghai_now()
    pay(live_shop, order)
    entries = payment_entries(live_shop, order["number"])
    assert [(e.sku, e.amount_fen, e.quantity) for e in entries] == [
        ("PA-TEA-001", 2 * 12800, 2),
        ("CH-BN-001", 5900, 1),
    ]
    assert sum(e.amount_fen for e in entries) == order["goods_fen"]
    assert [(e.county, e.category) for e in entries] == [("普安县", "茶叶"), ("册亨县", "水果")]
    for entry in entries:
        assert entry.district == "惠阳区"
        assert entry.kind == "采购"
        assert entry.buyer_type == "个人"
        assert entry.channel == "online"
        assert entry.funding == "个人"
        assert entry.counted is True and entry.reason == ""
        assert entry.reference == order["number"]
        assert entry.day in {before, shanghai_now()}


def test_an_individual_outside_huizhou_is_attributed_to_outside_the_city_as_sales_help(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer, [("XR-YR-001", 3)], GUIYANG_ADDRESS)
    pay(live_shop, order)
    (entry,) = payment_entries(live_shop, order["number"])
    assert (entry.county, entry.amount_fen) == ("兴仁市", 3 * 5900)
    assert entry.district == "市外"
    assert entry.kind == "帮助销售"
    assert entry.buyer_type == "个人"
    assert (entry.channel, entry.funding) == ("online", "个人")
    assert entry.counted is True
    with live_shop.app.app_context():
        by_kind = {r["kind"]: r["amount_fen"] for r in year_totals(group_by=["kind"]).rows}
    assert by_kind == {"帮助销售": 3 * 5900}


def test_a_unit_order_is_attributed_to_the_unit_district_and_type_with_its_funding(
    live_shop: LiveShop,
) -> None:
    officer = live_shop.token("officer@example.com")
    approver = live_shop.token("approver@example.com")
    # delivered to canteens in 博罗县; the unit itself sits in 惠城区
    rows = (
        "SKU/商品编码,数量/quantity,收货人,电话,收货地址,区县\n"
        "PA-TEA-001,20,食堂甲,13800138001,罗阳街道 1 号,博罗县\n"
        "XR-YR-001,15,食堂甲,13800138001,罗阳街道 1 号,博罗县\n"
    )
    drafted = api(
        live_shop,
        "POST",
        "/procurement/orders",
        officer,
        files={"file": ("order.csv", rows.encode("utf-8-sig"), "text/csv")},
        data={"funding": "工会经费"},
    )
    assert drafted.status_code == 201, drafted.text
    order = drafted.json()
    assert order["funding"] == "工会经费"
    api(live_shop, "POST", f"/procurement/orders/{order['id']}/submit", officer)
    approved = api(live_shop, "POST", f"/procurement/orders/{order['id']}/approve", approver)
    assert approved.status_code == 200, approved.text
    with live_shop.app.app_context():
        invoice_id = db.session.scalar(
            select(Order.stripe_invoice_id).where(Order.number == order["number"])
        )
        unit = db.session.scalar(select(Organisation))
        assert unit is not None
        unit_id, unit_type = unit.id, unit.type
    live_shop.control(f"invoices/{invoice_id}/pay")
    live_shop.wait_for_webhooks()
    entries = payment_entries(live_shop, order["number"])
    assert [(e.sku, e.amount_fen) for e in entries] == [
        (line["sku"], line["amount_fen"]) for line in order["lines"]
    ]
    assert sum(e.amount_fen for e in entries) == order["goods_fen"]
    for entry in entries:
        assert entry.district == "惠城区"
        assert entry.buyer_type == unit_type == "机关事业单位"
        assert entry.kind == "采购"
        assert entry.channel == "unit"
        assert entry.funding == "工会经费"
        assert entry.organisation_id == unit_id
        assert entry.counted is True
    with live_shop.app.app_context():
        rows_by = year_totals(group_by=["district", "channel", "funding"]).rows
    assert [(r["district"], r["channel"], r["funding"], r["amount_fen"]) for r in rows_by] == [
        ("惠城区", "unit", "工会经费", order["goods_fen"])
    ]


# --- rule 3: what counts ----------------------------------------------------------------------


def test_uncertified_and_non_cooperation_skus_are_written_but_left_out_of_the_totals(
    live_shop: LiveShop,
) -> None:
    admin = live_shop.token("admin@example.com")
    buyer = live_shop.token("buyer@example.com")
    # a current certificate for the 兴义市 supplier: its goods are certified, but 兴义市 is not
    # a cooperation county
    suppliers = api(live_shop, "GET", "/admin/suppliers", admin).json()["items"]
    xingyi = next(s for s in suppliers if s["county"] == "兴义市")
    today = shanghai_now()
    certified = api(
        live_shop,
        "POST",
        f"/admin/suppliers/{xingyi['id']}/certifications",
        admin,
        json={
            "number": "QXN-XFBF-2026-0999",
            "valid_from": str(today - timedelta(days=30)),
            "valid_to": str(today + timedelta(days=365)),
        },
    )
    assert certified.status_code == 201, certified.text
    order = place(live_shop, buyer, [("PA-TEA-001", 1), ("PA-YC-001", 2), ("XY-EK-001", 3)])
    # certifying the oil after the order was placed changes nothing: what counts is order time
    patched = api(live_shop, "PATCH", "/admin/products/PA-YC-001", admin, json={"certified": True})
    assert patched.status_code == 200, patched.text
    pay(live_shop, order)

    entries = {e.sku: e for e in payment_entries(live_shop, order["number"])}
    assert set(entries) == {"PA-TEA-001", "PA-YC-001", "XY-EK-001"}
    assert (entries["PA-TEA-001"].counted, entries["PA-TEA-001"].reason) == (True, "")
    assert (entries["PA-YC-001"].counted, entries["PA-YC-001"].reason) == (
        False,
        NotCounted.UNCERTIFIED.value,
    )
    assert (entries["XY-EK-001"].counted, entries["XY-EK-001"].reason) == (
        False,
        NotCounted.NOT_COOPERATION.value,
    )
    assert entries["PA-YC-001"].amount_fen == 2 * 9800
    assert (entries["XY-EK-001"].county, entries["XY-EK-001"].amount_fen) == ("兴义市", 3 * 3800)

    with live_shop.app.app_context():
        counted = year_totals(group_by=["county"])
        everything = year_totals(group_by=["county"], counted_only=False)
        rollup(db.session)
        after_rollup = year_totals(group_by=["county"])
    assert counted.total_fen == 12800
    assert [(r["county"], r["amount_fen"]) for r in counted.rows] == [("普安县", 12800)]
    assert after_rollup == counted
    assert everything.total_fen == 12800 + 2 * 9800 + 3 * 3800


# --- rule 5: exactly once ---------------------------------------------------------------------


def test_a_payment_webhook_replayed_five_times_among_refund_events_writes_one_set_of_entries(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer, [("PA-TEA-001", 3), ("XR-YR-001", 2)])
    total = order["total_fen"]
    assert total == order["goods_fen"] == 3 * 12800 + 2 * 5900
    live_shop.control("webhooks", drop_next=1000)
    live_shop.control(f"checkout/sessions/{session_id(order)}/pay")
    with live_shop.app.app_context():
        pi = db.session.scalar(
            select(Order.stripe_payment_intent_id).where(Order.number == order["number"])
        )
    live_shop.app.extensions["stripe"].v1.refunds.create({"payment_intent": pi, "amount": 5001})
    live_shop.control("webhooks", drop_next=0)
    linked = [
        event
        for event in stripe_events(live_shop)
        if (event["data"]["object"].get("metadata") or {}).get("order_number") == order["number"]
        or pi in (event["data"]["object"].get("payment_intent"), event["data"]["object"]["id"])
    ]
    types = {event["type"] for event in linked}
    assert {"checkout.session.completed", "payment_intent.succeeded"} <= types
    assert types & {"charge.refunded", "refund.created"}
    deliveries = linked * 5
    random.Random(20260531).shuffle(deliveries)
    for event in deliveries:
        post_event(live_shop, event)

    payments = payment_entries(live_shop, order["number"])
    refunds = refund_entries(live_shop, order["number"])
    assert len(payments) == 2 and sum(e.amount_fen for e in payments) == total
    assert len({e.source_id for e in refunds}) == 1
    assert sum(e.amount_fen for e in refunds) == -5001
    before = [(e.id, e.amount_fen) for e in entries_of(live_shop, order["number"])]
    with live_shop.app.app_context():
        assert recognise_all(db.session) == {"payment_entries": 0, "refund_entries": 0}
        db.session.commit()
        assert year_totals(group_by=[]).total_fen == total - 5001
    assert [(e.id, e.amount_fen) for e in entries_of(live_shop, order["number"])] == before


# --- rule 2: refunds dated on their own day ---------------------------------------------------


def test_refund_entries_are_dated_on_the_refund_day_not_the_payment_day(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    admin = live_shop.token("admin@example.com")
    order = place(live_shop, buyer, [("PA-TEA-001", 2), ("XR-YR-001", 1)])
    paid_at = utcnow() - timedelta(days=9)
    pay_as_if_at(live_shop, order, paid_at)
    payments = payment_entries(live_shop, order["number"])
    assert {e.day for e in payments} == {shanghai_today(paid_at)}

    before = shanghai_now()
    refunded = api(live_shop, "POST", f"/orders/{order['number']}/refunds", admin, json={})
    assert refunded.status_code == 201, refunded.text
    live_shop.wait_for_webhooks()
    refunds = refund_entries(live_shop, order["number"])
    assert {e.day for e in refunds} <= {before, shanghai_now()}
    assert sorted((e.sku, e.amount_fen, e.quantity) for e in refunds) == [
        ("PA-TEA-001", -2 * 12800, -2),
        ("XR-YR-001", -5900, -1),
    ]
    # the payment day keeps its entries: the refund is not back-dated onto it
    assert [e.day for e in payment_entries(live_shop, order["number"])] == [e.day for e in payments]
    with live_shop.app.app_context():
        by_day = year_totals(group_by=["day"]).rows
    assert {r["day"]: r["amount_fen"] for r in by_day if r["amount_fen"]} == {
        str(shanghai_today(paid_at)): order["goods_fen"],
        **({str(e.day): -order["goods_fen"] for e in refunds[:1]}),
    }


def test_a_refund_gives_back_goods_before_shipping_and_shipping_never_enters_the_ledger(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    admin = live_shop.token("admin@example.com")
    order = place(live_shop, buyer, [("CH-BN-001", 1), ("WM-MG-003", 1)])
    goods, shipping = order["goods_fen"], order["shipping_fen"]
    assert (goods, shipping > 0) == (5900 + 2800, True)
    pay(live_shop, order)
    assert sum(e.amount_fen for e in payment_entries(live_shop, order["number"])) == goods
    path = f"/orders/{order['number']}/refunds"
    most = api(live_shop, "POST", path, admin, json={"amount_fen": goods + 1})
    assert most.status_code == 201, most.text
    first = refund_entries(live_shop, order["number"])
    assert sorted((e.sku, e.amount_fen) for e in first) == [
        ("CH-BN-001", -5900),
        ("WM-MG-003", -2800),
    ]
    rest = api(live_shop, "POST", path, admin, json={})
    assert rest.status_code == 201, rest.text
    assert rest.json()["status"] == "refunded"
    live_shop.wait_for_webhooks()
    # the shipping-only refund takes no goods: its entries (if any) only give back quantities
    after = refund_entries(live_shop, order["number"])
    assert sum(e.amount_fen for e in after) == -goods
    assert {e.amount_fen for e in after[len(first) :]} <= {0}
    with live_shop.app.app_context():
        # every refund is marked recognised, the shipping-only one too: the sweep has no work
        refunds = db.session.scalars(select(Refund)).all()
        assert [r.recognised_at is not None for r in refunds] == [True, True]
        assert recognise_all(db.session) == {"payment_entries": 0, "refund_entries": 0}
        db.session.commit()
        assert year_totals(group_by=[]).total_fen == 0


# --- rule 6: closed months --------------------------------------------------------------------


def test_a_refund_after_the_month_is_closed_lands_in_the_open_month(live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    admin = live_shop.token("admin@example.com")
    last_month = first_of_month(shanghai_now(), 1)
    in_last_month = datetime(last_month.year, last_month.month, 15, 4, 0, tzinfo=UTC)
    order = place(live_shop, buyer, [("PA-TEA-001", 1), ("XR-YR-001", 2)])
    pay_as_if_at(live_shop, order, in_last_month)
    assert {e.day for e in payment_entries(live_shop, order["number"])} == {
        last_month.replace(day=15)
    }

    with live_shop.app.app_context():
        closed = close_month(db.session, f"{last_month:%Y-%m}", finance_user())
        assert (closed.total_fen, closed.entries) == (order["goods_fen"], 2)

    before = shanghai_now()
    refunded = api(
        live_shop, "POST", f"/orders/{order['number']}/refunds", admin, json={"amount_fen": 999}
    )
    assert refunded.status_code == 201, refunded.text
    live_shop.wait_for_webhooks()
    refunds = refund_entries(live_shop, order["number"])
    assert sum(e.amount_fen for e in refunds) == -999
    assert {e.day for e in refunds} <= {before, shanghai_now()}
    with live_shop.app.app_context():
        closed_row = db.session.get(ClosedMonth, f"{last_month:%Y-%m}")
        assert closed_row is not None
        assert month_unchanged(db.session, closed_row)
        by_month = {r["month"]: r["amount_fen"] for r in year_totals(group_by=["month"]).rows}
    assert by_month[f"{last_month:%Y-%m}"] == order["goods_fen"]
    assert by_month[f"{refunds[0].day:%Y-%m}"] == -999


def test_a_refund_stripe_made_inside_a_closed_month_but_found_late_is_booked_today(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    last_month = first_of_month(shanghai_now(), 1)
    order = place(live_shop, buyer, [("PA-TEA-001", 2)])
    pay_as_if_at(live_shop, order, datetime(last_month.year, last_month.month, 3, 1, tzinfo=UTC))
    refunded_at = datetime(last_month.year, last_month.month, 20, 9, 0, tzinfo=UTC)
    with live_shop.app.app_context():
        closed = close_month(db.session, f"{last_month:%Y-%m}", finance_user())
        before = shanghai_now()
        # what reconciliation does with a refund made at Stripe that no webhook told us of
        locked = get_order(db.session, order["number"], lock=True)
        stripe_refund = {"id": "re_found_late", "status": "succeeded", "amount": 4321}
        assert apply_stripe_refund(db.session, locked, stripe_refund, refunded_at=refunded_at)
        db.session.commit()
        assert month_unchanged(db.session, closed)
    (refund,) = db_refunds(live_shop, order["number"])
    assert (refund.kind, refund.status) == ("external", "succeeded")
    assert refund.succeeded_at == refunded_at
    entries = refund_entries(live_shop, order["number"])
    assert [(e.amount_fen, e.occurred_at) for e in entries] == [(-4321, refunded_at)]
    assert entries[0].day in {before, shanghai_now()}


def db_refunds(live: LiveShop, number: str) -> list[Refund]:
    with live.app.app_context():
        rows = db.session.scalars(
            select(Refund).join(Order).where(Order.number == number).order_by(Refund.id)
        ).all()
        db.session.expunge_all()
        return list(rows)


def test_a_late_payment_event_dated_in_a_closed_month_is_booked_today(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    last_month = first_of_month(shanghai_now(), 1)
    with live_shop.app.app_context():
        closed = close_month(db.session, f"{last_month:%Y-%m}", finance_user())
        assert (closed.total_fen, closed.entries) == (0, 0)
    order = place(live_shop, buyer, [("XR-YR-001", 4)])
    in_closed_month = datetime(last_month.year, last_month.month, 20, 2, 0, tzinfo=UTC)
    before = shanghai_now()
    pay_as_if_at(live_shop, order, in_closed_month)
    (entry,) = payment_entries(live_shop, order["number"])
    assert entry.day in {before, shanghai_now()}
    assert entry.occurred_at == in_closed_month  # the money still moved when Stripe says
    with live_shop.app.app_context():
        closed_row = db.session.get(ClosedMonth, f"{last_month:%Y-%m}")
        assert closed_row is not None and month_unchanged(db.session, closed_row)
        by_month = {r["month"]: r["amount_fen"] for r in year_totals(group_by=["month"]).rows}
    assert by_month == {f"{entry.day:%Y-%m}": 4 * 5900}


def test_a_month_can_be_closed_only_when_it_is_over_and_only_once(live_shop: LiveShop) -> None:
    finance = live_shop.token("finance@example.com")
    this_month = f"{shanghai_now():%Y-%m}"
    last_month = f"{first_of_month(shanghai_now(), 1):%Y-%m}"
    not_over = api(live_shop, "POST", f"/finance/months/{this_month}/close", finance)
    assert not_over.status_code == 409, not_over.text
    assert not_over.json()["error"]["code"] == "month_not_over"
    closed = api(live_shop, "POST", f"/finance/months/{last_month}/close", finance)
    assert closed.status_code == 201, closed.text
    assert closed.json()["month"] == last_month
    twice = api(live_shop, "POST", f"/finance/months/{last_month}/close", finance)
    assert twice.status_code == 409, twice.text
    assert twice.json()["error"]["code"] == "month_closed"
    with live_shop.app.app_context():
        with pytest.raises(Conflict) as again:
            close_month(db.session, last_month, finance_user())
        assert again.value.status == 409
        db.session.rollback()
        assert db.session.scalars(select(ClosedMonth.month)).all() == [last_month]


# --- Asia/Shanghai days -----------------------------------------------------------------------


def test_a_payment_at_2330_utc_on_a_months_last_day_belongs_to_the_next_shanghai_month(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    month = first_of_month(shanghai_now(), 2)
    last = last_day(month)
    late_evening = datetime(last.year, last.month, last.day, 23, 30, tzinfo=UTC)
    following = last + timedelta(days=1)
    order = place(live_shop, buyer, [("PA-TEA-001", 1)])
    pay_as_if_at(live_shop, order, late_evening)
    (entry,) = payment_entries(live_shop, order["number"])
    assert entry.day == following and following.day == 1
    assert entry.occurred_at == late_evening
    with live_shop.app.app_context():
        window = {"start": month, "end": last_day(following)}
        by_month = totals(db.session, group_by=["month"], **window).rows
        by_day = totals(db.session, group_by=["day"], **window).rows
        only_the_month = totals(db.session, start=month, end=last, group_by=[])
    assert [(r["month"], r["amount_fen"]) for r in by_month] == [(f"{following:%Y-%m}", 12800)]
    assert [(r["day"], r["amount_fen"]) for r in by_day] == [(str(following), 12800)]
    assert only_the_month.total_fen == 0


def test_every_row_counts_an_order_once_whatever_the_grouping(live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer, [("PA-TEA-001", 1), ("PA-TEA-002", 2), ("CH-BN-001", 1)])
    pay(live_shop, order)

    def rows(*group_by: str) -> dict[tuple[str, ...], tuple[int, int]]:
        found = year_totals(group_by=list(group_by)).rows
        return {tuple(r[g] for g in group_by): (r["orders"], r["lines"]) for r in found}

    with live_shop.app.app_context():
        for rolled_up in (False, True):
            if rolled_up:
                rollup(db.session)
            assert rows() == {(): (1, 3)}
            assert rows("month") == {(f"{shanghai_now():%Y-%m}",): (1, 3)}
            assert rows("county") == {("册亨县",): (1, 1), ("普安县",): (1, 2)}
            assert rows("category") == {("水果",): (1, 1), ("茶叶",): (1, 2)}
            assert rows("county", "category") == {
                ("册亨县", "水果"): (1, 1),
                ("普安县", "茶叶"): (1, 2),
            }
            assert rows("district", "channel") == {("惠城区", "online"): (1, 3)}
            # three lines from three suppliers: the order is in each supplier's row once
            assert sorted(rows("supplier").values()) == [(1, 1), (1, 1), (1, 1)]
