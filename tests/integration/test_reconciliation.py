"""Reconciliation against the Stripe emulator: missed webhooks repaired, disagreements recorded."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import requests
from sqlalchemy import func, select

from shop.accounts.models import AuditEntry
from shop.extensions import db
from shop.ledger.models import Cursor, LedgerEntry, Source
from shop.orders.models import Order, Refund, StatusChange
from shop.reconciliation.models import Discrepancy
from shop.reconciliation.services import LISTS, reconcile_payments
from tests.conftest import HUIZHOU_ADDRESS, LiveShop, signed

# Two certified lines under the free-shipping threshold: 39.00 + 39.00 goods, 10.00 shipping.
SMALL_BASKET = [{"sku": "AL-MS-002", "quantity": 1}, {"sku": "ZF-HJ-001", "quantity": 1}]
TEA_AND_RICE = [{"sku": "PA-TEA-001", "quantity": 1}, {"sku": "XR-YR-001", "quantity": 2}]


def api(live: LiveShop, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    return requests.request(method, f"{live.url}/api/v1{path}", headers=headers, timeout=120, **kw)


def place(live: LiveShop, lines: list[dict[str, Any]] = TEA_AND_RICE) -> dict[str, Any]:
    buyer = live.token("buyer@example.com")
    response = api(
        live, "POST", "/orders", buyer, json={"lines": lines, "address": HUIZHOU_ADDRESS}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def session_of(order: dict[str, Any]) -> str:
    return str(order["checkout_url"]).rstrip("/").rsplit("/", 1)[-1]


def pay_unheard(live: LiveShop, order: dict[str, Any]) -> dict[str, Any]:
    """Pay at Stripe with every webhook dropped; the emulator's answer (intent, charge)."""
    live.control("webhooks", drop_next=1000)
    paid = live.control(f"checkout/sessions/{session_of(order)}/pay")
    live.wait_for_webhooks()
    return dict(paid)


def reconcile(live: LiveShop, **options: Any) -> dict[str, int]:
    with live.app.app_context():
        return reconcile_payments(db.session, live.app.extensions["stripe"], **options)


def stored(live: LiveShop, number: str) -> Order:
    with live.app.app_context():
        order = db.session.scalar(select(Order).where(Order.number == number))
        assert order is not None
        db.session.expunge(order)
        return order


def entries(live: LiveShop, number: str, source: Source) -> list[tuple[int, int]]:
    """(order line, amount) of the order's ledger entries from one kind of source."""
    with live.app.app_context():
        rows = db.session.execute(
            select(LedgerEntry.order_line_id, LedgerEntry.amount_fen)
            .where(LedgerEntry.reference == number, LedgerEntry.source == source.value)
            .order_by(LedgerEntry.order_line_id)
        )
        return [(int(line or 0), int(amount)) for line, amount in rows]


