"""Unit procurement: organisations and members, unit orders from draft to invoice, transfers."""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import stripe
from sqlalchemy import func, select, true
from sqlalchemy.orm import selectinload

from shop.accounts.models import User
from shop.accounts.services import audit, create_user, normalise_email
from shop.catalog.credit_code import is_valid_credit_code
from shop.catalog.models import District
from shop.db import DbSession, utcnow
from shop.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceUnavailable
from shop.ledger.models import LedgerEntry
from shop.ledger.sql import month_of
from shop.orders.models import (
    Channel,
    Funding,
    Order,
    OrderAddress,
    OrderLine,
    Status,
    StatusChange,
)
from shop.orders.services import (
    HUIZHOU,
    PHONE,
    InvalidTransition,
    ShippingRule,
    order_line,
    reserve_stock,
    transition,
)
from shop.payments.services import STRIPE_UNAVAILABLE, idempotency_key, recognise_payment
from shop.procurement.bulk import BulkRow, PricedLine, check_bulk_rows
from shop.procurement.models import (
    Approval,
    BankTransfer,
    MemberRole,
    Membership,
    Organisation,
    OrganisationType,
)
from shop.timezones import SHANGHAI, shanghai_today

UNIT_FUNDING = (Funding.BUDGET, Funding.UNION, Funding.OWN)


class AlreadyDecided(Conflict):
    code = "already_decided"


# --- organisations and members ----------------------------------------------------------------


def create_organisation(
    session: DbSession,
    actor: User,
    *,
    name: str,
    type: str,
    credit_code: str,
    district: str,
    reserved_target_fen: int,
    invoice_title: str,
    tax_id: str,
    default_funding: str | None = None,
    payment_terms_days: int = 30,
    dual_approval_above_fen: int | None = None,
) -> Organisation:
    problems: list[dict[str, Any]] = []
    code = credit_code.strip().upper()
    if not is_valid_credit_code(code):
        problems.append({"field": "credit_code", "message": "统一社会信用代码无效。"})
    if type not in {t.value for t in OrganisationType}:
        problems.append(
            {"field": "type", "message": "单位类型应为：" + "、".join(OrganisationType)}
        )
    district_row = session.scalar(select(District).where(District.name == district))
    if district_row is None:
        problems.append({"field": "district", "message": f"惠州市没有名为「{district}」的区县。"})
    if reserved_target_fen < 0:
        problems.append({"field": "reserved_target_fen", "message": "预留份额不能为负。"})
    if not 1 <= payment_terms_days <= 365:
        problems.append({"field": "payment_terms_days", "message": "账期应在 1 到 365 天之间。"})
    funding = default_funding or (
        Funding.UNION
        if type == OrganisationType.TRADE_UNION
        else Funding.OWN
        if type in (OrganisationType.STATE_OWNED, OrganisationType.PRIVATE)
        else Funding.BUDGET
    )
    if funding not in UNIT_FUNDING:
        problems.append(
            {"field": "default_funding", "message": "资金来源应为财政资金、工会经费或自有资金。"}
        )
    if not name.strip() or not invoice_title.strip() or not tax_id.strip():
        problems.append({"field": "name", "message": "单位名称、发票抬头和税号必填。"})
    if problems:
        raise InvalidInput("单位信息有误。", details=problems)
    if session.scalar(select(Organisation.id).where(Organisation.credit_code == code)):
        raise Conflict("该统一社会信用代码的单位已存在。", code="duplicate_credit_code")
    assert district_row is not None
    organisation = Organisation(
        name=name.strip(),
        type=type,
        credit_code=code,
        district_id=district_row.id,
        reserved_target_fen=reserved_target_fen,
        invoice_title=invoice_title.strip(),
        tax_id=tax_id.strip(),
        default_funding=funding,
        payment_terms_days=payment_terms_days,
        dual_approval_above_fen=dual_approval_above_fen,
    )
    session.add(organisation)
    session.flush()
    audit(
        session,
        actor,
        "organisation.create",
        f"organisation:{organisation.id}",
        after={
            "name": organisation.name,
            "type": organisation.type,
            "credit_code": organisation.credit_code,
            "district": district,
            "reserved_target_fen": organisation.reserved_target_fen,
            "invoice_title": organisation.invoice_title,
            "tax_id": organisation.tax_id,
            "default_funding": organisation.default_funding,
            "payment_terms_days": organisation.payment_terms_days,
            "dual_approval_above_fen": organisation.dual_approval_above_fen,
        },
    )
    return organisation


