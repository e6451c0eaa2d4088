"""Operations pages: suppliers and certificates, products and stock, fulfilment and refunds,
buying units, and the audit trail of staff changes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.orm import joinedload, selectinload
from werkzeug.wrappers import Response

from shop.accounts.audit_log import ACTIONS, READERS, AuditFilter, audit_query
from shop.accounts.models import Role, User
from shop.admin import services
from shop.catalog.models import Category, County, District, Product, Supplier
from shop.db import utcnow
from shop.errors import InvalidInput, NotFound, ShopError
from shop.extensions import db, login_manager
from shop.orders.models import Order, Status
from shop.orders.services import get_order, mark_shipped
from shop.payments.gateway import stripe_client
from shop.payments.services import REFUNDABLE, refund
from shop.procurement import services as units
from shop.procurement.models import MemberRole, Membership, Organisation, OrganisationType
from shop.timezones import SHANGHAI, shanghai_today
from shop.views import fen_from_yuan, html_blueprint, page_number, yuan

bp = html_blueprint("admin", __name__, url_prefix="/admin")

ORDERS_PER_PAGE = 30
AUDIT_PER_PAGE = 50
LOW_STOCK_LEVEL = 50


@bp.before_request
def admins_only() -> Any:
    """Operations only; finance may also read the audit trail."""
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    allowed = READERS if request.endpoint == "admin.audit_log" else (Role.ADMIN,)
    if not current_user.has_role(*allowed):
        abort(403)
    return None


def _actor() -> User:
    user: User = current_user._get_current_object()
    return user


def _run(change: Callable[[], Any], success: str) -> bool:
    """Apply one service call and commit it, or roll it back and say why."""
    try:
        change()
    except ShopError as exc:
        db.session.rollback()
        problems = [str(d["message"]) for d in exc.details if d.get("message")]
        flash(exc.message + (" " + "；".join(problems) if problems else ""), "error")
        return False
    db.session.commit()
    flash(success, "success")
    return True


def _back(default: str) -> Response:
    target = request.form.get("back", "")
    if target.startswith("/admin/") and not target.startswith("//"):
        return redirect(target)
    return redirect(url_for(default))


@bp.get("/")
def dashboard() -> str:
    def count(query: Any) -> int:
        return int(db.session.scalar(query) or 0)

    return render_template(
        "admin/dashboard.html",
        suppliers=count(select(func.count(Supplier.id))),
        products=count(select(func.count(Product.id)).where(Product.active)),
        low_stock=count(
            select(func.count(Product.id)).where(Product.active, Product.stock < LOW_STOCK_LEVEL)
        ),
        low_stock_level=LOW_STOCK_LEVEL,
        to_ship=count(select(func.count(Order.id)).where(Order.status == Status.PAID)),
        awaiting=count(select(func.count(Order.id)).where(Order.status == Status.AWAITING_PAYMENT)),
    )


# --- suppliers and certificates ----------------------------------------------------------------


def _date(name: str) -> date | None:
    try:
        return date.fromisoformat(request.form.get(name, "").strip())
    except ValueError:
        return None


@bp.get("/suppliers")
def suppliers() -> str:
    return render_template(
        "admin/suppliers.html",
        suppliers=db.session.scalars(select(Supplier).order_by(Supplier.id)).all(),
        counties=db.session.scalars(select(County).order_by(County.code)).all(),
        today=shanghai_today(utcnow()),
    )


@bp.post("/suppliers")
def create_supplier() -> Response:
    form = request.form
    households = form.get("households_lifted", "").strip()
    if households and not households.isdigit():
        flash(_("带动脱贫户数应为非负整数。"), "error")
        return redirect(url_for("admin.suppliers"))
    _run(
        lambda: services.create_supplier(
            db.session,
            _actor(),
            name=form.get("name", "")[:128],
            credit_code=form.get("credit_code", "")[:18],
            county=form.get("county", ""),
            contact=form.get("contact", "").strip()[:128] or None,
            households_lifted=int(households) if households else None,
        ),
        _("供应商已登记。"),
    )
    return redirect(url_for("admin.suppliers"))


@bp.post("/suppliers/<int:supplier_id>/certifications")
def add_certification(supplier_id: int) -> Response:
    try:
        supplier = services.get_supplier(db.session, supplier_id)
    except NotFound:
        abort(404)
    valid_from, valid_to = _date("valid_from"), _date("valid_to")
    number = request.form.get("number", "").strip()[:64]
    if valid_from is None or valid_to is None or not number:
        flash(_("请填写证书编号和有效期。"), "error")
        return redirect(url_for("admin.suppliers"))
    _run(
        lambda: services.add_certification(
            db.session, _actor(), supplier, number=number, valid_from=valid_from, valid_to=valid_to
        ),
        _("认定证书已登记。"),
    )
    return redirect(url_for("admin.suppliers"))


# --- products, stock and prices ----------------------------------------------------------------


def _whole_number(name: str) -> int | None:
    raw = request.form.get(name, "").strip()
    try:
        return int(raw)
    except ValueError:
        return None


@bp.get("/products")
def products() -> str:
    rows = db.session.scalars(
        select(Product).join(Product.supplier).order_by(Product.category, Product.sku)
    ).all()
    return render_template(
        "admin/products.html",
        products=rows,
        categories=list(Category),
        suppliers=db.session.scalars(select(Supplier).order_by(Supplier.id)).all(),
    )


@bp.post("/products/<sku>")
def update_product(sku: str) -> Response:
    price_fen = fen_from_yuan(request.form.get("price", ""))
    stock = _whole_number("stock")
    if price_fen is None or stock is None:
        flash(_("请填写有效的价格（元，最多两位小数）和库存（整数）。"), "error")
        return redirect(url_for("admin.products"))
    changes: dict[str, Any] = {
        "price_fen": price_fen,
        "stock": stock,
        "active": request.form.get("active") == "on",
    }
    try:
        product = services.get_product_for_update(db.session, sku)
    except NotFound:
        abort(404)
    changes = {key: value for key, value in changes.items() if getattr(product, key) != value}
    if not changes:
        db.session.rollback()
        flash(_("%(sku)s 没有改动。", sku=sku), "success")
        return redirect(url_for("admin.products"))
    _run(
        lambda: services.save_product(db.session, _actor(), product, changes),
        _("%(sku)s 已保存。", sku=sku),
    )
    return redirect(url_for("admin.products"))


@bp.post("/products")
def create_product() -> Response:
    form = request.form
    price_fen = fen_from_yuan(form.get("price", ""))
    stock = _whole_number("stock")
    supplier_id = _whole_number("supplier_id")
    required = ("sku", "name", "name_en", "category", "pack")
    if (
        price_fen is None
        or stock is None
        or supplier_id is None
        or not all(form.get(name, "").strip() for name in required)
    ):
        flash(_("请完整填写商品信息：价格以元为单位，库存为整数。"), "error")
        return redirect(url_for("admin.products"))
    season_from = form.get("season_from", "").strip() or None
    season_to = form.get("season_to", "").strip() or None
    changes: dict[str, Any] = {
        "sku": form["sku"].strip()[:32],
        "name": form["name"].strip()[:128],
        "name_en": form["name_en"].strip()[:128],
        "category": form["category"],
        "supplier_id": supplier_id,
        "pack": form["pack"].strip()[:32],
        "price_fen": price_fen,
        "stock": stock,
        "certified": form.get("certified") == "on",
        "cold_chain": form.get("cold_chain") == "on",
        "description": form.get("description", "").strip()[:4000],
    }
    if season_from or season_to:
        changes.update(season_from=season_from, season_to=season_to)
    _run(
        lambda: services.save_product(db.session, _actor(), None, changes),
        _("商品 %(sku)s 已创建。", sku=changes["sku"]),
    )
    return redirect(url_for("admin.products"))


# --- fulfilment and refunds --------------------------------------------------------------------


@bp.get("/orders")
def orders() -> str:
    status = request.args.get("status", "")
    query = select(Order).order_by(Order.created_at.desc())
    if status in {s.value for s in Status}:
        query = query.where(Order.status == status)
    else:
        status = ""
    page = db.paginate(query, page=page_number(), per_page=ORDERS_PER_PAGE, error_out=False)
    return render_template(
        "admin/orders.html", page=page, status=status, statuses=list(Status), refundable=REFUNDABLE
    )


def _order(number: str, *, lock: bool = False) -> Order:
    try:
        return get_order(db.session, number, lock=lock)
    except NotFound:
        abort(404)


@bp.post("/orders/<number>/shipment")
def ship(number: str) -> Response:
    order = _order(number, lock=True)
    carrier = request.form.get("carrier", "").strip()[:64]
    tracking_number = request.form.get("tracking_number", "").strip()[:64]

    def change() -> None:
        mark_shipped(
            db.session, order, carrier=carrier, tracking_number=tracking_number, actor=_actor()
        )

    _run(change, _("订单 %(number)s 已发货。", number=number))
    return _back("admin.orders")


@bp.post("/orders/<number>/refunds")
def refund_order(number: str) -> Response:
    order = _order(number)
    kind = request.form.get("kind", "full")
    amount_fen: int | None = None
    lines: list[tuple[str, int]] | None = None
    if kind == "amount":
        amount_fen = fen_from_yuan(request.form.get("amount", ""))
        if amount_fen is None:
            flash(_("请填写有效的退款金额（元，最多两位小数）。"), "error")
            return _back("admin.orders")
    elif kind == "lines":
        lines = []
        for line in order.lines:
            quantity = _whole_number(f"qty-{line.sku}")
            if quantity:
                lines.append((line.sku, quantity))
        if not lines:
            flash(_("请至少为一件商品填写退款数量。"), "error")
            return _back("admin.orders")
    # The refund service takes its own lock on the order.
    db.session.rollback()
    _run(
        lambda: refund(
            db.session,
            stripe_client(),
            number,
            actor=_actor(),
            amount_fen=amount_fen,
            lines=lines,
            reason=request.form.get("reason", "").strip()[:256],
        ),
        _("订单 %(number)s 的退款已提交。", number=number),
    )
    return _back("admin.orders")


# --- buying units and their members ------------------------------------------------------------

ORGANISATION_FIELDS = (
    "name",
    "type",
    "credit_code",
    "district",
    "reserved_target",
    "invoice_title",
    "tax_id",
    "default_funding",
    "payment_terms_days",
    "dual_approval_above",
)
# The unit service names amounts in fen; the form asks for 元.
ORGANISATION_FORM_FIELD = {
    "reserved_target_fen": "reserved_target",
    "dual_approval_above_fen": "dual_approval_above",
}


def _render_organisations(
    form: dict[str, str] | None = None,
    *,
    errors: dict[str, str] | None = None,
    message: str | None = None,
    status: int = 200,
) -> tuple[str, int]:
    organisations = db.session.scalars(
        select(Organisation)
        .options(
            joinedload(Organisation.district),
            selectinload(Organisation.members).joinedload(Membership.user),
        )
        .order_by(Organisation.id)
    ).all()
    return render_template(
        "admin/organisations.html",
        organisations=organisations,
        form=form or {"payment_terms_days": "30"},
        errors=errors or {},
        message=message,
        types=list(OrganisationType),
        districts=db.session.scalars(select(District).order_by(District.code)).all(),
        fundings=units.UNIT_FUNDING,
        roles=list(MemberRole),
    ), status


@bp.get("/organisations")
def organisations() -> tuple[str, int]:
    return _render_organisations()


@bp.post("/organisations")
def create_organisation() -> Any:
    form = {name: request.form.get(name, "").strip()[:128] for name in ORGANISATION_FIELDS}
    errors: dict[str, str] = {}
    target_fen = fen_from_yuan(form["reserved_target"] or "0")
    if target_fen is None or target_fen < 0:
        errors["reserved_target"] = _("请填写预留份额（元，最多两位小数）。")
    threshold_fen = (
        fen_from_yuan(form["dual_approval_above"]) if form["dual_approval_above"] else None
    )
    if form["dual_approval_above"] and (threshold_fen is None or threshold_fen <= 0):
        errors["dual_approval_above"] = _("双人审批额度应为正的金额（元），不需要时留空。")
    terms = _whole_number("payment_terms_days")
    if terms is None:
        errors["payment_terms_days"] = _("账期应为整数天。")
    if errors:
        return _render_organisations(form, errors=errors, status=422)
    assert target_fen is not None and terms is not None
    try:
        organisation = units.create_organisation(
            db.session,
            _actor(),
            name=form["name"],
            type=form["type"],
            credit_code=form["credit_code"],
            district=form["district"],
            reserved_target_fen=target_fen,
            invoice_title=form["invoice_title"],
            tax_id=form["tax_id"],
            default_funding=form["default_funding"] or None,
            payment_terms_days=terms,
            dual_approval_above_fen=threshold_fen,
        )
    except InvalidInput as exc:
        db.session.rollback()
        for detail in exc.details:
            field = str(detail.get("field", ""))
            errors.setdefault(
                ORGANISATION_FORM_FIELD.get(field, field), str(detail.get("message", ""))
            )
        return _render_organisations(form, errors=errors, message=exc.message, status=422)
    except ShopError as exc:
        db.session.rollback()
        return _render_organisations(form, message=exc.message, status=exc.status)
    db.session.commit()
    flash(_("采购单位「%(name)s」已创建。", name=organisation.name), "success")
    return redirect(url_for("admin.organisations"), code=303)


@bp.post("/organisations/<int:organisation_id>/members")
def add_organisation_member(organisation_id: int) -> Response:
    organisation = db.session.get(Organisation, organisation_id)
    if organisation is None:
        abort(404)
    form = request.form
    email = form.get("email", "").strip()[:254]
    password = form.get("password", "")[:1024] or None
    _run(
        lambda: units.add_member(
            db.session,
            _actor(),
            organisation,
            email=email,
            role=form.get("role", ""),
            name=form.get("name", "").strip()[:64] or None,
            password=password,
        ),
        _("已把 %(email)s 加入「%(name)s」。", email=email, name=organisation.name),
    )
    return redirect(url_for("admin.organisations"), code=303)


# --- the audit trail ---------------------------------------------------------------------------


@bp.app_template_filter("audit_value")
def audit_value(value: Any, field: str = "") -> str:
    """One value of an audit entry as a person reads it: 元 for fen, Shanghai time for instants."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return _("是") if value else _("否")
    if field.endswith("_fen") and isinstance(value, int):
        return yuan(value)
    pairs = isinstance(value, list) and all(
        isinstance(item, list) and len(item) == 2 for item in value
    )
    if field == "tiers" and pairs and all(isinstance(price, int) for _q, price in value):
        return "；".join(
            _("%(quantity)s 件起 %(price)s", quantity=quantity, price=yuan(price))
            for quantity, price in value
        )
    if field == "lines" and pairs:
        return "；".join(f"{sku} × {quantity}" for sku, quantity in value)
    if field.endswith("_at") and isinstance(value, str):
        try:
            return f"{datetime.fromisoformat(value).astimezone(SHANGHAI):%Y-%m-%d %H:%M}"
        except ValueError:
            return value
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _audit_day(form: dict[str, str], name: str, errors: dict[str, str]) -> date | None:
    if not form[name]:
        return None
    try:
        return date.fromisoformat(form[name])
    except ValueError:
        errors[name] = _("请填写日期，格式为 YYYY-MM-DD。")
        return None


@bp.get("/audit")
def audit_log() -> tuple[str, int]:
    # PostgreSQL refuses NUL in text; nobody types one.
    limits = {"action": 64, "actor": 254, "target": 128, "from": 10, "to": 10}
    form = {
        name: request.args.get(name, "").replace("\x00", "").strip()[:limit]
        for name, limit in limits.items()
    }
    errors: dict[str, str] = {}
    filters = AuditFilter(
        action=form["action"] if form["action"] in ACTIONS else "",
        actor_email=form["actor"],
        target=form["target"],
        start=_audit_day(form, "from", errors),
        end=_audit_day(form, "to", errors),
    )
    page = None
    if not errors:
        page = db.paginate(
            audit_query(filters),
            page=page_number(),
            per_page=AUDIT_PER_PAGE,
            error_out=False,
        )
    return render_template(
        "admin/audit.html", page=page, form=form, errors=errors, actions=ACTIONS
    ), (422 if errors else 200)
