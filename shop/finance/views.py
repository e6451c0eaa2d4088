"""Finance pages: unit invoices past their due date, and bank transfers (对公转账) recorded."""

from __future__ import annotations

from datetime import date
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select
from werkzeug.wrappers import Response

from shop.accounts.models import Role, User
from shop.db import utcnow
from shop.errors import InvalidInput, NotFound, ShopError
from shop.extensions import db, login_manager
from shop.orders.models import Channel, Order, Status
from shop.orders.services import get_order
from shop.payments.gateway import stripe_client
from shop.procurement import services
from shop.procurement.models import BankTransfer, Organisation
from shop.timezones import shanghai_today
from shop.views import fen_from_yuan, html_blueprint

bp = html_blueprint("finance", __name__, url_prefix="/finance")

RECENT_TRANSFERS = 20
# The transfer service names its fields as the API does; the form names them for people.
FORM_FIELD = {"amount_fen": "amount", "paid_at": "paid_on", "reference": "reference"}


@bp.before_request
def finance_only() -> Any:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.has_role(Role.FINANCE):
        abort(403)
    return None


@bp.app_context_processor
def finance_nav() -> dict[str, Any]:
    return {"is_finance": current_user.is_authenticated and current_user.has_role(Role.FINANCE)}


def _actor() -> User:
    user: User = current_user._get_current_object()
    return user


def _unit_names(orders: Any) -> dict[int, str]:
    ids = {order.organisation_id for order in orders if order.organisation_id}
    return {
        o.id: o.name
        for o in db.session.scalars(select(Organisation).where(Organisation.id.in_(ids)))
    }


# --- overdue invoices --------------------------------------------------------------------------


@bp.get("/overdue")
def overdue() -> str:
    now = utcnow()
    orders = services.overdue_orders(db.session, now)
    today = shanghai_today(now)
    return render_template(
        "finance/overdue.html",
        orders=orders,
        units=_unit_names(orders),
        days_overdue={
            order.id: (today - shanghai_today(order.invoice_due_at)).days
            for order in orders
            if order.invoice_due_at
        },
    )


@bp.post("/orders/<number>/cancel")
def cancel_overdue(number: str) -> Response:
    try:
        order = get_order(db.session, number, lock=True)
    except NotFound:
        abort(404)
    reason = request.form.get("reason", "").strip()[:256]
    try:
        services.cancel_overdue(db.session, stripe_client(), order, _actor(), reason)
    except ShopError as exc:
        db.session.rollback()
        flash(exc.message, "error")
    else:
        db.session.commit()
        flash(_("订单 %(number)s 已取消，发票已作废，库存已退回。", number=number), "success")
    return redirect(url_for("finance.overdue"), code=303)


# --- bank transfers ----------------------------------------------------------------------------


def _render_transfer(
    form: dict[str, str],
    *,
    errors: dict[str, str] | None = None,
    message: str | None = None,
    status: int = 200,
) -> tuple[str, int]:
    awaiting = db.session.scalars(
        select(Order)
        .where(Order.channel == Channel.UNIT, Order.status == Status.AWAITING_PAYMENT)
        .order_by(Order.invoice_due_at)
    ).all()
    recent = db.session.execute(
        select(BankTransfer, Order)
        .join(Order, Order.id == BankTransfer.order_id)
        .order_by(BankTransfer.recorded_at.desc(), BankTransfer.id.desc())
        .limit(RECENT_TRANSFERS)
    ).all()
    return render_template(
        "finance/transfer.html",
        form=form,
        errors=errors or {},
        message=message,
        awaiting=awaiting,
        recent=recent,
        units=_unit_names([*awaiting, *(order for _t, order in recent)]),
        today=shanghai_today(utcnow()),
    ), status


@bp.get("/transfers/new")
def new_transfer() -> tuple[str, int]:
    form = {
        "order": request.args.get("order", "").strip()[:24],
        "amount": "",
        "paid_on": shanghai_today(utcnow()).isoformat(),
        "reference": "",
        "payer_account": "",
    }
    return _render_transfer(form)


@bp.post("/transfers/new")
def record_transfer() -> Any:
    form = {
        "order": request.form.get("order", "").strip()[:24],
        "amount": request.form.get("amount", "").strip()[:32],
        "paid_on": request.form.get("paid_on", "").strip()[:10],
        "reference": request.form.get("reference", "").strip()[:64],
        "payer_account": request.form.get("payer_account", "").strip()[:64],
    }
    errors: dict[str, str] = {}
    amount_fen = fen_from_yuan(form["amount"]) if form["amount"] else None
    if amount_fen is None or amount_fen <= 0:
        errors["amount"] = _("请填写转账金额，以元为单位，最多两位小数。")
    try:
        paid_on = date.fromisoformat(form["paid_on"])
    except ValueError:
        errors["paid_on"] = _("请填写转账日期。")
    if not form["reference"]:
        errors["reference"] = _("请填写银行流水号。")
    try:
        order = get_order(db.session, form["order"], lock=True)
    except NotFound:
        errors["order"] = _("没有这个订单号。")
    if errors:
        db.session.rollback()
        return _render_transfer(form, errors=errors, status=422)
    assert amount_fen is not None
    try:
        services.record_transfer(
            db.session,
            stripe_client(),
            order,
            _actor(),
            amount_fen=amount_fen,
            paid_on=paid_on,
            reference=form["reference"],
            payer_account=form["payer_account"],
        )
    except InvalidInput as exc:
        db.session.rollback()
        for detail in exc.details:
            field = FORM_FIELD.get(str(detail.get("field")), "order")
            errors.setdefault(field, str(detail.get("message") or exc.message))
        return _render_transfer(form, errors=errors, message=exc.message, status=exc.status)
    except ShopError as exc:
        db.session.rollback()
        return _render_transfer(form, message=exc.message, status=exc.status)
    db.session.commit()
    flash(
        _("已登记对公转账：订单 %(number)s 已支付。", number=order.number),
        "success",
    )
    return redirect(url_for("finance.new_transfer"), code=303)