def add_member(
    session: DbSession,
    actor: User | None,
    organisation: Organisation,
    *,
    email: str,
    role: str,
    name: str | None = None,
    password: str | None = None,
) -> Membership:
    """Give a person a role in a unit, creating their account when a password is given."""
    if role not in {r.value for r in MemberRole}:
        raise InvalidInput(
            "成员角色应为 requester、approver 或 finance_viewer。", details=[{"field": "role"}]
        )
    user = session.scalar(select(User).where(User.email == normalise_email(email)))
    account_created = user is None
    if user is None:
        if password is None:
            raise NotFound(f"没有邮箱为 {email} 的用户；新用户请同时给出姓名和初始密码。")
        user = create_user(session, email=email, password=password, name=name or email)
    if any(m.user_id == user.id and m.role == role for m in organisation.members):
        raise Conflict("该成员已有此角色。", code="duplicate_member")
    roles_before = sorted(m.role for m in organisation.members if m.user_id == user.id)
    membership = Membership(organisation=organisation, user_id=user.id, role=role)
    session.add(membership)
    session.flush()
    audit(
        session,
        actor,
        "organisation.member",
        f"organisation:{organisation.id}",
        before={"email": user.email, "roles": roles_before},
        after={
            "email": user.email,
            "roles": sorted([*roles_before, role]),
            "account_created": account_created,
        },
        about={"organisation": organisation.name},
    )
    return membership


def roles_in(session: DbSession, user: User, organisation_id: int) -> set[str]:
    return set(
        session.scalars(
            select(Membership.role).where(
                Membership.user_id == user.id, Membership.organisation_id == organisation_id
            )
        )
    )


def organisation_for(session: DbSession, user: User, *roles: MemberRole) -> Organisation:
    """The unit in which `user` holds one of `roles`; Forbidden when there is none."""
    organisation = session.scalar(
        select(Organisation)
        .join(Membership)
        .where(Membership.user_id == user.id, Membership.role.in_(roles))
        .order_by(Organisation.id)
        .limit(1)
    )
    if organisation is None:
        raise Forbidden("你不是任何采购单位的" + "、".join(ROLE_NAMES[r] for r in roles) + "。")
    return organisation


ROLE_NAMES = {
    MemberRole.REQUESTER: "采购员",
    MemberRole.APPROVER: "审批人",
    MemberRole.FINANCE_VIEWER: "财务查看人",
}


def unit_order(
    session: DbSession, user: User, order_id: int, *roles: MemberRole, lock: bool = False
) -> Order:
    """A unit order seen by a member holding one of `roles` in its organisation.

    An order of another unit is reported as missing, so ids cannot be probed.
    """
    query = (
        select(Order)
        .where(Order.id == order_id, Order.channel == Channel.UNIT)
        .options(
            selectinload(Order.lines).joinedload(OrderLine.county),
            selectinload(Order.addresses),
            selectinload(Order.history),
        )
    )
    if lock:
        query = query.with_for_update(of=Order).execution_options(populate_existing=True)
    order = session.scalar(query)
    if order is None or order.organisation_id is None:
        raise NotFound(f"没有编号为 {order_id} 的单位订单。")
    held = roles_in(session, user, order.organisation_id)
    if not held:
        raise NotFound(f"没有编号为 {order_id} 的单位订单。")
    if not held & set(roles):
        raise Forbidden("你在该单位的角色不能执行此操作。")
    return order


# --- drafts, submission, approval --------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    recipient: str
    phone: str
    address: str
    district: str