def discrepancies(live: LiveShop, number: str) -> list[tuple[str, str, str, int | None]]:
    """(kind, status, Stripe object, Stripe's amount) recorded against one order."""
    with live.app.app_context():
        rows = db.session.execute(
            select(
                Discrepancy.kind,
                Discrepancy.status,
                Discrepancy.stripe_object,
                Discrepancy.stripe_fen,
            )
            .where(Discrepancy.order_number == number)
            .order_by(Discrepancy.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def paid_transitions(live: LiveShop, number: str) -> int:
    with live.app.app_context():
        return int(
            db.session.scalar(
                select(func.count())
                .select_from(StatusChange)
                .join(Order)
                .where(Order.number == number, StatusChange.to_status == "paid")
            )
            or 0
        )


def test_a_dropped_webhook_is_repaired_once_with_stripes_payment_time(live_shop) -> None:
    order = place(live_shop)
    paid = pay_unheard(live_shop, order)
    assert stored(live_shop, order["number"]).status == "awaiting_payment"

    report = reconcile(live_shop)

    after = stored(live_shop, order["number"])
    assert after.status == "paid"
    assert after.paid_at is not None
    assert int(after.paid_at.timestamp()) == paid["charge"]["created"]
    assert report["repaired"] >= 1
    lines = entries(live_shop, order["number"], Source.PAYMENT)
    assert len(lines) == 2
    assert sum(amount for _line, amount in lines) == order["goods_fen"]
    intent = paid["payment_intent"]["id"]
    assert discrepancies(live_shop, order["number"]) == [
        ("paid_at_stripe_not_in_shop", "repaired", intent, order["total_fen"])
    ]
    reconcile(live_shop)
    assert entries(live_shop, order["number"], Source.PAYMENT) == lines
    assert paid_transitions(live_shop, order["number"]) == 1


def test_an_amount_altered_at_stripe_is_an_open_discrepancy_and_pays_nothing(live_shop) -> None:
    order = place(live_shop)
    paid = pay_unheard(live_shop, order)
    intent = paid["payment_intent"]["id"]
    live_shop.control(f"payment_intents/{intent}/amount", amount=order["total_fen"] - 100)

    reconcile(live_shop)

    assert stored(live_shop, order["number"]).status == "awaiting_payment"
    assert entries(live_shop, order["number"], Source.PAYMENT) == []
    assert discrepancies(live_shop, order["number"]) == [
        ("amount_differs", "open", intent, order["total_fen"] - 100)
    ]


def test_a_refund_made_directly_at_stripe_is_recorded_with_its_goods_part(live_shop) -> None:
    order = place(live_shop, SMALL_BASKET)
    assert order["shipping_fen"] == 1000
    live_shop.control(f"checkout/sessions/{session_of(order)}/pay")
    live_shop.wait_for_webhooks()
    assert stored(live_shop, order["number"]).status == "paid"
    live_shop.control("webhooks", drop_next=1000)
    intent = stored(live_shop, order["number"]).stripe_payment_intent_id
    refund = live_shop.app.extensions["stripe"].v1.refunds.create({"payment_intent": intent})
    live_shop.wait_for_webhooks()
    assert stored(live_shop, order["number"]).refunded_fen == 0

    reconcile(live_shop)

    after = stored(live_shop, order["number"])
    assert (after.status, after.refunded_fen) == ("refunded", order["total_fen"])
    with live_shop.app.app_context():
        refunds = db.session.scalars(select(Refund).where(Refund.order_id == after.id)).all()
        assert [(r.kind, r.amount_fen, r.status, r.stripe_refund_id) for r in refunds] == [
            ("external", order["total_fen"], "succeeded", refund["id"])
        ]
    negative = entries(live_shop, order["number"], Source.REFUND)
    assert len(negative) == 2
    assert all(amount < 0 for _line, amount in negative)
    # Shipping never entered the ledger, so only the goods part comes off it.
    assert sum(amount for _line, amount in negative) == -order["goods_fen"]
    assert discrepancies(live_shop, order["number"]) == [
        ("refund_differs", "repaired", refund["id"], order["total_fen"])
    ]


def test_an_order_paid_in_the_shop_but_not_at_stripe_is_reported(live_shop) -> None:
    order = place(live_shop)
    intent = stored(live_shop, order["number"]).stripe_payment_intent_id
    forged = {
        "id": "evt_forged_paid",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": session_of(order),
                "object": "checkout.session",
                "payment_status": "paid",
                "amount_total": order["total_fen"],
                "currency": "cny",
                "payment_intent": intent,
                "metadata": {"order_number": order["number"]},
            }
        },
    }
    payload = json.dumps(forged).encode()
    posted = requests.post(
        f"{live_shop.url}/api/v1/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": signed(payload), "Content-Type": "application/json"},
        timeout=10,
    )
    assert posted.status_code == 200, posted.text
    assert stored(live_shop, order["number"]).status == "paid"

    reconcile(live_shop)

    assert discrepancies(live_shop, order["number"]) == [
        ("paid_in_shop_not_at_stripe", "open", intent, 0)
    ]


