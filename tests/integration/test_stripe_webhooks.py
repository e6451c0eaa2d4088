"""Stripe's word, through real webhooks from the emulator: verified, applied once, in any order."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import requests
from sqlalchemy import func, select

from shop.extensions import db
from shop.ledger.models import LedgerEntry
from shop.orders.models import Order, Refund, StatusChange
from shop.payments.models import StripeEvent
from tests.conftest import HUIZHOU_ADDRESS, LiveShop, signed


def place(
    live: LiveShop, headers: dict[str, str], sku: str = "PA-TEA-001", quantity: int = 1
) -> dict[str, Any]:
    response = requests.post(
        f"{live.url}/api/v1/orders",
        headers=headers,
        timeout=30,
        json={"lines": [{"sku": sku, "quantity": quantity}], "address": HUIZHOU_ADDRESS},
    )
    assert response.status_code == 201, response.text
    return response.json()


def session_id(order: dict[str, Any]) -> str:
    return order["checkout_url"].rstrip("/").rsplit("/", 1)[-1]


def get_order(live: LiveShop, headers: dict[str, str], number: str) -> dict[str, Any]:
    return requests.get(f"{live.url}/api/v1/orders/{number}", headers=headers, timeout=10).json()


def events_for(live: LiveShop, number: str, payment_intent: str) -> list[dict[str, Any]]:
    client = live.app.extensions["stripe"]
    found = []
    for event in client.v1.events.list({"limit": 100}).auto_paging_iter():
        obj = event.to_dict()["data"]["object"]
        linked = (
            (obj.get("metadata") or {}).get("order_number") == number
            or obj.get("payment_intent") == payment_intent
            or obj.get("id") == payment_intent
        )
        if linked:
            found.append(event.to_dict())
    return found


def post_event(live: LiveShop, event: dict[str, Any], **sign: Any) -> requests.Response:
    payload = json.dumps(event).encode()
    return requests.post(
        f"{live.url}/api/v1/stripe/webhook",
        data=payload,
        timeout=10,
        headers={"Stripe-Signature": signed(payload, **sign), "Content-Type": "application/json"},
    )


def transitions_to(live: LiveShop, number: str, status: str) -> int:
    with live.app.app_context():
        return db.session.scalar(
            select(func.count())
            .select_from(StatusChange)
            .join(Order)
            .where(Order.number == number, StatusChange.to_status == status)
        )


def test_paying_on_the_hosted_page_marks_the_order_paid(live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer)
    live_shop.control(f"checkout/sessions/{session_id(order)}/pay")
    live_shop.wait_for_webhooks()
    paid = get_order(live_shop, buyer, order["number"])
    assert paid["status"] == "paid"
    assert paid["paid_at"] is not None
    assert paid["checkout_url"] is None
    assert transitions_to(live_shop, order["number"], "paid") == 1


def test_a_declined_card_leaves_the_order_awaiting_payment(live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer)
    live_shop.control(f"checkout/sessions/{session_id(order)}/decline")
    live_shop.wait_for_webhooks()
    assert get_order(live_shop, buyer, order["number"])["status"] == "awaiting_payment"


def test_webhooks_replayed_five_times_and_shuffled_change_state_once(live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer)
    live_shop.control("webhooks", drop_next=1000)
    live_shop.control(f"checkout/sessions/{session_id(order)}/pay")
    live_shop.wait_for_webhooks()
    assert get_order(live_shop, buyer, order["number"])["status"] == "awaiting_payment"
    with live_shop.app.app_context():
        pi = db.session.scalar(select(Order.stripe_payment_intent_id))
    events = events_for(live_shop, order["number"], pi)
    assert {"checkout.session.completed", "payment_intent.succeeded"} <= {e["type"] for e in events}
    deliveries = events * 5
    random.Random(7).shuffle(deliveries)
    changed = [post_event(live_shop, e).json()["changed"] for e in deliveries]
    assert changed.count(True) == 1
    assert get_order(live_shop, buyer, order["number"])["status"] == "paid"
    assert transitions_to(live_shop, order["number"], "paid") == 1
    with live_shop.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(StripeEvent)) == len(events)


def test_duplicate_deliveries_from_stripe_itself_are_harmless(live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer)
    live_shop.control(f"checkout/sessions/{session_id(order)}/pay")
    live_shop.wait_for_webhooks()
    with live_shop.app.app_context():
        pi = db.session.scalar(select(Order.stripe_payment_intent_id))
    for event in events_for(live_shop, order["number"], pi):
        live_shop.control(f"events/{event['id']}/deliver", times=5)
    live_shop.wait_for_webhooks()
    assert get_order(live_shop, buyer, order["number"])["status"] == "paid"
    assert transitions_to(live_shop, order["number"], "paid") == 1


def test_forged_stale_or_missing_signatures_are_400_and_change_nothing(live_shop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer)
    with live_shop.app.app_context():
        pi = db.session.scalar(select(Order.stripe_payment_intent_id))
    event = {
        "id": "evt_forged_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": pi,
                "object": "payment_intent",
                "amount_received": order["total_fen"],
                "metadata": {"order_number": order["number"]},
            }
        },
    }
    assert post_event(live_shop, event, secret="whsec_someone_else").status_code == 400
    assert post_event(live_shop, event, at=int(time.time()) - 3600).status_code == 400
    payload = json.dumps(event).encode()
    bare = requests.post(f"{live_shop.url}/api/v1/stripe/webhook", data=payload, timeout=10)
    assert bare.status_code == 400
    assert bare.json()["error"]["code"] == "invalid_signature"
    tampered = requests.post(
        f"{live_shop.url}/api/v1/stripe/webhook",
        data=payload.replace(b"evt_forged_1", b"evt_x"),
        headers={"Stripe-Signature": signed(payload)},
        timeout=10,
    )
    assert tampered.status_code == 400
    for body in (b"{not json", b"[1, 2]", b'{"type": "payment_intent.succeeded"}'):
        signed_but_no_event = requests.post(
            f"{live_shop.url}/api/v1/stripe/webhook",
            data=body,
            headers={"Stripe-Signature": signed(body)},
            timeout=10,
        )
        assert signed_but_no_event.status_code == 400, body
        assert signed_but_no_event.json()["error"]["code"] == "invalid_event"
    assert get_order(live_shop, buyer, order["number"])["status"] == "awaiting_payment"
    with live_shop.app.app_context():
        stored = db.session.scalars(select(StripeEvent.id)).all()
    assert not {"evt_forged_1", "evt_x"} & set(stored)


def test_a_refund_event_before_the_payment_event_leaves_a_consistent_order(live_shop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer, quantity=2)
    live_shop.control("webhooks", drop_next=1000)
    live_shop.control(f"checkout/sessions/{session_id(order)}/pay")
    with live_shop.app.app_context():
        pi = db.session.scalar(select(Order.stripe_payment_intent_id))
    stripe_client = live_shop.app.extensions["stripe"]
    stripe_client.v1.refunds.create({"payment_intent": pi, "amount": 5000})
    live_shop.wait_for_webhooks()
    events = events_for(live_shop, order["number"], pi)  # newest first, as Stripe lists them
    assert events[0]["type"] in ("charge.refunded", "refund.created")
    for event in events + events:
        assert post_event(live_shop, event).status_code == 200
    final = get_order(live_shop, buyer, order["number"])
    assert final["status"] == "partially_refunded"
    assert final["refunded_fen"] == 5000
    assert transitions_to(live_shop, order["number"], "paid") == 1
    with live_shop.app.app_context():
        refunds = db.session.scalars(select(Refund)).all()
        assert [(r.kind, r.amount_fen, r.status) for r in refunds] == [
            ("external", 5000, "succeeded")
        ]


def test_a_payment_in_another_currency_does_not_mark_the_order_paid(live_shop) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer)
    with live_shop.app.app_context():
        pi = db.session.scalar(select(Order.stripe_payment_intent_id))
    event = {
        "id": "evt_usd_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": pi,
                "object": "payment_intent",
                "amount_received": order["total_fen"],
                "currency": "usd",
                "metadata": {"order_number": order["number"]},
            }
        },
    }
    assert post_event(live_shop, event).json()["changed"] is False
    assert get_order(live_shop, buyer, order["number"])["status"] == "awaiting_payment"
    with live_shop.app.app_context():
        assert db.session.scalar(select(func.count(LedgerEntry.id))) == 0


def test_a_refund_event_for_a_cancelled_order_is_acknowledged_and_changes_nothing(
    live_shop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    order = place(live_shop, buyer)
    cancelled = requests.post(
        f"{live_shop.url}/api/v1/orders/{order['number']}/cancel", headers=buyer, timeout=10
    )
    assert cancelled.status_code == 200, cancelled.text
    event = {
        "id": "evt_refund_after_cancel",
        "object": "event",
        "type": "refund.created",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": "re_after_cancel",
                "object": "refund",
                "amount": order["total_fen"],
                "status": "succeeded",
                "created": int(time.time()),
                "metadata": {"order_number": order["number"]},
            }
        },
    }
    answer = post_event(live_shop, event)
    assert answer.status_code == 200 and answer.json()["changed"] is False
    assert get_order(live_shop, buyer, order["number"])["status"] == "cancelled"
    with live_shop.app.app_context():
        assert db.session.scalar(select(func.count(Refund.id))) == 0
        assert db.session.scalar(select(func.count(LedgerEntry.id))) == 0