def create_draft(
    session: DbSession,
    user: User,
    organisation: Organisation,
    lines: Sequence[PricedLine],
    *,
    funding: str | None,
    default_delivery: Delivery | None,
    shipping: ShippingRule,
) -> Order:
    """Save checked, priced lines as a draft unit order; no stock is held yet."""
    funding = funding or organisation.default_funding
    problems: list[dict[str, Any]] = []
    if funding not in UNIT_FUNDING:
        problems.append(
            {
                "row": None,
                "column": "funding",
                "message": "资金来源应为财政资金、工会经费或自有资金。",
            }
        )
    if default_delivery is not None:
        problems += _delivery_problems(session, default_delivery)
    undelivered = [line.row for line in lines if not line.recipient and default_delivery is None]
    problems += [
        {
            "row": row,
            "column": "收货人",
            "message": f"第 {row} 行没有收货信息，请在文件中填写或在表单中给出默认收货地址。",
        }
        for row in undelivered
    ]
    if problems:
        raise InvalidInput("订单信息有误。", code="invalid_rows", details=problems)
    now = utcnow()
    today = shanghai_today(now)
    districts = {d.name: d.id for d in session.scalars(select(District))}
    addresses: dict[tuple[str, str, str, str], OrderAddress] = {}
    order = Order(
        number=_unit_number(now),
        channel=Channel.UNIT,
        status=Status.DRAFT,
        user_id=user.id,
        organisation_id=organisation.id,
        funding=funding,
        created_at=now,
        goods_fen=sum(line.amount_fen for line in lines),
        shipping_fen=0,
        total_fen=0,
    )
    order.shipping_fen = shipping.charge(order.goods_fen, [line.product for line in lines])
    order.total_fen = order.goods_fen + order.shipping_fen
    for line in lines:
        delivery = (
            Delivery(
                line.recipient or "", line.phone or "", line.address or "", line.district or ""
            )
            if line.recipient
            else default_delivery
        )
        assert delivery is not None
        key = (delivery.recipient, delivery.phone, delivery.address, delivery.district)
        if key not in addresses:
            addresses[key] = OrderAddress(
                name=delivery.recipient,
                phone=delivery.phone,
                province="广东省",
                city=HUIZHOU,
                district=delivery.district,
                district_id=districts.get(delivery.district),
                detail=delivery.address,
            )
            order.addresses.append(addresses[key])
        order.lines.append(
            order_line(line.product, line.quantity, line.unit_price_fen, addresses[key], today)
        )
    order.history.append(
        StatusChange(
            from_status=None, to_status=Status.DRAFT, actor_id=user.id, reason=organisation.name
        )
    )
    session.add(order)
    session.flush()
    return order


def draft_from_rows(
    session: DbSession,
    user: User,
    organisation: Organisation,
    rows: list[BulkRow],
    *,
    funding: str | None,
    default_delivery: Delivery | None,
    shipping: ShippingRule,
) -> Order:
    """Check and price rows read from a file or a paste, and save them as a draft."""
    lines = check_bulk_rows(session, rows, today=shanghai_today(utcnow()))
    return create_draft(
        session,
        user,
        organisation,
        lines,
        funding=funding,
        default_delivery=default_delivery,
        shipping=shipping,
    )


def reorder(session: DbSession, user: User, past: Order, *, shipping: ShippingRule) -> Order:
    """再来一单: a new draft of a past order's lines and deliveries at today's prices and rules."""
    organisation = session.get(Organisation, past.organisation_id)
    assert organisation is not None
    rows = [
        BulkRow(
            row=number,
            sku=line.sku,
            quantity_text=str(line.quantity),
            recipient=line.address.name if line.address else None,
            phone=line.address.phone if line.address else None,
            address=line.address.detail if line.address else None,
            district=(line.address.district or None) if line.address else None,
        )
        for number, line in enumerate(past.lines, start=1)
    ]
    return draft_from_rows(
        session,
        user,
        organisation,
        rows,
        funding=past.funding,
        default_delivery=None,
        shipping=shipping,
    )


def _delivery_problems(session: DbSession, delivery: Delivery) -> list[dict[str, Any]]:
    problems = [
        {"row": None, "column": column, "message": "默认收货信息中此项必填。"}
        for column, value in (
            ("recipient", delivery.recipient),
            ("phone", delivery.phone),
            ("address", delivery.address),
            ("district", delivery.district),
        )
        if not value.strip()
    ]
    if delivery.phone.strip() and not PHONE.match(delivery.phone.strip()):
        problems.append(
            {"row": None, "column": "phone", "message": "请填写有效的手机或固定电话号码。"}
        )
    if (
        delivery.district.strip()
        and session.scalar(select(District.id).where(District.name == delivery.district.strip()))
        is None
    ):
        problems.append(
            {
                "row": None,
                "column": "district",
                "message": f"惠州市没有名为「{delivery.district}」的区县。",
            }
        )
    return problems


def _unit_number(now: datetime) -> str:
    return f"HU{now.astimezone(SHANGHAI):%y%m%d}{secrets.randbelow(10**8):08d}"


def submit(session: DbSession, order: Order, user: User) -> None:
    """Send a draft for approval; its stock is reserved now (409 if short, nothing held)."""
    if order.status != Status.DRAFT:
        raise InvalidTransition(f"订单 {order.number} 当前状态为 {order.status}，不能提交审批。")
    reserve_stock(session, [(line.product, line.quantity) for line in order.lines])
    transition(session, order, Status.PENDING_APPROVAL, actor=user, reason="已提交审批，库存已预留")


