"""Checkout through Stripe, refunds, and the effects of Stripe's webhook events on orders."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from shop.accounts.models import User
from shop.accounts.services import audit
from shop.db import DbSession, utcnow
from shop.errors import Conflict, InvalidInput, ServiceUnavailable
from shop.ledger.services import recognise_order, recognise_refund
from shop.orders.models import Order, OrderLine, Refund, RefundLine, Status
from shop.orders.services import (
    Address,
    RequestedLine,
    ShippingRule,
    cancellation_reason,
    expired_unpaid,
    get_order,
    place_order,
    transition,
)
from shop.payments.models import StripeEvent

log = logging.getLogger(__name__)

REFUNDABLE = frozenset({Status.PAID, Status.SHIPPED, Status.COMPLETED, Status.PARTIALLY_REFUNDED})
# Stripe wants a Checkout Session to live between 30 minutes and 24 hours.
SESSION_MIN_LIFETIME = timedelta(minutes=31)
SESSION_MAX_LIFETIME = timedelta(hours=23)

STRIPE_UNAVAILABLE = "支付服务暂时不可用，请稍后重试。"


class AlreadyPaid(Conflict):
    code = "already_paid"


class InvalidSignature(Exception):
    """A webhook whose Stripe-Signature does not verify, or is too old."""


class InvalidEvent(Exception):
    """A signed webhook whose body is not a Stripe event."""


def idempotency_key(action: str, order: Order) -> str:
    """A key derived from our ids alone: a retry reuses it, nothing else ever does.

    The order's creation instant goes in too, so that a second database (staging, a restore)
    sharing a Stripe account cannot collide with an order number it also issued.
    """
    return f"{action}-{order.number}-{order.created_at.timestamp():.6f}"


def checkout_params(order: Order, config: Mapping[str, Any]) -> dict[str, Any]:
    base = config["SHOP_BASE_URL"]
    methods: list[str] = list(config["STRIPE_PAYMENT_METHODS"])
    now = utcnow()
    expires_at = order.expires_at or now
    expires_at = min(max(expires_at, now + SESSION_MIN_LIFETIME), now + SESSION_MAX_LIFETIME)
    line_items: list[dict[str, Any]] = [
        {
            "price_data": {
                "currency": "cny",
                "unit_amount": line.unit_price_fen,
                "product_data": {"name": f"{line.name}（{line.pack}）"},
            },
            "quantity": line.quantity,
        }
        for line in order.lines
    ]
    if order.shipping_fen:
        line_items.append(
            {
                "price_data": {
                    "currency": "cny",
                    "unit_amount": order.shipping_fen,
                    "product_data": {"name": "运费"},
                },
                "quantity": 1,
            }
        )
    metadata = {"order_number": order.number, "order_id": str(order.id)}
    params: dict[str, Any] = {
        "mode": "payment",
        "currency": "cny",
        "line_items": line_items,
        "payment_method_types": methods,
        "success_url": f"{base}/orders/{order.number}/confirmation"
        "?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": f"{base}/orders/{order.number}",
        "client_reference_id": order.number,
        "customer_email": order.user.email,
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "expires_at": int(expires_at.timestamp()),
    }
    if "wechat_pay" in methods:
        params["payment_method_options"] = {"wechat_pay": {"client": "web"}}
    return params


def open_checkout(client: stripe.StripeClient, order: Order, config: Mapping[str, Any]) -> None:
    """Create the Checkout Session of a reserved order (idempotent per order)."""
    checkout = client.v1.checkout.sessions.create(
        params=checkout_params(order, config),  # type: ignore[arg-type]
        options={"idempotency_key": idempotency_key("checkout-session", order)},
    )
    order.stripe_checkout_session_id = checkout.id
    order.checkout_url = checkout.url
    payment_intent = checkout.payment_intent
    if isinstance(payment_intent, str):
        order.stripe_payment_intent_id = payment_intent


def close_checkout(client: stripe.StripeClient, order: Order) -> bool:
    """Expire the order's Checkout Session so it can no longer be paid.

    False when the customer has already paid it: the order must then not be cancelled.
    """
    if order.stripe_checkout_session_id is None:
        return True
    try:
        client.v1.checkout.sessions.expire(order.stripe_checkout_session_id)
    except stripe.InvalidRequestError:
        current = client.v1.checkout.sessions.retrieve(order.stripe_checkout_session_id)
        return current["status"] != "complete"
    return True


def cancel_unpaid(
    session: DbSession,
    client: stripe.StripeClient,
    order: Order,
    *,
    actor: User | None,
    reason: str,
) -> bool:
    """Cancel an order that is still awaiting payment; its stock returns. False if it got paid."""
    if order.status != Status.AWAITING_PAYMENT:
        transition(session, order, Status.CANCELLED, actor=actor, reason=reason)
        return True
    try:
        closed = close_checkout(client, order)
    except stripe.StripeError as exc:
        log.warning("could not expire checkout session of order %s: %s", order.number, exc)
        raise ServiceUnavailable(STRIPE_UNAVAILABLE) from exc
    if not closed:
        return False
    transition(session, order, Status.CANCELLED, actor=actor, reason=reason)
    return True


def checkout(
    session: DbSession,
    client: stripe.StripeClient,
    user: User,
    requested: Sequence[RequestedLine],
    address: Address,
    config: Mapping[str, Any],
) -> Order:
    """Reserve an order, then open its Stripe Checkout Session.

    The reservation is committed before Stripe is called, so no row lock is held across the
    network. If Stripe fails, the order is cancelled and its stock returns before we answer 503.
    """
    order = place_order(
        session,
        user,
        requested,
        address,
        shipping=ShippingRule.from_config(config),
        payment_minutes=config["ORDER_PAYMENT_MINUTES"],
        max_quantity=config["ORDER_MAX_QUANTITY"],
    )
    session.commit()
    try:
        open_checkout(client, order, config)
    except stripe.StripeError as exc:
        session.rollback()
        log.warning("checkout session for order %s failed: %s", order.number, exc)
        order = get_order(session, order.number, lock=True)
        transition(session, order, Status.CANCELLED, reason="支付服务不可用，预留库存已退回")
        session.commit()
        raise ServiceUnavailable(STRIPE_UNAVAILABLE) from exc
    session.commit()
    return order


def expire_unpaid_orders(session: DbSession, client: stripe.StripeClient, now: datetime) -> int:
    """Cancel online orders whose payment window has passed; returns how many were cancelled.

    An order Stripe cannot be reached for is left for the next run; one that was paid in the
    meantime is left for its payment event.
    """
    cancelled = 0
    for number in [order.number for order in expired_unpaid(session, now)]:
        order = get_order(session, number, lock=True)
        if order.status != Status.AWAITING_PAYMENT:
            session.rollback()
            continue
        try:
            done = cancel_unpaid(
                session, client, order, actor=None, reason="超时未支付，库存已退回"
            )
        except ServiceUnavailable:
            session.rollback()
            continue
        session.commit()
        cancelled += int(done)
    return cancelled


def cancel_order(session: DbSession, client: stripe.StripeClient, order: Order, user: User) -> None:
    """The buyer (or operations) cancels an unpaid order; refused once it is paid."""
    reason = cancellation_reason(order, user)
    before = {"status": order.status}
    if not cancel_unpaid(session, client, order, actor=user, reason=reason):
        raise AlreadyPaid(f"订单 {order.number} 已支付，不能取消。")
    if order.user_id != user.id:
        audit(
            session,
            user,
            "order.cancel",
            order.number,
            before=before,
            after={"status": order.status, "reason": reason},
        )


# --- payments ---------------------------------------------------------------------------------


def recognise_payment(
    session: DbSession,
    order: Order,
    *,
    payment_intent: str | None,
    amount_fen: int,
    source: str,
    paid_at: datetime | None = None,
    currency: str = "cny",
) -> bool:
    """Mark an order paid and write its ledger entries, in one transaction. Idempotent.

    `paid_at` is when the money moved (Stripe's event time, the bank's transfer date); the
    ledger dates the entries by it. A payment of another amount or in another currency is left
    for reconciliation to report. False when nothing changed.
    """
    if order.status != Status.AWAITING_PAYMENT:
        if order.status == Status.CANCELLED:
            log.error("payment %s arrived for cancelled order %s", payment_intent, order.number)
        return False
    if amount_fen != order.total_fen or currency.lower() != order.currency:
        log.error(
            "payment %s of %s %s does not match order %s total %s %s; left for reconciliation",
            payment_intent,
            amount_fen,
            currency,
            order.number,
            order.total_fen,
            order.currency,
        )
        return False
    if payment_intent:
        order.stripe_payment_intent_id = payment_intent
    order.paid_at = min(paid_at, utcnow()) if paid_at else utcnow()
    order.expires_at = None
    transition(session, order, Status.PAID, reason=source)
    recognise_order(session, order)
    return True


# --- refunds ----------------------------------------------------------------------------------


def _pending_fen(order: Order) -> int:
    return sum(r.amount_fen for r in order.refunds if r.status == "pending")


def plan_refund(
    order: Order,
    *,
    amount_fen: int | None,
    lines: Sequence[tuple[str, int]] | None,
    actor: User,
    reason: str,
) -> Refund:
    """Work out what a refund gives back, refusing anything beyond what was paid."""
    if order.status not in REFUNDABLE:
        raise Conflict(
            f"订单 {order.number} 当前状态为 {order.status}，不能退款。", code="invalid_transition"
        )
    available = order.refundable_fen - _pending_fen(order)
    refund = Refund(order_id=order.id, created_by=actor.id, reason=reason)
    if lines:
        by_sku = {line.sku: line for line in order.lines}
        problems: list[dict[str, Any]] = []
        for index, (sku, quantity) in enumerate(lines):
            line = by_sku.get(sku)
            if line is None:
                problems.append(
                    {"field": f"lines[{index}].sku", "message": f"订单中没有商品 {sku}。"}
                )
                continue
            left = line.quantity - line.refunded_quantity - _pending_quantity(order, line)
            if quantity <= 0 or quantity > left:
                problems.append(
                    {
                        "field": f"lines[{index}].quantity",
                        "message": f"{sku} 最多还能退 {left} 件。",
                    }
                )
                continue
            refund.lines.append(
                RefundLine(
                    order_line=line, quantity=quantity, amount_fen=line.unit_price_fen * quantity
                )
            )
        if problems:
            raise InvalidInput("退款商品有误。", details=problems)
        refund.kind = "lines"
        refund.amount_fen = sum(rl.amount_fen for rl in refund.lines)
    elif amount_fen is not None:
        if amount_fen <= 0 or amount_fen > available:
            raise InvalidInput(
                f"退款金额必须在 0.01 元到 {available / 100:.2f} 元之间。",
                details=[{"field": "amount_fen", "max": available}],
            )
        refund.kind = "amount"
        refund.amount_fen = amount_fen
    else:
        if available <= 0:
            raise Conflict(f"订单 {order.number} 已无可退金额。", code="nothing_to_refund")
        refund.kind = "full"
        refund.amount_fen = available
        for line in order.lines:
            left = line.quantity - line.refunded_quantity - _pending_quantity(order, line)
            if left > 0:
                refund.lines.append(
                    RefundLine(
                        order_line=line, quantity=left, amount_fen=line.unit_price_fen * left
                    )
                )
    if refund.amount_fen > available:
        raise InvalidInput(f"可退金额仅剩 {available / 100:.2f} 元。", details=[{"max": available}])
    return refund


def _pending_quantity(order: Order, line: OrderLine) -> int:
    return sum(
        rl.quantity
        for r in order.refunds
        if r.status == "pending"
        for rl in r.lines
        if rl.order_line_id == line.id
    )


def send_refund(client: stripe.StripeClient, refund: Refund) -> dict[str, Any]:
    """Ask Stripe for the refund. The key is our refund id, so a retry never refunds twice."""
    order = refund.order
    result = client.v1.refunds.create(
        params={
            "payment_intent": order.stripe_payment_intent_id or "",
            "amount": refund.amount_fen,
            "metadata": {"order_number": order.number, "refund_id": str(refund.id)},
        },
        options={"idempotency_key": idempotency_key(f"refund-{refund.id}", order)},
    )
    return {
        "id": result["id"],
        "status": result["status"],
        "amount": result["amount"],
        "metadata": {"refund_id": str(refund.id)},
    }


def apply_stripe_refund(
    session: DbSession,
    order: Order,
    stripe_refund: Mapping[str, Any],
    *,
    refunded_at: datetime | None = None,
) -> bool:
    """Reflect a refund Stripe reports in the order, once, whoever asked for it.

    Matched by our refund id in its metadata, else by Stripe's id; a refund made directly at
    Stripe becomes an `external` refund of the order. `refunded_at` is when Stripe refunded it
    (reconciliation finds refunds late); the ledger dates the entries by it.
    """
    refund_id = (stripe_refund.get("metadata") or {}).get("refund_id")
    refund = None
    if refund_id and str(refund_id).isdigit():
        refund = session.get(Refund, int(refund_id))
        if refund is not None and refund.order_id != order.id:
            refund = None
    if refund is None:
        refund = session.scalar(
            select(Refund).where(Refund.stripe_refund_id == stripe_refund["id"])
        )
    status = stripe_refund.get("status")
    if order.status == Status.CANCELLED:
        # Money came back for an order the shop cancelled: nothing to change here, and a 409
        # would only make Stripe retry for days. Reconciliation reports the payment.
        log.error("refund %s arrived for cancelled order %s", stripe_refund["id"], order.number)
        return False
    if refund is None:
        if status != "succeeded":
            return False
        refund = Refund(
            kind="external",
            amount_fen=stripe_refund["amount"],
            reason="在 Stripe 直接退款",
            status="pending",
        )
        order.refunds.append(refund)
    refund.stripe_refund_id = stripe_refund["id"]
    if refund.status != "pending":
        return False
    if status in ("failed", "canceled"):
        refund.status = "failed"
        return True
    if status != "succeeded":
        return False
    if order.status == Status.AWAITING_PAYMENT:
        # The refund event overtook the payment event: a refunded charge was a paid one.
        recognise_payment(
            session,
            order,
            payment_intent=order.stripe_payment_intent_id,
            amount_fen=order.total_fen,
            source="退款事件先于支付事件到达",
            paid_at=refunded_at,
        )
    refund.status = "succeeded"
    refund.succeeded_at = min(refunded_at, utcnow()) if refunded_at else utcnow()
    for refund_line in refund.lines:
        refund_line.order_line.refunded_quantity += refund_line.quantity
    order.refunded_fen += refund.amount_fen
    to = Status.REFUNDED if order.refunded_fen >= order.total_fen else Status.PARTIALLY_REFUNDED
    transition(session, order, to, reason=f"退款 {refund.amount_fen / 100:.2f} 元")
    recognise_refund(session, refund)
    return True


def refund(
    session: DbSession,
    client: stripe.StripeClient,
    number: str,
    *,
    actor: User,
    amount_fen: int | None,
    lines: Sequence[tuple[str, int]] | None,
    reason: str,
) -> Order:
    """Refund a paid order in full, by lines or by amount, through Stripe.

    The refund is recorded as pending before Stripe is asked, and Stripe is asked with our
    refund id as idempotency key: a refund left pending by an outage is re-sent with the same
    key on the next attempt (instead of the new request), so it can never be paid out twice.
    """
    order = get_order(session, number, lock=True)
    pending = [r for r in order.refunds if r.status == "pending"]
    if pending:
        # A refund an outage left unsent goes first, and alone: a person retrying after a 503
        # means that refund, not a second one.
        for earlier in pending:
            _submit(session, client, order, earlier)
        return order
    if order.stripe_payment_intent_id is None and order.status in REFUNDABLE:
        raise Conflict(
            f"订单 {order.number} 不是经 Stripe 付款的（例如对公转账），不能经 Stripe 退款，"
            "请线下退款。",
            code="not_paid_through_stripe",
        )
    refund_row = plan_refund(order, amount_fen=amount_fen, lines=lines, actor=actor, reason=reason)
    before = {"status": order.status, "refunded_fen": order.refunded_fen}
    order.refunds.append(refund_row)
    session.flush()
    audit(
        session,
        actor,
        "order.refund",
        order.number,
        before=before,
        after={
            "refund_id": refund_row.id,
            "kind": refund_row.kind,
            "amount_fen": refund_row.amount_fen,
            "lines": [[rl.order_line.sku, rl.quantity] for rl in refund_row.lines],
            "reason": refund_row.reason,
        },
    )
    session.commit()
    order = get_order(session, number, lock=True)
    _submit(session, client, order, refund_row)
    return order


def _submit(
    session: DbSession, client: stripe.StripeClient, order: Order, refund_row: Refund
) -> None:
    try:
        result = send_refund(client, refund_row)
    except stripe.InvalidRequestError as exc:
        refund_row.status = "failed"
        session.commit()
        raise Conflict(
            f"Stripe 拒绝了退款：{exc.user_message or exc}", code="refund_refused"
        ) from exc
    except stripe.StripeError as exc:
        session.rollback()
        log.warning("refund %s of order %s not sent: %s", refund_row.id, order.number, exc)
        raise ServiceUnavailable(STRIPE_UNAVAILABLE + "退款已记录，重试时不会重复退款。") from exc
    apply_stripe_refund(session, order, result)
    session.commit()


# --- webhooks ---------------------------------------------------------------------------------


def verify_webhook(
    payload: bytes, signature: str | None, secret: str, tolerance: int
) -> dict[str, Any]:
    try:
        stripe.WebhookSignature.verify_header(payload.decode(), signature or "", secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise InvalidSignature(str(exc)) from exc
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or "type" not in event:
        raise InvalidEvent("body is not an event object with an id and a type")
    return event


def _order_from_metadata(session: DbSession, obj: Mapping[str, Any]) -> Order | None:
    number = (obj.get("metadata") or {}).get("order_number") or obj.get("client_reference_id")
    payment_intent = stripe_id(obj.get("payment_intent"))
    if number:
        match = Order.number == number
    elif payment_intent:
        match = Order.stripe_payment_intent_id == payment_intent
    else:
        return None
    return session.scalar(
        select(Order).where(match).with_for_update().execution_options(populate_existing=True)
    )


def handle_stripe_event(session: DbSession, event: Mapping[str, Any]) -> bool:
    """Apply one verified event exactly once. False for an event already handled or ignored.

    The event id is stored in the same transaction as its effects, so a replay or a concurrent
    duplicate finds it (the primary key makes the second insert fail) and changes nothing.
    """
    session.add(StripeEvent(id=event["id"], type=event["type"]))
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        return False
    obj: Mapping[str, Any] = event["data"]["object"]
    kind = event["type"]
    happened = datetime.fromtimestamp(event["created"], UTC) if event.get("created") else None
    order = _order_from_metadata(session, obj)
    if order is None:
        log.info("stripe event %s (%s) matches no order", event["id"], kind)
        return False
    if kind == "checkout.session.completed" and obj.get("payment_status") == "paid":
        return recognise_payment(
            session,
            order,
            payment_intent=stripe_id(obj.get("payment_intent")),
            amount_fen=obj["amount_total"],
            source=kind,
            paid_at=happened,
            currency=obj.get("currency") or "cny",
        )
    if kind == "payment_intent.succeeded":
        return recognise_payment(
            session,
            order,
            payment_intent=obj["id"],
            amount_fen=obj["amount_received"],
            source=kind,
            paid_at=happened,
            currency=obj.get("currency") or "cny",
        )
    if kind == "invoice.paid":
        return recognise_payment(
            session,
            order,
            # A charged invoice's PaymentIntent is what a later refund goes through; one paid
            # out of band (a bank transfer) has none that holds money.
            payment_intent=None
            if obj.get("paid_out_of_band")
            else stripe_id(obj.get("payment_intent")),
            amount_fen=obj["amount_paid"],
            source=kind,
            paid_at=happened,
            currency=obj.get("currency") or "cny",
        )
    if kind == "checkout.session.expired" and order.status == Status.AWAITING_PAYMENT:
        transition(session, order, Status.CANCELLED, reason="支付会话已过期")
        return True
    if kind in ("refund.created", "refund.updated", "charge.refund.updated"):
        return apply_stripe_refund(session, order, obj, refunded_at=_created(obj) or happened)
    if kind == "charge.refunded":
        refunds = (obj.get("refunds") or {}).get("data") or []
        return any(
            [
                apply_stripe_refund(session, order, r, refunded_at=_created(r) or happened)
                for r in refunds
            ]
        )
    if kind == "payment_intent.payment_failed":
        log.info(
            "payment failed for order %s: %s",
            order.number,
            (obj.get("last_payment_error") or {}).get("message"),
        )
    return False


def _created(obj: Mapping[str, Any]) -> datetime | None:
    created = obj.get("created")
    return datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None


def stripe_id(value: Any) -> str | None:
    """The id of a Stripe field that holds either an id or the expanded object."""
    if isinstance(value, Mapping):
        return value.get("id")
    return value if isinstance(value, str) else None
