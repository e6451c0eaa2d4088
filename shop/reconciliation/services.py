"""Reconciliation with Stripe: repair what missed webhooks left, record every disagreement.

Stripe is read in pages since a stored cursor per list (the newest `created` seen), re-reading an
overlap before it for objects created earlier and changed since. What Stripe says is gathered per
order first; then each order that needs it is settled in its own transaction under its row lock
and committed, so a worker killed half-way keeps what it did and the next run carries on. Each
discrepancy is written under its unique (kind, Stripe object) key, so two runs at once, or one
run twice, record it once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import stripe
from flask import current_app
from sqlalchemy import select, update

from shop.accounts.models import User
from shop.accounts.services import audit
from shop.db import DbSession, dialect_insert, utcnow
from shop.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from shop.ledger.models import Cursor
from shop.ledger.services import PAID_STATES
from shop.orders.models import Order, Refund, Status
from shop.orders.services import get_order
from shop.payments.services import (
    REFUNDABLE,
    apply_stripe_refund,
    recognise_payment,
    stripe_id,
)
from shop.procurement.models import BankTransfer
from shop.reconciliation.models import Discrepancy, DiscrepancyKind, DiscrepancyStatus

log = logging.getLogger(__name__)

JSON = dict[str, Any]
CURSOR_PREFIX = "reconcile."
PAGE_SIZE = 100
# Ids per IN (…) list, well under every backend's parameter limit.
CHUNK = 500
LISTS = ("checkout_sessions", "payment_intents", "invoices", "refunds", "balance_transactions")
PAYMENT_LISTS = ("checkout_sessions", "payment_intents", "invoices", "balance_transactions")
REPAIR_SOURCE = "对账补记：Stripe 已收款，未收到支付通知"


@dataclass(frozen=True)
class Payment:
    """One payment as Stripe records it: a PaymentIntent (Checkout) or an Invoice."""

    kind: str  # "payment_intent" | "invoice"
    stripe_object: str
    payment_intent: str | None
    paid: bool
    amount_fen: int
    currency: str
    # When the money moved; for a PaymentIntent read from its charge only when it is needed.
    paid_at: datetime | None
    charge: str | None = None
    # An invoice marked paid at Stripe for money that did not move through Stripe.
    out_of_band: bool = False


@dataclass
class OrderWork:
    """What Stripe says about one order in this run."""

    payments: dict[str, Payment] = field(default_factory=dict)
    refunds: dict[str, JSON] = field(default_factory=dict)
    # The shop knows a refund Stripe's lists did not show: compare the totals.
    check_refunds: bool = False


@dataclass(frozen=True)
class ShopOrder:
    """The columns of an order the unlocked first look needs."""

    number: str
    status: str
    total_fen: int
    currency: str
    refunded_fen: int
    payment_intent: str | None
    invoice: str | None


@dataclass
class Report:
    objects_seen: int = 0
    orders_checked: int = 0
    repaired: int = 0
    discrepancies_opened: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


# --- reading Stripe ---------------------------------------------------------------------------


def _collection(client: stripe.StripeClient, kind: str) -> Any:
    v1 = client.v1
    return {
        "checkout_sessions": v1.checkout.sessions,
        "payment_intents": v1.payment_intents,
        "invoices": v1.invoices,
        "refunds": v1.refunds,
        "balance_transactions": v1.balance_transactions,
        "charges": v1.charges,
    }[kind]


# The fields reconciliation reads, per kind: a day of objects is kept in memory, not whole.
FIELDS = {
    "checkout_sessions": ("payment_intent", "client_reference_id"),
    "payment_intents": ("status", "amount", "amount_received", "currency", "latest_charge"),
    "invoices": (
        "status",
        "amount_paid",
        "amount_due",
        "currency",
        "status_transitions",
        "payment_intent",
        "paid_out_of_band",
        "attempted",
    ),
    "refunds": ("status", "amount", "currency", "payment_intent"),
    "balance_transactions": ("type", "source"),
    "charges": ("payment_intent",),
}


def _slim(kind: str, obj: Mapping[str, Any]) -> JSON:
    slim: JSON = {"id": obj["id"], "created": obj.get("created")}
    slim["metadata"] = {str(k): str(v) for k, v in (obj.get("metadata") or {}).items()}
    for name in FIELDS[kind]:
        value = obj.get(name)
        slim[name] = stripe_id(value) if isinstance(value, Mapping) and "id" in value else value
    if isinstance(slim.get("status_transitions"), Mapping):
        slim["status_transitions"] = dict(slim["status_transitions"])
    return slim


def _list(client: stripe.StripeClient, kind: str, params: Mapping[str, Any]) -> Iterator[JSON]:
    query = {"limit": PAGE_SIZE, **params}
    for obj in _collection(client, kind).list(params=query).auto_paging_iter():
        yield _slim(kind, obj.to_dict())


def _number(obj: Mapping[str, Any]) -> str | None:
    number = (obj.get("metadata") or {}).get("order_number")
    return str(number) if number else None


def _at(timestamp: Any) -> datetime | None:
    return datetime.fromtimestamp(int(timestamp), UTC) if timestamp else None


class StripeReader:
    """Reads and remembers Stripe objects for one run, counting every object seen."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self.client = client
        self.seen = 0
        # Charges whose money moved inside the window, from the balance transactions.
        self.charges_moved: set[str] = set()

    def read(self, kind: str, **params: Any) -> list[JSON]:
        objects = list(_list(self.client, kind, params))
        self.seen += len(objects)
        return objects

    def since(self, kind: str, since: int | None) -> list[JSON]:
        return self.read(kind, **({} if since is None else {"created": {"gte": since}}))

    def retrieve(self, kind: str, object_id: str) -> JSON | None:
        """The object, or None when Stripe has no such object."""
        try:
            obj = _collection(self.client, kind).retrieve(object_id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None
            raise
        self.seen += 1
        return _slim(kind, obj.to_dict())

    def with_payment_time(self, payment: Payment) -> Payment:
        """The payment with the time its charge was made, which dates the ledger entries."""
        if payment.paid_at is not None or payment.charge is None:
            return payment
        charge = self.retrieve("charges", payment.charge)
        return replace(payment, paid_at=_at((charge or {}).get("created")))

    @staticmethod
    def intent_payment(intent: Mapping[str, Any]) -> Payment:
        paid = intent.get("status") == "succeeded"
        return Payment(
            kind="payment_intent",
            stripe_object=intent["id"],
            payment_intent=intent["id"],
            paid=paid,
            amount_fen=int(intent["amount_received"] if paid else intent["amount"]),
            currency=str(intent.get("currency") or ""),
            paid_at=None,
            charge=stripe_id(intent.get("latest_charge")) if paid else None,
        )

    @staticmethod
    def invoice_payment(invoice: Mapping[str, Any]) -> Payment:
        paid = invoice.get("status") == "paid"
        amount_paid = int(invoice.get("amount_paid") or 0)
        out_of_band = bool(invoice.get("paid_out_of_band")) or (
            paid and amount_paid > 0 and not invoice.get("attempted")
        )
        return Payment(
            kind="invoice",
            stripe_object=invoice["id"],
            payment_intent=stripe_id(invoice.get("payment_intent")),
            paid=paid,
            amount_fen=amount_paid if paid else int(invoice.get("amount_due") or 0),
            currency=str(invoice.get("currency") or ""),
            paid_at=_at((invoice.get("status_transitions") or {}).get("paid_at")),
            out_of_band=out_of_band,
        )

    def fresh(self, payment: Payment) -> Payment:
        """The payment as Stripe has it now; a missing object is an unpaid one."""
        kind = "payment_intents" if payment.kind == "payment_intent" else "invoices"
        obj = self.retrieve(kind, payment.stripe_object)
        if obj is None:
            return Payment(payment.kind, payment.stripe_object, None, False, 0, "", None)
        if payment.kind == "payment_intent":
            return self.intent_payment(obj)
        return self.invoice_payment(obj)


# --- cursors ----------------------------------------------------------------------------------


def _positions(session: DbSession) -> dict[str, int]:
    names = [CURSOR_PREFIX + kind for kind in LISTS]
    rows = session.execute(select(Cursor.name, Cursor.position).where(Cursor.name.in_(names)))
    return {name.removeprefix(CURSOR_PREFIX): int(position) for name, position in rows}


def _advance_cursors(session: DbSession, newest: Mapping[str, int]) -> None:
    """Move each cursor forward to the newest `created` seen; never back (runs overlap)."""
    now = utcnow()
    for kind, position in newest.items():
        name = CURSOR_PREFIX + kind
        session.execute(
            dialect_insert(session, Cursor.__table__)
            .values(name=name, position=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        session.execute(
            update(Cursor)
            .where(Cursor.name == name, Cursor.position < position)
            .values(position=position, updated_at=now)
        )
    session.commit()


# --- discrepancies ----------------------------------------------------------------------------


def _record(
    session: DbSession,
    kind: DiscrepancyKind,
    stripe_object: str,
    *,
    order: Order | None,
    detail: str,
    status: DiscrepancyStatus = DiscrepancyStatus.OPEN,
    stripe_fen: int | None = None,
    shop_fen: int | None = None,
    currency: str | None = None,
    order_number: str | None = None,
) -> bool:
    """Write a discrepancy once per (kind, Stripe object); False when it was already there."""
    statement = (
        dialect_insert(session, Discrepancy.__table__)
        .values(
            kind=kind.value,
            status=status.value,
            stripe_object=stripe_object,
            order_id=order.id if order else None,
            order_number=order.number if order else order_number,
            shop_fen=shop_fen,
            stripe_fen=stripe_fen,
            currency=currency,
            detail=detail[:512],
            found_at=utcnow(),
            note="",
        )
        .on_conflict_do_nothing(index_elements=["kind", "stripe_object"])
        # PostgreSQL reports -1 for the row count unless SQLAlchemy is asked to keep it.
        .execution_options(preserve_rowcount=True)
    )
    return int(getattr(session.execute(statement), "rowcount", 0) or 0) == 1


def _yuan(fen: int | None) -> str:
    return f"{(fen or 0) / 100:.2f} 元"


# --- gathering what Stripe says, per order ------------------------------------------------------


def _chunks(items: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _numbers_by_intent(session: DbSession, intents: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for batch in _chunks(sorted(set(intents))):
        rows = session.execute(
            select(Order.stripe_payment_intent_id, Order.number).where(
                Order.stripe_payment_intent_id.in_(batch)
            )
        )
        found.update({intent: number for intent, number in rows if intent})
    return found


def _shop_orders(session: DbSession, numbers: Iterable[str]) -> dict[str, ShopOrder]:
    found: dict[str, ShopOrder] = {}
    for batch in _chunks(sorted(set(numbers))):
        for row in session.execute(
            select(
                Order.number,
                Order.status,
                Order.total_fen,
                Order.currency,
                Order.refunded_fen,
                Order.stripe_payment_intent_id,
                Order.stripe_invoice_id,
            ).where(Order.number.in_(batch))
        ):
            found[row[0]] = ShopOrder(*row)
    return found


def _shop_refunds(session: DbSession, numbers: Iterable[str]) -> dict[str, dict[str, str]]:
    """Per order: its refunds' status, by Stripe refund id and by our refund id."""
    found: dict[str, dict[str, str]] = {}
    for batch in _chunks(sorted(set(numbers))):
        for number, refund_id, stripe_refund_id, status in session.execute(
            select(Order.number, Refund.id, Refund.stripe_refund_id, Refund.status)
            .join(Refund, Refund.order_id == Order.id)
            .where(Order.number.in_(batch))
        ):
            statuses = found.setdefault(number, {})
            statuses[str(refund_id)] = status
            if stripe_refund_id:
                statuses[stripe_refund_id] = status
    return found


@dataclass
class Gathered:
    work: dict[str, OrderWork]
    # Paid payments and succeeded refunds naming an order the shop does not have.
    orphans: list[tuple[str | None, Payment | JSON]]
    newest: dict[str, int]


def _gather(session: DbSession, reader: StripeReader, since: Mapping[str, int | None]) -> Gathered:
    objects = {kind: reader.since(kind, since[kind]) for kind in LISTS}
    newest = {
        kind: max((int(obj["created"]) for obj in objects[kind]), default=0) for kind in LISTS
    }
    for txn in objects["balance_transactions"]:
        source = stripe_id(txn.get("source"))
        if source and txn.get("type") in ("charge", "payment"):
            reader.charges_moved.add(source)

    intents: dict[str, JSON] = {obj["id"]: obj for obj in objects["payment_intents"]}
    invoices: dict[str, JSON] = {obj["id"]: obj for obj in objects["invoices"]}
    invoice_intents = {
        pi: inv["id"] for inv in invoices.values() if (pi := stripe_id(inv.get("payment_intent")))
    }
    number_of_intent: dict[str, str] = {}

    def want_intent(intent_id: str) -> None:
        if intent_id not in intents and intent_id not in invoice_intents:
            found = reader.retrieve("payment_intents", intent_id)
            if found is not None:
                intents[intent_id] = found

    for checkout in objects["checkout_sessions"]:
        intent_id = stripe_id(checkout.get("payment_intent"))
        number = _number(checkout) or checkout.get("client_reference_id")
        if intent_id:
            want_intent(intent_id)
            if number:
                number_of_intent[intent_id] = number
    # A charge long after its PaymentIntent was created falls outside the overlap; its
    # balance transaction does not.
    charged = {stripe_id(pi.get("latest_charge")) for pi in intents.values()}
    for charge_id in sorted(reader.charges_moved - charged):
        charge = reader.retrieve("charges", charge_id)
        intent_id = stripe_id((charge or {}).get("payment_intent"))
        if intent_id:
            want_intent(intent_id)
    for invoice in invoices.values():
        if (number := _number(invoice)) and (pi := stripe_id(invoice.get("payment_intent"))):
            number_of_intent.setdefault(pi, number)
    for intent in intents.values():
        if number := _number(intent):
            number_of_intent.setdefault(intent["id"], number)
    refund_intents = {
        pi for refund in objects["refunds"] if (pi := stripe_id(refund.get("payment_intent")))
    }
    unnamed = (set(intents) | refund_intents) - set(number_of_intent)
    number_of_intent.update(_numbers_by_intent(session, unnamed))
    session.rollback()  # no transaction (on SQLite: no write lock) while Stripe is asked

    work: dict[str, OrderWork] = {}
    orphans: list[tuple[str | None, Payment | JSON]] = []
    for intent in intents.values():
        if intent["id"] in invoice_intents:
            continue  # the invoice speaks for it
        number = number_of_intent.get(intent["id"])
        payment = reader.intent_payment(intent)
        if number is None:
            continue  # not ours: no order names it
        work.setdefault(number, OrderWork()).payments[payment.stripe_object] = payment
    for invoice in invoices.values():
        if number := _number(invoice):
            payment = reader.invoice_payment(invoice)
            work.setdefault(number, OrderWork()).payments[payment.stripe_object] = payment
    for refund in objects["refunds"]:
        number = _number(refund) or number_of_intent.get(
            stripe_id(refund.get("payment_intent")) or ""
        )
        if number is None:
            if refund.get("status") == "succeeded":
                orphans.append((None, refund))
            continue
        work.setdefault(number, OrderWork()).refunds[refund["id"]] = refund

    _shop_side(session, reader, work, since, seen_refunds={r["id"] for r in objects["refunds"]})
    return Gathered(work, orphans, newest)


def _shop_side(
    session: DbSession,
    reader: StripeReader,
    work: dict[str, OrderWork],
    since: Mapping[str, int | None],
    seen_refunds: set[str],
) -> None:
    """Orders whose Stripe object the lists cannot show: asked for by id.

    An invoice is paid up to its net terms after it was created, longer than any overlap; and
    an order the shop marked paid whose payment is not among Stripe's recent objects may have
    been marked paid without one.
    """
    starts = [since[kind] for kind in PAYMENT_LISTS]
    paid_since = None if None in starts else _at(min(s for s in starts if s is not None))
    o = Order.__table__
    awaiting_invoices = select(
        o.c.number, o.c.stripe_invoice_id, o.c.stripe_payment_intent_id
    ).where(o.c.status == Status.AWAITING_PAYMENT.value, o.c.stripe_invoice_id.is_not(None))
    paid = select(o.c.number, o.c.stripe_invoice_id, o.c.stripe_payment_intent_id).where(
        o.c.status.in_([s.value for s in PAID_STATES]),
        (o.c.stripe_invoice_id.is_not(None)) | (o.c.stripe_payment_intent_id.is_not(None)),
        ~select(BankTransfer.id).where(BankTransfer.order_id == o.c.id).exists(),
    )
    if paid_since is not None:
        paid = paid.where(o.c.paid_at >= paid_since)
    refunded = (
        select(Order.number)
        .join(Refund, Refund.order_id == Order.id)
        .where(Refund.status == "succeeded", Refund.stripe_refund_id.is_not(None))
    )
    if since["refunds"] is not None:
        refunded = refunded.where(Refund.succeeded_at >= _at(since["refunds"]))
    candidates = list(session.execute(awaiting_invoices)) + list(session.execute(paid))
    refund_rows = session.execute(refunded.add_columns(Refund.stripe_refund_id)).all()
    session.rollback()

    for number, invoice_id, intent_id in candidates:
        known = work.get(number, OrderWork()).payments
        if invoice_id and invoice_id not in known:
            obj = reader.retrieve("invoices", invoice_id)
            payment = (
                StripeReader.invoice_payment(obj)
                if obj is not None
                else Payment("invoice", invoice_id, None, False, 0, "", None)
            )
            work.setdefault(number, OrderWork()).payments[invoice_id] = payment
        elif not invoice_id and intent_id and intent_id not in known:
            obj = reader.retrieve("payment_intents", intent_id)
            payment = (
                reader.intent_payment(obj)
                if obj is not None
                else Payment("payment_intent", intent_id, intent_id, False, 0, "", None)
            )
            work.setdefault(number, OrderWork()).payments[intent_id] = payment
    for number, stripe_refund_id in refund_rows:
        if stripe_refund_id not in seen_refunds:
            work.setdefault(number, OrderWork()).check_refunds = True


# --- settling one order -----------------------------------------------------------------------


def _needs_attention(order: ShopOrder, work: OrderWork, refunds: Mapping[str, str]) -> bool:
    """A first look without locks: does anything Stripe says disagree with the shop?"""
    if work.check_refunds:
        return True
    paid_in_shop = order.status in PAID_STATES
    for payment in work.payments.values():
        ours = payment.stripe_object in (order.payment_intent, order.invoice)
        if not payment.paid:
            if paid_in_shop and ours:
                return True
            continue
        if payment.out_of_band:
            if not paid_in_shop:
                return True
            continue
        agrees = (
            paid_in_shop
            and ours
            and payment.amount_fen == order.total_fen
            and payment.currency == order.currency
        )
        if not agrees:
            return True
    for refund in work.refunds.values():
        status = refund.get("status")
        ours_status = refunds.get(refund["id"]) or refunds.get(
            str((refund.get("metadata") or {}).get("refund_id") or "")
        )
        if status == "succeeded" and ours_status != "succeeded":
            return True
        if status in ("failed", "canceled") and ours_status == "pending":
            return True
    return False


def _paid_by_transfer(session: DbSession, order: Order) -> bool:
    return (
        session.scalar(select(BankTransfer.id).where(BankTransfer.order_id == order.id)) is not None
    )


def _settle_payment(
    session: DbSession, reader: StripeReader, order: Order, payment: Payment, report: Report
) -> None:
    ours = payment.stripe_object in (order.stripe_payment_intent_id, order.stripe_invoice_id)
    paid_in_shop = order.status in PAID_STATES
    if not payment.paid and paid_in_shop and ours:
        # The list may be older than the webhook that marked the order paid: ask again.
        payment = reader.fresh(payment)

    def found(
        kind: DiscrepancyKind,
        detail: str,
        status: DiscrepancyStatus = DiscrepancyStatus.OPEN,
    ) -> bool:
        return _record(
            session,
            kind,
            payment.stripe_object,
            order=order,
            status=status,
            shop_fen=order.total_fen,
            stripe_fen=payment.amount_fen if payment.paid else 0,
            currency=payment.currency or None,
            detail=detail,
        )

    unmarked = "。" if paid_in_shop else "；订单未标记为已付款。"
    if not payment.paid:
        if paid_in_shop and ours and not _paid_by_transfer(session, order):
            report.discrepancies_opened += found(
                DiscrepancyKind.PAID_IN_SHOP_ONLY,
                f"商城中订单已付款（{_yuan(order.total_fen)}），"
                f"Stripe 上的 {payment.stripe_object} 却未收款。",
            )
        return
    if payment.out_of_band:
        if not paid_in_shop:
            report.discrepancies_opened += found(
                DiscrepancyKind.PAID_AT_STRIPE_ONLY,
                "Stripe 上的发票被标记为线下已付，但商城没有登记对公转账。",
            )
        return
    if payment.currency != order.currency:
        report.discrepancies_opened += found(
            DiscrepancyKind.CURRENCY_DIFFERS,
            f"Stripe 以 {payment.currency.upper()} 收款，订单币种为 "
            f"{order.currency.upper()}{unmarked}",
        )
        return
    if payment.amount_fen != order.total_fen:
        report.discrepancies_opened += found(
            DiscrepancyKind.AMOUNT_DIFFERS,
            f"Stripe 收款 {_yuan(payment.amount_fen)}，订单应付 {_yuan(order.total_fen)}{unmarked}",
        )
        return
    if order.status == Status.AWAITING_PAYMENT:
        if recognise_payment(
            session,
            order,
            payment_intent=payment.payment_intent,
            amount_fen=payment.amount_fen,
            source=REPAIR_SOURCE,
            paid_at=payment.paid_at,
        ):
            report.repaired += 1
            found(
                DiscrepancyKind.PAID_AT_STRIPE_ONLY,
                "Stripe 已收款但商城未收到支付通知；对账已将订单标记为已付款并记入台账。",
                DiscrepancyStatus.REPAIRED,
            )
        return
    if paid_in_shop and ours:
        return
    if paid_in_shop:
        detail = f"订单已通过其他付款支付，Stripe 上的 {payment.stripe_object} 又收款一次。"
    else:
        detail = f"Stripe 已收款，但订单状态为 {order.status}。"
    report.discrepancies_opened += found(DiscrepancyKind.PAID_AT_STRIPE_ONLY, detail)


def _settle_refunds(
    session: DbSession, reader: StripeReader, order: Order, work: OrderWork, report: Report
) -> None:
    """Apply refunds made at Stripe that the shop missed, then compare the refunded totals.

    Stripe's refunds of the payment are read under the order's lock: a refund asked for
    through the shop is sent and applied under the same lock, so none is half-way here.
    """
    named = {order.stripe_payment_intent_id}
    named |= {stripe_id(refund.get("payment_intent")) for refund in work.refunds.values()}
    named |= {
        p.payment_intent
        for p in work.payments.values()
        if p.stripe_object == order.stripe_invoice_id
    }
    intents = sorted(i for i in named if i)
    if not intents:
        return  # never paid through Stripe: nothing there to compare with
    stripe_refunds = {
        refund["id"]: refund
        for intent in intents
        for refund in reader.read("refunds", payment_intent=intent)
    }
    settled = [
        _settle_refund(session, order, refund, report)
        for refund in sorted(stripe_refunds.values(), key=lambda r: (r["created"], r["id"]))
    ]
    if not all(settled):
        return  # the refund that could not be applied has its own discrepancy
    stripe_total = sum(
        int(r["amount"]) for r in stripe_refunds.values() if r.get("status") == "succeeded"
    )
    if stripe_total != order.refunded_fen:
        # Keyed by the two totals too: a later, different disagreement on the same payment is
        # a new discrepancy, not one already seen.
        anchor = order.stripe_payment_intent_id or intents[0]
        report.discrepancies_opened += _record(
            session,
            DiscrepancyKind.REFUND_DIFFERS,
            f"{anchor} {stripe_total}/{order.refunded_fen}",
            order=order,
            shop_fen=order.refunded_fen,
            stripe_fen=stripe_total,
            currency=order.currency,
            detail=f"Stripe 共退款 {_yuan(stripe_total)}，商城记录退款 "
            f"{_yuan(order.refunded_fen)}。",
        )


def _settle_refund(session: DbSession, order: Order, refund: JSON, report: Report) -> bool:
    """False when Stripe's refund could not be applied to the order."""
    status = refund.get("status")
    ours_id = str((refund.get("metadata") or {}).get("refund_id") or "")
    ours = next(
        (
            r
            for r in order.refunds
            if r.stripe_refund_id == refund["id"] or (ours_id and str(r.id) == ours_id)
        ),
        None,
    )
    if status == "succeeded" and (ours is None or ours.status != "succeeded"):
        amount = int(refund["amount"])
        fits = order.status in REFUNDABLE and amount <= order.total_fen - order.refunded_fen
        if ours is not None and ours.status == "failed":
            fits = False
        if not fits:
            report.discrepancies_opened += _record(
                session,
                DiscrepancyKind.REFUND_DIFFERS,
                refund["id"],
                order=order,
                shop_fen=order.refunded_fen,
                stripe_fen=amount,
                currency=refund.get("currency"),
                detail=f"Stripe 已退款 {_yuan(amount)}，但订单状态为 {order.status}、"
                f"已退 {_yuan(order.refunded_fen)}，无法记入。",
            )
            return False
        if apply_stripe_refund(session, order, refund, refunded_at=_at(refund.get("created"))):
            report.repaired += 1
            _record(
                session,
                DiscrepancyKind.REFUND_DIFFERS,
                refund["id"],
                order=order,
                status=DiscrepancyStatus.REPAIRED,
                shop_fen=order.refunded_fen - amount,
                stripe_fen=amount,
                currency=refund.get("currency"),
                detail=f"Stripe 已退款 {_yuan(amount)}，商城未记录；对账已记入退款和台账。",
            )
    elif (
        status in ("failed", "canceled")
        and ours is not None
        and ours.status == "pending"
        and apply_stripe_refund(session, order, refund)
    ):
        report.repaired += 1
        _record(
            session,
            DiscrepancyKind.REFUND_DIFFERS,
            refund["id"],
            order=order,
            status=DiscrepancyStatus.REPAIRED,
            shop_fen=ours.amount_fen,
            stripe_fen=0,
            currency=refund.get("currency"),
            detail="Stripe 上的退款未成功；对账已将商城中待处理的退款标记为失败。",
        )
    return True


def _settle_order(
    session: DbSession, reader: StripeReader, number: str, work: OrderWork, report: Report
) -> None:
    """One order under its row lock (the lock webhooks take): payments, then refunds.

    A repaired payment commits before Stripe is asked about refunds, so the ledger lock its
    entries took is never held across a Stripe call (a rollup waiting for it would hold back
    every webhook behind it).
    """
    order = get_order(session, number, lock=True)
    for payment in work.payments.values():
        _settle_payment(session, reader, order, payment, report)
    session.commit()
    order = get_order(session, number, lock=True)
    if work.refunds or work.check_refunds or order.refunds:
        _settle_refunds(session, reader, order, work, report)
    session.commit()


def _settle_orphans(
    session: DbSession, orphans: Iterable[tuple[str | None, Payment | JSON]], report: Report
) -> None:
    """Money at Stripe naming no order the shop has."""
    for number, item in orphans:
        where = f"订单 {number}" if number else "任何订单"
        if isinstance(item, Payment):
            report.discrepancies_opened += _record(
                session,
                DiscrepancyKind.PAID_AT_STRIPE_ONLY,
                item.stripe_object,
                order=None,
                order_number=number,
                stripe_fen=item.amount_fen,
                currency=item.currency,
                detail=f"Stripe 已收款 {_yuan(item.amount_fen)}，但商城中没有{where}。",
            )
        else:
            report.discrepancies_opened += _record(
                session,
                DiscrepancyKind.REFUND_DIFFERS,
                item["id"],
                order=None,
                order_number=number,
                stripe_fen=int(item["amount"]),
                currency=item.get("currency"),
                detail=f"Stripe 退款 {_yuan(int(item['amount']))} 对应不到商城中的{where}。",
            )
    session.commit()


# --- the run --------------------------------------------------------------------------------


def reconcile_payments(
    session: DbSession, client: stripe.StripeClient, *, overlap_seconds: int | None = None
) -> dict[str, int]:
    """Page through Stripe since the stored cursors; repair and record every disagreement.

    Returns how many Stripe objects were seen, orders checked under lock, repairs made,
    discrepancies opened, and orders that failed (left for the next run, which re-reads them:
    cursors only move when every order was settled).
    """
    if overlap_seconds is None:
        overlap_seconds = int(current_app.config["RECONCILE_OVERLAP_SECONDS"])
    positions = _positions(session)
    session.rollback()
    since = {
        kind: max(positions[kind] - overlap_seconds, 0) if positions.get(kind) else None
        for kind in LISTS
    }
    reader = StripeReader(client)
    try:
        gathered = _gather(session, reader, since)
    except stripe.StripeError as exc:
        session.rollback()
        log.warning("reconciliation could not read Stripe: %s", exc)
        raise ServiceUnavailable(
            "暂时无法读取 Stripe，本次对账未完成；下次运行会从原处继续。"
        ) from exc
    report = Report()
    snapshot = _shop_orders(session, gathered.work)
    shop_refunds = _shop_refunds(session, snapshot)
    session.rollback()

    orphans = list(gathered.orphans)
    for number, work in gathered.work.items():
        if number not in snapshot:
            orphans += [(number, p) for p in work.payments.values() if p.paid]
            orphans += [
                (number, r) for r in work.refunds.values() if r.get("status") == "succeeded"
            ]
    if orphans:
        # In one order of keys, so that two runs at once wait on each other, never deadlock.
        orphans.sort(key=lambda o: o[1].stripe_object if isinstance(o[1], Payment) else o[1]["id"])
        _settle_orphans(session, orphans, report)

    for number in sorted(snapshot):
        work = gathered.work[number]
        if not _needs_attention(snapshot[number], work, shop_refunds.get(number, {})):
            continue
        report.orders_checked += 1
        try:
            if snapshot[number].status == Status.AWAITING_PAYMENT:
                # Read before the lock is taken: a repair dates the payment by its charge.
                work.payments = {
                    key: reader.with_payment_time(p) if p.paid else p
                    for key, p in work.payments.items()
                }
            _settle_order(session, reader, number, work, report)
        except Exception:
            session.rollback()
            report.failed += 1
            log.exception("reconciling order %s failed; left for the next run", number)
    report.objects_seen = reader.seen
    if not report.failed:
        _advance_cursors(session, {k: v for k, v in gathered.newest.items() if v})
    log.info("reconciliation with Stripe: %s", report.as_dict())
    return report.as_dict()


# --- finance: the discrepancies -----------------------------------------------------------------


def list_discrepancies(session: DbSession, status: str | None = None) -> list[Discrepancy]:
    """Newest first; `status` one of open, repaired, resolved."""
    query = select(Discrepancy).order_by(Discrepancy.found_at.desc(), Discrepancy.id.desc())
    if status:
        if status not in {s.value for s in DiscrepancyStatus}:
            raise InvalidInput(
                "状态只能是 open、repaired 或 resolved。", details=[{"field": "status"}]
            )
        query = query.where(Discrepancy.status == status)
    return list(session.scalars(query))


def resolve_discrepancy(
    session: DbSession, discrepancy_id: int, actor: User, note: str
) -> Discrepancy:
    """Finance closes a discrepancy with a note saying what was done (audited)."""
    discrepancy = session.scalar(
        select(Discrepancy)
        .where(Discrepancy.id == discrepancy_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if discrepancy is None:
        raise NotFound(f"没有编号为 {discrepancy_id} 的对账差异。")
    note = note.strip()
    if not note:
        raise InvalidInput("请填写处理说明。", details=[{"field": "note"}])
    if discrepancy.status == DiscrepancyStatus.RESOLVED:
        raise Conflict(f"对账差异 {discrepancy_id} 已处理过。", code="already_resolved")
    before = {"status": discrepancy.status, "note": discrepancy.note}
    discrepancy.status = DiscrepancyStatus.RESOLVED
    discrepancy.resolved_at = utcnow()
    discrepancy.resolved_by = actor.id
    discrepancy.note = note
    audit(
        session,
        actor,
        "discrepancy.resolve",
        f"discrepancy:{discrepancy.id}",
        before=before,
        after={"status": discrepancy.status, "note": note},
        about={
            "kind": discrepancy.kind,
            "stripe_object": discrepancy.stripe_object,
            "order_number": discrepancy.order_number,
        },
    )
    session.flush()
    return discrepancy