def approvals_needed(organisation: Organisation, order: Order) -> int:
    limit = organisation.dual_approval_above_fen
    return 2 if limit is not None and order.total_fen > limit else 1


def _check_approver(session: DbSession, order: Order, user: User) -> Organisation:
    if order.user_id == user.id:
        raise Forbidden("不能审批自己提交的订单。")
    if order.status != Status.PENDING_APPROVAL:
        raise Conflict(
            f"订单 {order.number} 当前状态为 {order.status}，不在待审批状态。",
            code="invalid_transition",
        )
    decided = session.scalar(
        select(Approval.id).where(Approval.order_id == order.id, Approval.approver_id == user.id)
    )
    if decided is not None:
        raise AlreadyDecided("你已审批过此订单。")
    organisation = session.get(Organisation, order.organisation_id)
    assert organisation is not None
    return organisation


def approve(session: DbSession, client: stripe.StripeClient, order: Order, user: User) -> bool:
    """Record an approval; with enough of them, invoice the unit and await payment.

    The invoice is created at Stripe before the approval is committed, with keys derived from
    the order, so a Stripe failure leaves the order pending (503) and a retry cannot bill twice.
    Returns True when the order moved on to `awaiting_payment`.
    """
    organisation = _check_approver(session, order, user)
    approved = session.scalars(
        select(Approval).where(Approval.order_id == order.id, Approval.decision == "approved")
    ).all()
    session.add(Approval(order_id=order.id, approver_id=user.id, decision="approved"))
    before = {"status": order.status, "approvals": len(approved)}
    needed = approvals_needed(organisation, order)
    if len(approved) + 1 < needed:
        audit(
            session,
            user,
            "order.approve",
            order.number,
            before=before,
            after={"status": order.status, "approvals": len(approved) + 1},
            about={"approvals_needed": needed, "total_fen": order.total_fen},
        )
        return False
    try:
        invoice = issue_invoice(client, organisation, order)
    except stripe.StripeError as exc:
        raise ServiceUnavailable(STRIPE_UNAVAILABLE) from exc
    order.stripe_invoice_id = invoice.id
    order.invoice_due_at = datetime.fromtimestamp(invoice.due_date or 0, UTC)
    transition(
        session,
        order,
        Status.AWAITING_PAYMENT,
        actor=user,
        reason=f"审批通过，已开具发票，{organisation.payment_terms_days} 天内付款",
    )
    audit(
        session,
        user,
        "order.approve",
        order.number,
        before=before,
        after={
            "status": order.status,
            "approvals": len(approved) + 1,
            "stripe_invoice_id": order.stripe_invoice_id,
            "invoice_due_at": order.invoice_due_at,
        },
        about={"approvals_needed": needed, "total_fen": order.total_fen},
    )
    return True


def reject(session: DbSession, order: Order, user: User, reason: str) -> None:
    if not reason.strip():
        raise InvalidInput("请填写驳回理由。", details=[{"field": "reason"}])
    _check_approver(session, order, user)
    session.add(
        Approval(order_id=order.id, approver_id=user.id, decision="rejected", reason=reason.strip())
    )
    before = {"status": order.status}
    transition(session, order, Status.CANCELLED, actor=user, reason=f"驳回：{reason.strip()}")
    audit(
        session,
        user,
        "order.reject",
        order.number,
        before=before,
        after={"status": order.status, "reason": reason.strip()},
    )