def test_a_payment_in_another_currency_is_reported_and_not_taken_as_payment(live_shop) -> None:
    order = place(live_shop)
    stripe = live_shop.app.extensions["stripe"]
    foreign = stripe.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": order["total_fen"],
                        "product_data": {"name": "tea"},
                    },
                    "quantity": 1,
                }
            ],
            "payment_intent_data": {"metadata": {"order_number": order["number"]}},
            "metadata": {"order_number": order["number"]},
        }
    )
    live_shop.control("webhooks", drop_next=1000)
    live_shop.control(f"checkout/sessions/{foreign['id']}/pay")

    reconcile(live_shop)

    assert stored(live_shop, order["number"]).status == "awaiting_payment"
    assert discrepancies(live_shop, order["number"]) == [
        ("currency_differs", "open", foreign["payment_intent"], order["total_fen"])
    ]


def test_a_charge_after_its_window_is_found_through_its_balance_transaction(live_shop) -> None:
    order = place(live_shop)
    time.sleep(1.1)  # the session and its intent now lie before the cursors set below
    paid = pay_unheard(live_shop, order)
    charged = int(paid["charge"]["created"])
    with live_shop.app.app_context():
        for kind in LISTS:
            db.session.add(Cursor(name=f"reconcile.{kind}", position=charged))
        db.session.commit()

    reconcile(live_shop, overlap_seconds=0)

    assert stored(live_shop, order["number"]).status == "paid"
    assert [d[:2] for d in discrepancies(live_shop, order["number"])] == [
        ("paid_at_stripe_not_in_shop", "repaired")
    ]


def test_an_invoice_paid_at_stripe_without_its_webhook_is_repaired(live_shop) -> None:
    officer, approver = (
        live_shop.token("officer@example.com"),
        live_shop.token("approver@example.com"),
    )
    text = (
        "SKU,数量,收货人,电话,收货地址,区县\nXR-YR-001,30,食堂,13800138001,文昌一路 8 号,惠城区\n"
    )
    draft = api(
        live_shop,
        "POST",
        "/procurement/orders",
        officer,
        files={"file": ("order.csv", text.encode(), "text/csv")},
    )
    assert draft.status_code == 201, draft.text
    oid = draft.json()["id"]
    api(live_shop, "POST", f"/procurement/orders/{oid}/submit", officer)
    approved = api(live_shop, "POST", f"/procurement/orders/{oid}/approve", approver).json()
    assert approved["status"] == "awaiting_payment"
    invoice = stored(live_shop, approved["number"]).stripe_invoice_id
    live_shop.control("webhooks", drop_next=1000)
    paid = live_shop.control(f"invoices/{invoice}/pay")
    live_shop.wait_for_webhooks()

    reconcile(live_shop)

    after = stored(live_shop, approved["number"])
    assert after.status == "paid"
    assert after.paid_at is not None
    assert int(after.paid_at.timestamp()) == paid["invoice"]["status_transitions"]["paid_at"]
    assert after.stripe_payment_intent_id == paid["payment_intent"]["id"]
    assert discrepancies(live_shop, approved["number"]) == [
        ("paid_at_stripe_not_in_shop", "repaired", invoice, approved["total_fen"])
    ]


def test_reconciling_twice_changes_nothing_the_second_time(live_shop) -> None:
    dropped, altered, refunded = place(live_shop), place(live_shop), place(live_shop, SMALL_BASKET)
    pay_unheard(live_shop, dropped)
    intent = pay_unheard(live_shop, altered)["payment_intent"]["id"]
    live_shop.control(f"payment_intents/{intent}/amount", amount=1)
    live_shop.control("webhooks", drop_next=0)
    live_shop.control(f"checkout/sessions/{session_of(refunded)}/pay")
    live_shop.wait_for_webhooks()
    live_shop.control("webhooks", drop_next=1000)
    live_shop.app.extensions["stripe"].v1.refunds.create(
        {"payment_intent": stored(live_shop, refunded["number"]).stripe_payment_intent_id}
    )
    live_shop.wait_for_webhooks()

    first = reconcile(live_shop)
    with live_shop.app.app_context():
        counts = [
            db.session.scalar(select(func.count()).select_from(table))
            for table in (LedgerEntry, Discrepancy, StatusChange, Refund)
        ]
    second = reconcile(live_shop)

    assert first["repaired"] >= 2
    assert (second["repaired"], second["discrepancies_opened"], second["failed"]) == (0, 0, 0)
    with live_shop.app.app_context():
        assert counts == [
            db.session.scalar(select(func.count()).select_from(table))
            for table in (LedgerEntry, Discrepancy, StatusChange, Refund)
        ]


