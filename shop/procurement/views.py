"""Unit procurement pages: the unit's dashboard, bulk and quick orders, approval and re-order."""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import stripe
from flask import (
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import NotFound as PageNotFound
from werkzeug.wrappers import Response

from shop.accounts.models import User
from shop.catalog.models import County, District
from shop.db import utcnow
from shop.errors import Forbidden, InvalidInput, ShopError
from shop.extensions import db, login_manager
from shop.orders.models import Order, Status
from shop.orders.services import PHONE, ShippingRule
from shop.payments.gateway import stripe_client
from shop.procurement import services
from shop.procurement.bulk import (
    MAX_FILE_BYTES,
    BulkFileError,
    BulkRow,
    PricedLine,
    Problem,
    check_bulk_rows,
    parse_quick_order,
    read_bulk_file,
)
from shop.procurement.models import Approval, MemberRole, Organisation
from shop.timezones import shanghai_today
from shop.views import html_blueprint, local_name

bp = html_blueprint("procurement", __name__, url_prefix="/procurement")

REQUESTER, APPROVER, VIEWER = MemberRole.REQUESTER, MemberRole.APPROVER, MemberRole.FINANCE_VIEWER
ANY_MEMBER = (REQUESTER, APPROVER, VIEWER)
DELIVERY_FIELDS = ("recipient", "phone", "address", "district")
FIELD_LIMITS = {"recipient": 64, "phone": 32, "address": 256, "district": 32}
QUICK_ORDER_MAX_CHARS = 100_000
# A previewed file travels back with the save button, compressed; this bounds what it may unpack to.
CARRIED_MAX_BYTES = 4 * MAX_FILE_BYTES

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLES = {
    "bulk-order-template.csv": "text/csv",
    "bulk-order-template.xlsx": (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    ),
}


@bp.before_request
def signed_in_only() -> Any:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    return None


@bp.errorhandler(Forbidden)
def not_allowed(exc: Forbidden) -> tuple[str, int]:
    return render_template("procurement/forbidden.html", message=exc.message), 403


@bp.app_context_processor
def procurement_nav() -> dict[str, Any]:
    """Whether the signed-in person belongs to a unit, for the 单位采购 link."""
    if not current_user.is_authenticated:
        return {"unit_member": False}
    try:
        services.organisation_for(db.session, _user(), *ANY_MEMBER)
    except Forbidden:
        return {"unit_member": False}
    except SQLAlchemyError:
        # An error page rendered because the database failed must not fail again on a nav link.
        db.session.rollback()
        return {"unit_member": False}
    return {"unit_member": True}


@bp.app_template_filter("wan_yuan")
def wan_yuan(fen: int | None) -> str:
    """Fen as 万元 with two decimals (1,121,000 fen → 1.12), the unit people read targets in."""
    if fen is None:
        return ""
    amount = (Decimal(fen) / Decimal(1_000_000)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return f"{amount:,}"


def _user() -> User:
    user: User = current_user._get_current_object()
    return user


def _organisation(*roles: MemberRole) -> Organisation:
    """The signed-in person's unit, or a 403 page that says what is missing."""
    try:
        return services.organisation_for(db.session, _user(), *roles)
    except Forbidden:
        if roles == (REQUESTER,):
            message = _("只有采购单位的采购员可以下单。如需下单权限，请联系运营人员。")
        else:
            message = _(
                "你不是任何采购单位的成员，单位采购页面只对单位成员开放。"
                "如需开通，请联系运营人员把你加入所在单位。"
            )
        raise Forbidden(message) from None


def _commit(change: Callable[[], object], success: str) -> bool:
    """Apply one service call and commit it, or roll it back and say why on the next page."""
    try:
        change()
    except ShopError as exc:
        db.session.rollback()
        flash(_said(exc), "error")
        return False
    db.session.commit()
    flash(success, "success")
    return True


def _said(exc: ShopError) -> str:
    problems = [str(d["message"]) for d in exc.details if d.get("message")]
    return exc.message + (" " + "；".join(problems) if problems else "")


# --- the unit's dashboard ----------------------------------------------------------------------


@bp.get("/")
def dashboard() -> str:
    organisation = _organisation(*ANY_MEMBER)
    this_year = shanghai_today(utcnow()).year
    year = request.args.get("year", type=int) or this_year
    if not 2000 <= year <= 2100:
        year = this_year
    status = request.args.get("status", "")
    if status not in {s.value for s in Status}:
        status = ""
    return render_template(
        "procurement/dashboard.html",
        organisation=organisation,
        progress=services.summary(db.session, organisation, year),
        orders=services.unit_orders(db.session, organisation, status or None),
        roles=services.roles_in(db.session, _user(), organisation.id),
        county_labels={c.name: local_name(c) for c in db.session.scalars(select(County))},
        year=year,
        this_year=this_year,
        status=status,
        statuses=list(Status),
    )


# --- new orders: bulk file, quick order --------------------------------------------------------


def _districts() -> list[District]:
    return list(db.session.scalars(select(District).order_by(District.code)))


def _posted_form(organisation: Organisation) -> dict[str, str]:
    form = {
        name: request.form.get(name, "").strip()[:limit] for name, limit in FIELD_LIMITS.items()
    }
    form["funding"] = request.form.get("funding", "") or organisation.default_funding
    return form


def _blank_form(organisation: Organisation) -> dict[str, str]:
    return {"funding": organisation.default_funding, **dict.fromkeys(DELIVERY_FIELDS, "")}


def _default_delivery(
    form: dict[str, str], *, required: bool
) -> tuple[services.Delivery | None, dict[str, str]]:
    """The form's default delivery, or None when left empty; with the fields that are wrong."""
    errors: dict[str, str] = {}
    given = [form[name] for name in ("recipient", "phone", "address")]
    if not any(given) and not form["district"] and not required:
        return None, errors
    labels = {"recipient": _("收货人"), "phone": _("电话"), "address": _("收货地址")}
    for name, label in labels.items():
        if not form[name]:
            errors[name] = _("请填写%(field)s。", field=label)
    if form["phone"] and not PHONE.match(form["phone"]):
        errors["phone"] = _("请填写有效的手机或固定电话号码。")
    if form["district"] and form["district"] not in {d.name for d in _districts()}:
        errors["district"] = _("请从列表中选择惠州市的区县。")
    if errors:
        return None, errors
    delivery = services.Delivery(
        form["recipient"], form["phone"], form["address"], form["district"]
    )
    return delivery, errors


def _render_new(
    organisation: Organisation,
    *,
    bulk: dict[str, str] | None = None,
    quick: dict[str, str] | None = None,
    status: int = 200,
    **page: Any,
) -> tuple[str, int]:
    return render_template(
        "procurement/new.html",
        organisation=organisation,
        bulk=bulk or _blank_form(organisation),
        quick=quick or {**_blank_form(organisation), "text": ""},
        districts=_districts(),
        fundings=services.UNIT_FUNDING,
        **page,
    ), status


def _problem_rows(exc: InvalidInput) -> list[dict[str, Any]]:
    """Each problem with its row and column; the message without its "第 N 行：" prefix."""
    rows = []
    for detail in exc.details:
        row = detail.get("row")
        message = str(detail.get("message") or "")
        if row is not None:
            message = message.removeprefix(f"第 {row} 行：")
        rows.append({"row": row, "column": detail.get("column"), "message": message})
    return rows


@bp.get("/new")
def new_order() -> tuple[str, int]:
    return _render_new(_organisation(REQUESTER))


@bp.get("/sample/<name>")
def sample(name: str) -> Response:
    if name not in SAMPLES:
        raise PageNotFound()
    return send_from_directory(SAMPLE_DIR, name, mimetype=SAMPLES[name], as_attachment=True)


def _carry(rows: list[BulkRow]) -> str:
    """A previewed file's rows, for the save button: the server checks them again on save."""
    fields = [[r.row, r.sku, r.quantity_text, *r.delivery] for r in rows]
    packed = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(zlib.compress(packed, 6)).decode("ascii")


def _uncarry(text: str) -> list[BulkRow]:
    expired = BulkFileError([Problem(None, None, _("预览的数据已失效，请重新选择文件上传。"))])
    try:
        inflater = zlib.decompressobj()
        packed = inflater.decompress(base64.urlsafe_b64decode(text), CARRIED_MAX_BYTES)
        if inflater.unconsumed_tail:
            raise expired
        fields = json.loads(packed)
    except (binascii.Error, ValueError, zlib.error) as exc:
        raise expired from exc
    if not isinstance(fields, list) or not fields:
        raise expired
    rows = []
    for item in fields:
        if not (
            isinstance(item, list)
            and len(item) == 7
            and isinstance(item[0], int)
            and all(isinstance(v, str) for v in item[1:3])
            and all(v is None or isinstance(v, str) for v in item[3:])
        ):
            raise expired
        rows.append(BulkRow(*item))
    return rows


def _uploaded_rows() -> tuple[list[BulkRow], str]:
    """Rows of the chosen file, or of the file previewed just before; and the file's name."""
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        # One byte over the limit is enough for the reader to say the file is too big.
        return read_bulk_file(upload.filename, upload.read(MAX_FILE_BYTES + 1)), upload.filename
    carried = request.form.get("carried", "")
    if carried:
        return _uncarry(carried), request.form.get("filename", "")[:128]
    raise BulkFileError([Problem(None, None, _("请选择要上传的订单文件（CSV 或 .xlsx）。"))])


def _shipping() -> ShippingRule:
    return ShippingRule.from_config(current_app.config)


@bp.post("/new")
def upload_order() -> Any:
    """预览 checks and prices the file; 保存草稿 saves it as a draft. A bad row saves nothing."""
    organisation = _organisation(REQUESTER)
    form = _posted_form(organisation)
    saving = request.form.get("action") == "save"
    delivery, field_errors = _default_delivery(form, required=False)
    if field_errors:
        return _render_new(organisation, bulk=form, bulk_errors=field_errors, status=422)
    filename = ""
    try:
        rows, filename = _uploaded_rows()
        lines = check_bulk_rows(db.session, rows, today=shanghai_today(utcnow()))
        if saving:
            order = services.create_draft(
                db.session,
                _user(),
                organisation,
                lines,
                funding=form["funding"],
                default_delivery=delivery,
                shipping=_shipping(),
            )
    except InvalidInput as exc:
        db.session.rollback()
        return _render_new(
            organisation,
            bulk=form,
            bulk_message=exc.message,
            bulk_problems=_problem_rows(exc),
            filename=filename,
            status=422,
        )
    if saving:
        db.session.commit()
        flash(_("草稿已保存：%(n)s 行商品。请核对后提交审批。", n=len(order.lines)), "success")
        return redirect(url_for("procurement.order_page", order_id=order.id), code=303)
    return _render_new(
        organisation,
        bulk=form,
        preview=_preview(lines),
        carried=_carry(rows),
        filename=filename,
    )


def _preview(lines: list[PricedLine]) -> dict[str, Any]:
    goods = sum(line.amount_fen for line in lines)
    shipping = _shipping().charge(goods, [line.product for line in lines])
    return {
        "lines": lines,
        "goods_fen": goods,
        "shipping_fen": shipping,
        "total_fen": goods + shipping,
    }


@bp.post("/quick")
def quick_order() -> Any:
    """快速下单: pasted "SKU 数量" lines become a draft delivered to one address."""
    organisation = _organisation(REQUESTER)
    form = _posted_form(organisation)
    form["text"] = request.form.get("text", "")[:QUICK_ORDER_MAX_CHARS]
    delivery, field_errors = _default_delivery(form, required=True)
    if field_errors:
        return _render_new(organisation, quick=form, quick_errors=field_errors, status=422)
    try:
        order = services.draft_from_rows(
            db.session,
            _user(),
            organisation,
            parse_quick_order(form["text"]),
            funding=form["funding"],
            default_delivery=delivery,
            shipping=_shipping(),
        )
    except InvalidInput as exc:
        db.session.rollback()
        return _render_new(
            organisation,
            quick=form,
            quick_message=exc.message,
            quick_problems=_problem_rows(exc),
            status=422,
        )
    db.session.commit()
    flash(_("草稿已保存：%(n)s 行商品。请核对后提交审批。", n=len(order.lines)), "success")
    return redirect(url_for("procurement.order_page", order_id=order.id), code=303)


# --- one unit order: submit, approve or reject, re-order ---------------------------------------


def _invoice_url(order: Order) -> str | None:
    """Stripe's hosted page of the order's invoice; the page does without it if Stripe is away."""
    if order.status != Status.AWAITING_PAYMENT or not order.stripe_invoice_id:
        return None
    try:
        invoice = stripe_client().v1.invoices.retrieve(order.stripe_invoice_id)
    except stripe.StripeError:
        current_app.logger.warning(
            "invoice %s of order %s not retrieved", order.stripe_invoice_id, order.number
        )
        return None
    return invoice.hosted_invoice_url or None


@bp.get("/orders/<int:order_id>")
def order_page(order_id: int) -> str:
    user = _user()
    order = services.unit_order(db.session, user, order_id, *ANY_MEMBER)
    organisation = db.session.get(Organisation, order.organisation_id)
    assert organisation is not None
    roles = services.roles_in(db.session, user, organisation.id)
    approvals = db.session.scalars(
        select(Approval).where(Approval.order_id == order.id).order_by(Approval.at)
    ).all()
    actor_ids = {change.actor_id for change in order.history if change.actor_id}
    actors = {u.id: u.name for u in db.session.scalars(select(User).where(User.id.in_(actor_ids)))}
    pending = order.status == Status.PENDING_APPROVAL
    decided = any(a.approver_id == user.id for a in approvals)
    return render_template(
        "procurement/order.html",
        order=order,
        organisation=organisation,
        approvals=approvals,
        approvals_needed=services.approvals_needed(organisation, order),
        approved_count=sum(1 for a in approvals if a.decision == "approved"),
        actors=actors,
        can_submit=REQUESTER in roles and order.status == Status.DRAFT,
        can_decide=APPROVER in roles and pending and order.user_id != user.id and not decided,
        own_pending=APPROVER in roles and pending and order.user_id == user.id,
        can_reorder=REQUESTER in roles,
        invoice_url=_invoice_url(order),
    )


def _back(order_id: int) -> Response:
    return redirect(url_for("procurement.order_page", order_id=order_id), code=303)


@bp.post("/orders/<int:order_id>/submit")
def submit(order_id: int) -> Response:
    user = _user()
    order = services.unit_order(db.session, user, order_id, REQUESTER, lock=True)
    _commit(
        lambda: services.submit(db.session, order, user),
        _("已提交审批，库存已为本订单预留。"),
    )
    return _back(order_id)


@bp.post("/orders/<int:order_id>/approve")
def approve(order_id: int) -> Response:
    user = _user()
    order = services.unit_order(db.session, user, order_id, APPROVER, lock=True)
    try:
        invoiced = services.approve(db.session, stripe_client(), order, user)
    except ShopError as exc:
        db.session.rollback()
        flash(_said(exc), "error")
        return _back(order_id)
    db.session.commit()
    if invoiced:
        flash(_("已批准。发票已开具，请在到期日前付款。"), "success")
    else:
        flash(_("已记录你的批准。该订单金额较大，还需另一位审批人批准。"), "success")
    return _back(order_id)


@bp.post("/orders/<int:order_id>/reject")
def reject(order_id: int) -> Response:
    user = _user()
    order = services.unit_order(db.session, user, order_id, APPROVER, lock=True)
    reason = request.form.get("reason", "").strip()[:256]
    _commit(
        lambda: services.reject(db.session, order, user, reason),
        _("已驳回，订单已取消，预留的库存已退回。"),
    )
    return _back(order_id)


@bp.post("/orders/<int:order_id>/reorder")
def reorder(order_id: int) -> Response:
    """再来一单: a new draft with today's prices, checked like a new file."""
    user = _user()
    past = services.unit_order(db.session, user, order_id, REQUESTER)
    try:
        order = services.reorder(db.session, user, past, shipping=_shipping())
    except ShopError as exc:
        db.session.rollback()
        flash(_("无法再来一单：") + _said(exc), "error")
        return _back(order_id)
    db.session.commit()
    flash(
        _("已按订单 %(number)s 生成新草稿，价格按今天的价格计算。", number=past.number), "success"
    )
    return _back(order.id)