def issue_invoice(
    client: stripe.StripeClient, organisation: Organisation, order: Order
) -> stripe.Invoice:
    """Customer, invoice, one item per line (and shipping), finalised and sent; all idempotent."""
    if organisation.stripe_customer_id is None:
        customer = client.v1.customers.create(
            params={
                "name": organisation.invoice_title,
                "metadata": {
                    "organisation_id": str(organisation.id),
                    "tax_id": organisation.tax_id,
                },
            },
            options={"idempotency_key": f"customer-{organisation.credit_code}"},
        )
        organisation.stripe_customer_id = customer["id"]
    metadata = {"order_number": order.number, "order_id": str(order.id)}
    invoice = client.v1.invoices.create(
        params={
            "customer": organisation.stripe_customer_id,
            "collection_method": "send_invoice",
            "days_until_due": organisation.payment_terms_days,
            "currency": "cny",
            "auto_advance": False,
            "metadata": metadata,
            "description": f"{organisation.name} 消费帮扶采购 {order.number}",
        },
        options={"idempotency_key": idempotency_key("invoice", order)},
    )
    items = [
        (
            f"{line.name}（{line.pack}）× {line.quantity}，单价 {line.unit_price_fen / 100:.2f} 元",
            line.amount_fen,
            f"line-{line.id}",
        )
        for line in order.lines
    ]
    if order.shipping_fen:
        items.append(("运费", order.shipping_fen, "shipping"))
    for description, amount, ref in items:
        client.v1.invoice_items.create(
            params={
                "customer": organisation.stripe_customer_id,
                "invoice": invoice.id,
                "currency": "cny",
                "amount": amount,
                "description": description,
                "metadata": metadata,
            },
            options={"idempotency_key": idempotency_key(f"invoice-item-{ref}", order)},
        )
    finalised = client.v1.invoices.finalize_invoice(
        invoice.id, options={"idempotency_key": idempotency_key("invoice-finalize", order)}
    )
    client.v1.invoices.send_invoice(
        invoice.id, options={"idempotency_key": idempotency_key("invoice-send", order)}
    )
    return finalised


# --- payment by bank transfer, overdue invoices ------------------------------------------------


def record_transfer(
    session: DbSession,
    client: stripe.StripeClient,
    order: Order,
    actor: User,
    *,
    amount_fen: int,
    paid_on: date,
    reference: str,
    payer_account: str,
) -> BankTransfer:
    """对公转账: the unit paid by bank; the Stripe invoice is marked paid out of band."""
    if order.channel != Channel.UNIT:
        raise InvalidInput("只有单位订单可以登记对公转账。", details=[{"field": "order"}])
    if order.status != Status.AWAITING_PAYMENT:
        raise Conflict(
            f"订单 {order.number} 当前状态为 {order.status}，不能登记转账。",
            code="not_awaiting_payment",
        )
    problems = []
    if amount_fen != order.total_fen:
        problems.append(
            {
                "field": "amount_fen",
                "message": f"转账金额 {amount_fen / 100:.2f} 元与应付 "
                f"{order.total_fen / 100:.2f} 元不符。",
            }
        )
    if not reference.strip():
        problems.append({"field": "reference", "message": "请填写银行流水号。"})
    if paid_on > shanghai_today(utcnow()):
        problems.append({"field": "paid_at", "message": "转账日期不能晚于今天。"})
    if problems:
        raise InvalidInput("转账信息有误。", details=problems)
    if session.scalar(select(BankTransfer.id).where(BankTransfer.reference == reference.strip())):
        raise Conflict("该银行流水号已登记过。", code="duplicate_reference")
    if order.stripe_invoice_id:
        try:
            client.v1.invoices.pay(
                order.stripe_invoice_id,
                params={"paid_out_of_band": True},
                options={"idempotency_key": idempotency_key("invoice-paid-by-transfer", order)},
            )
        except stripe.InvalidRequestError as exc:
            raise Conflict("该发票已在 Stripe 支付，不能再登记转账。", code="already_paid") from exc
        except stripe.StripeError as exc:
            raise ServiceUnavailable(STRIPE_UNAVAILABLE) from exc
    before = {"status": order.status, "paid_at": order.paid_at}
    transfer = BankTransfer(
        order_id=order.id,
        payer_account=payer_account.strip(),
        amount_fen=amount_fen,
        paid_on=paid_on,
        reference=reference.strip(),
        recorded_by=actor.id,
    )
    session.add(transfer)
    recognise_payment(
        session,
        order,
        payment_intent=None,
        amount_fen=amount_fen,
        source=f"对公转账 {reference.strip()}",
        # The day the money arrived, at noon in Shanghai, dates the ledger entries.
        paid_at=datetime.combine(paid_on, time(12), SHANGHAI).astimezone(UTC),
    )
    session.flush()
    audit(
        session,
        actor,
        "order.transfer",
        order.number,
        before=before,
        after={
            "status": order.status,
            "paid_at": order.paid_at,
            "transfer_id": transfer.id,
            "amount_fen": amount_fen,
            "paid_on": paid_on,
            "reference": transfer.reference,
            "payer_account": transfer.payer_account,
        },
    )
    return transfer


def overdue_orders(session: DbSession, now: datetime) -> Sequence[Order]:
    return session.scalars(
        select(Order)
        .where(
            Order.channel == Channel.UNIT,
            Order.status == Status.AWAITING_PAYMENT,
            Order.invoice_due_at < now,
        )
        .order_by(Order.invoice_due_at)
    ).all()