def test_two_reconciliations_at_once_repair_each_order_once(live_shop) -> None:
    orders = [place(live_shop) for _ in range(4)]
    for order in orders:
        pay_unheard(live_shop, order)
    reports: list[dict[str, int]] = []

    def run() -> None:
        reports.append(reconcile(live_shop))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(reports) == 2
    assert sum(report["failed"] for report in reports) == 0
    for order in orders:
        assert paid_transitions(live_shop, order["number"]) == 1
        assert len(entries(live_shop, order["number"], Source.PAYMENT)) == 2
        assert [d[:2] for d in discrepancies(live_shop, order["number"])] == [
            ("paid_at_stripe_not_in_shop", "repaired")
        ]


def test_finance_lists_and_resolves_discrepancies_others_may_not(live_shop, celery_worker) -> None:
    order = place(live_shop)
    pay_unheard(live_shop, order)
    finance = live_shop.token("finance@example.com")
    buyer = live_shop.token("buyer@example.com")

    assert api(live_shop, "POST", "/finance/reconcile", {}).status_code == 401
    assert api(live_shop, "POST", "/finance/reconcile", buyer).status_code == 403
    ran = api(live_shop, "POST", "/finance/reconcile", finance)
    assert ran.status_code == 200, ran.text
    assert ran.json()["repaired"] >= 1

    assert api(live_shop, "GET", "/finance/discrepancies", {}).status_code == 401
    assert api(live_shop, "GET", "/finance/discrepancies", buyer).status_code == 403
    assert api(live_shop, "GET", "/finance/discrepancies?status=bogus", finance).status_code == 422
    listed = api(live_shop, "GET", "/finance/discrepancies?status=repaired", finance).json()
    mine = [d for d in listed["discrepancies"] if d["order_number"] == order["number"]]
    assert [(d["kind"], d["status"], d["stripe_fen"]) for d in mine] == [
        ("paid_at_stripe_not_in_shop", "repaired", order["total_fen"])
    ]
    found = mine[0]
    assert found["currency"] == "cny" and found["resolved_at"] is None and found["note"] == ""

    resolve = f"/finance/discrepancies/{found['id']}/resolve"
    assert api(live_shop, "POST", resolve, {}, json={"note": "x"}).status_code == 401
    assert api(live_shop, "POST", resolve, buyer, json={"note": "x"}).status_code == 403
    blank = api(live_shop, "POST", resolve, finance, json={"note": "  "})
    assert blank.status_code == 422
    assert blank.json()["error"]["details"] == [{"field": "note"}]
    missing = api(
        live_shop, "POST", "/finance/discrepancies/999999/resolve", finance, json={"note": "x"}
    )
    assert missing.status_code == 404
    done = api(live_shop, "POST", resolve, finance, json={"note": "已核对 Stripe 收款记录"})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "resolved"
    assert done.json()["note"] == "已核对 Stripe 收款记录"
    assert done.json()["resolved_at"] is not None
    again = api(live_shop, "POST", resolve, finance, json={"note": "再次处理"})
    assert again.status_code == 409
    assert api(live_shop, "GET", "/finance/discrepancies?status=resolved", finance).json()[
        "discrepancies"
    ] == [done.json()]
    with live_shop.app.app_context():
        audited = db.session.scalars(
            select(AuditEntry).where(AuditEntry.action == "discrepancy.resolve")
        ).all()
        assert [(a.target, a.after["note"]) for a in audited] == [
            (f"discrepancy:{found['id']}", "已核对 Stripe 收款记录")
        ]