def cancel_overdue(
    session: DbSession, client: stripe.StripeClient, order: Order, actor: User, reason: str
) -> None:
    """Finance gives up on an unpaid invoice: it is voided at Stripe and the stock returns."""
    if order.channel != Channel.UNIT or order.status != Status.AWAITING_PAYMENT:
        raise Conflict(f"订单 {order.number} 不是待付款的单位订单。", code="invalid_transition")
    if order.invoice_due_at is not None and order.invoice_due_at > utcnow():
        raise Conflict(
            f"订单 {order.number} 的发票 {order.invoice_due_at.astimezone(SHANGHAI):%Y-%m-%d} "
            "才到期，未逾期的订单不能由财务取消。",
            code="not_overdue",
        )
    if order.stripe_invoice_id:
        try:
            client.v1.invoices.void_invoice(
                order.stripe_invoice_id,
                options={"idempotency_key": idempotency_key("invoice-void", order)},
            )
        except stripe.InvalidRequestError as exc:
            raise Conflict("该发票已支付或已作废，不能取消订单。", code="already_paid") from exc
        except stripe.StripeError as exc:
            raise ServiceUnavailable(STRIPE_UNAVAILABLE) from exc
    before = {"status": order.status}
    transition(session, order, Status.CANCELLED, actor=actor, reason=reason or "逾期未付，财务取消")
    audit(
        session,
        actor,
        "order.cancel_overdue",
        order.number,
        before=before,
        after={
            "status": order.status,
            "reason": reason,
            "invoice_voided": order.stripe_invoice_id is not None,
        },
        about={"stripe_invoice_id": order.stripe_invoice_id, "total_fen": order.total_fen},
    )


# --- progress against the reserved share -------------------------------------------------------


def summary(session: DbSession, organisation: Organisation, year: int) -> dict[str, Any]:
    """The unit's counted ledger entries of a (Shanghai) year, against its reserved share.

    `spent_fen` is what the unit bought itself (channel unit), net of every refund, by
    booking day; `personal_fen` is what people who name it as their employer bought for
    themselves, shown beside it and not part of the unit's progress.
    """
    entries = LedgerEntry.__table__
    month = month_of(entries.c.day).label("month")
    rows = session.execute(
        select(entries.c.channel, entries.c.county, month, func.sum(entries.c.amount_fen))
        .where(
            entries.c.organisation_id == organisation.id,
            entries.c.counted == true(),
            entries.c.day.between(date(year, 1, 1), date(year, 12, 31)),
        )
        .group_by(entries.c.channel, entries.c.county, month)
    )
    by_county: dict[str, int] = defaultdict(int)
    by_month: dict[str, int] = defaultdict(int)
    personal = 0
    for channel, county, in_month, amount in rows:
        if channel == Channel.UNIT:
            by_county[county] += int(amount)
            by_month[in_month] += int(amount)
        else:
            personal += int(amount)
    spent = sum(by_county.values())
    target = organisation.reserved_target_fen
    start = datetime(year, 1, 1, tzinfo=SHANGHAI).astimezone(UTC)
    end = datetime(year + 1, 1, 1, tzinfo=SHANGHAI).astimezone(UTC)
    counts: dict[str, int] = defaultdict(int)
    for status in session.scalars(
        select(Order.status).where(
            Order.organisation_id == organisation.id,
            Order.created_at >= start,
            Order.created_at < end,
        )
    ):
        counts[status] += 1
    return {
        "organisation": organisation.name,
        "year": year,
        "target_fen": target,
        "spent_fen": spent,
        "personal_fen": personal,
        "remaining_fen": max(target - spent, 0),
        "percent": round(spent * 100 / target, 2) if target else None,
        "by_county": [{"county": k, "amount_fen": v} for k, v in sorted(by_county.items()) if v],
        "by_month": [{"month": k, "amount_fen": v} for k, v in sorted(by_month.items()) if v],
        "orders_by_status": dict(sorted(counts.items())),
    }


def unit_orders(
    session: DbSession, organisation: Organisation, status: str | None
) -> Sequence[Order]:
    query = (
        select(Order)
        .where(Order.organisation_id == organisation.id)
        .options(
            selectinload(Order.lines).joinedload(OrderLine.county),
            selectinload(Order.addresses),
            selectinload(Order.history),
        )
    )
    if status:
        query = query.where(Order.status == status)
    return session.scalars(query.order_by(Order.created_at.desc())).all()
