"""Finance pages: the dashboard, totals, discrepancies, month close and exports; unit invoices
past their due date, and bank transfers (对公转账) recorded."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import format_date
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import func, select, true
from werkzeug.wrappers import Response

from shop.accounts.models import Role, User
from shop.catalog.models import County, District
from shop.db import utcnow
from shop.errors import Conflict, InvalidInput, NotFound, ShopError
from shop.extensions import db, login_manager
from shop.finance import exports
from shop.finance.models import ExportJob, ExportStatus
from shop.ledger import services as ledger
from shop.ledger.models import ClosedMonth, LedgerEntry
from shop.orders.models import Channel, Order, Status
from shop.orders.services import get_order
from shop.payments.gateway import stripe_client
from shop.procurement import services
from shop.procurement.models import BankTransfer, Organisation
from shop.reconciliation import services as reconciliation
from shop.reconciliation.models import DiscrepancyStatus
from shop.timezones import shanghai_today
from shop.views import fen_from_yuan, html_blueprint, yuan

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


# --- amounts and charts ------------------------------------------------------------------------

WAN_FEN = 1_000_000  # 1 万元
YI_FEN = 10_000_000_000  # 1 亿元
NEWEST_DISCREPANCIES = 5
RECENT_EXPORTS = 5
TOP_ORGANISATIONS = 10
YEARS_SHOWN = 5


def in_units(fen: int, unit_fen: int, places: int) -> str:
    """Fen in 万元 or 亿元 with `places` decimals, rounded half away from zero, all in integers."""
    scale = 10**places
    rounded = (abs(fen) * scale * 2 + unit_fen) // (unit_fen * 2)
    whole, fraction = divmod(rounded, scale)
    sign = "-" if fen < 0 and rounded else ""
    return f"{sign}{whole:,}.{fraction:0{places}d}"


def basis_points(part: int, whole: int) -> int:
    """part / whole in hundredths of a percent, rounded half up (whole > 0)."""
    sign = -1 if part < 0 else 1
    return sign * ((abs(part) * 20_000 + whole) // (whole * 2))


def percent_text(points: int) -> str:
    sign = "-" if points < 0 else ""
    whole, hundredths = divmod(abs(points), 100)
    return f"{sign}{whole}.{hundredths:02d}%"


@dataclass(frozen=True)
class Bar:
    key: str
    amount_fen: int
    width: str  # of the longest bar, for the SVG: "42.50%"


def bars(items: Iterable[tuple[str, int]]) -> list[Bar]:
    """Chart bars sized against the largest amount; a net refund draws no bar."""
    pairs = list(items)
    longest = max((amount for _key, amount in pairs), default=0)
    result = []
    for key, amount in pairs:
        points = basis_points(max(amount, 0), longest) if longest > 0 else 0
        result.append(Bar(key, amount, percent_text(points)))
    return result


@dataclass(frozen=True)
class Progress:
    organisation: Organisation
    spent_fen: int
    percent: str | None  # None: the unit has no target
    meter: int  # 0–100, the width of the progress bar


def _this_year() -> int:
    return shanghai_today(utcnow()).year


def _year() -> int:
    raw = request.args.get("year", "").strip()
    if not raw:
        return _this_year()
    if not raw.isdigit() or not 2000 <= int(raw) <= _this_year() + 1:
        raise InvalidInput(
            _("年份应为 2000 至 %(last)s 之间的四位数字。", last=_this_year() + 1),
            details=[{"field": "year"}],
        )
    return int(raw)


def _organisation_spend(start: date, end: date) -> dict[int, int]:
    """Counted ledger amounts per organisation over the days given (their units' and staff's)."""
    rows = db.session.execute(
        select(LedgerEntry.organisation_id, func.sum(LedgerEntry.amount_fen))
        .where(
            LedgerEntry.counted == true(),
            LedgerEntry.day.between(start, end),
            LedgerEntry.organisation_id.is_not(None),
        )
        .group_by(LedgerEntry.organisation_id)
    )
    return {organisation_id: int(amount) for organisation_id, amount in rows if organisation_id}


def _progress(organisations: Sequence[Organisation], spend: dict[int, int]) -> list[Progress]:
    result = []
    for organisation in organisations:
        spent = spend.get(organisation.id, 0)
        target = organisation.reserved_target_fen
        points = basis_points(spent, target) if target else None
        result.append(
            Progress(
                organisation,
                spent,
                percent_text(points) if points is not None else None,
                min(max(points or 0, 0) // 100, 100),
            )
        )
    # The furthest behind first: they are the ones finance follows up.
    return sorted(result, key=lambda p: (p.percent is None, p.meter, p.organisation.name))


def _place_names() -> dict[str, dict[str, str]]:
    """English names of counties and districts, keyed by the Chinese name the ledger keeps."""
    return {
        "county": {c.name: c.name_en for c in db.session.scalars(select(County))},
        "district": {d.name: d.name_en for d in db.session.scalars(select(District))},
    }


def _month_keys(year: int) -> list[str]:
    today = shanghai_today(utcnow())
    last = today.month if year == today.year else 12
    return [f"{year}-{month:02d}" for month in range(1, last + 1)]


# --- dashboard ---------------------------------------------------------------------------------


@bp.get("/")
def dashboard() -> str:
    year = _year()
    start, end = date(year, 1, 1), date(year, 12, 31)
    by_county = ledger.totals(db.session, start=start, end=end, group_by=["county"])
    by_month = ledger.totals(db.session, start=start, end=end, group_by=["month"])
    monthly = {row["month"]: row["amount_fen"] for row in by_month.rows}
    month_keys = _month_keys(year)
    total_fen = by_county.total_fen
    spend = _organisation_spend(start, end)
    organisations = db.session.scalars(select(Organisation)).all()
    names = {o.id: o.name for o in organisations}
    top = sorted(spend.items(), key=lambda item: (-item[1], names.get(item[0], "")))
    open_items = reconciliation.list_discrepancies(db.session, status=DiscrepancyStatus.OPEN)
    this_year = _this_year()
    return render_template(
        "finance/dashboard.html",
        year=year,
        years=sorted({*range(this_year, this_year - YEARS_SHOWN, -1), year}, reverse=True),
        total_fen=total_fen,
        wan=in_units(total_fen, WAN_FEN, 2),
        yi=in_units(total_fen, YI_FEN, 4),
        county_bars=bars(
            sorted(
                ((row["county"], row["amount_fen"]) for row in by_county.rows),
                key=lambda pair: -pair[1],
            )
        ),
        month_bars=bars((month, monthly.get(month, 0)) for month in month_keys),
        top=[
            (names.get(org_id, str(org_id)), amount) for org_id, amount in top[:TOP_ORGANISATIONS]
        ],
        progress=_progress(organisations, spend),
        open_count=len(open_items),
        newest_open=open_items[:NEWEST_DISCREPANCIES],
        month_names={key: format_date(date(year, int(key[5:]), 1), "MMM") for key in month_keys},
        export_range={"from": start.isoformat(), "to": end.isoformat()},
        export_groups=DASHBOARD_EXPORT_GROUPS,
        export_api=url_for("finance_api.start_export"),
        recent_exports=db.session.scalars(
            select(ExportJob).order_by(ExportJob.created_at.desc()).limit(RECENT_EXPORTS)
        ).all(),
        names=_place_names(),
    )


# --- exports -----------------------------------------------------------------------------------

DASHBOARD_EXPORT_GROUPS = "county,month"


@bp.post("/exports")
def request_export() -> Response:
    """Start an export job (the no-script path; the dashboard's script calls the API instead)."""
    params = {
        "from": request.form.get("from", "").strip()[:10],
        "to": request.form.get("to", "").strip()[:10],
        "group_by": request.form.get("group_by", "").strip()[:200],
    }
    try:
        job = exports.start_export(
            db.session,
            _actor(),
            request.form.get("report", "").strip()[:16],
            request.form.get("format", "").strip()[:8],
            params,
        )
    except ShopError as exc:
        db.session.rollback()
        flash(exc.message, "error")
        return redirect(url_for("finance.dashboard"), code=303)
    db.session.commit()
    return redirect(url_for("finance.export_job", job_id=job.id), code=303)


@bp.get("/exports/<job_id>")
def export_job(job_id: str) -> str:
    job = db.session.get(ExportJob, job_id[:32])
    if job is None:
        abort(404)
    running = job.status in (ExportStatus.QUEUED, ExportStatus.RUNNING)
    return render_template(
        "finance/export.html",
        job=job,
        params=exports.job_params(job),
        running=running,
        download_url=url_for("finance_api.export_file", job_id=job.id),
    )


# --- totals ------------------------------------------------------------------------------------

TOTAL_GROUPS = (
    "county",
    "district",
    "buyer_type",
    "kind",
    "channel",
    "funding",
    "category",
    "supplier",
    "organisation",
    "month",
)


def _parse_day(raw: str, errors: dict[str, str], field: str) -> date | None:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        errors[field] = _("请填写日期，格式为 YYYY-MM-DD。")
        return None


@bp.get("/totals")
def totals() -> tuple[str, int]:
    today = shanghai_today(utcnow())
    submitted = "from" in request.args or "to" in request.args
    form = {
        "from": request.args.get("from", f"{today.year}-01-01").strip()[:10],
        "to": request.args.get("to", today.isoformat()).strip()[:10],
    }
    chosen = request.args.getlist("group_by") if submitted else ["county"]
    errors: dict[str, str] = {}
    unknown = [name[:32] for name in chosen if name not in TOTAL_GROUPS]
    if unknown:
        errors["group_by"] = _("不能按 %(names)s 分组。", names="、".join(unknown))
    group_by = [name for name in TOTAL_GROUPS if name in chosen]
    start = _parse_day(form["from"], errors, "from")
    end = _parse_day(form["to"], errors, "to")
    result = None
    orders = 0
    if start and end and not errors:
        try:
            result = ledger.totals(db.session, start=start, end=end, group_by=group_by)
            orders = ledger.count_orders(db.session, start=start, end=end)
        except InvalidInput as exc:
            errors["to"] = exc.message
    days: dict[str, Any] = {"from": form["from"], "to": form["to"]}
    return render_template(
        "finance/totals.html",
        form=form,
        group_by=group_by,
        groups=TOTAL_GROUPS,
        errors=errors,
        result=result,
        orders=orders,
        downloads={
            **{
                f"totals-{fmt}": url_for(
                    "finance_api.export_totals", format=fmt, **days, group_by=",".join(group_by)
                )
                for fmt in ("csv", "xlsx")
            },
            **{
                f"detail-{fmt}": url_for("finance_api.export_detail", format=fmt, **days)
                for fmt in ("csv", "xlsx")
            },
        },
        names=_place_names(),
    ), (422 if errors else 200)


# --- discrepancies -----------------------------------------------------------------------------

DISCREPANCY_TABS = ("open", "repaired", "resolved", "all")


def _render_discrepancies(
    tab: str,
    *,
    errors: dict[int, str] | None = None,
    notes: dict[int, str] | None = None,
    status: int = 200,
) -> tuple[str, int]:
    if tab not in DISCREPANCY_TABS:
        tab = "open"
    items = reconciliation.list_discrepancies(db.session, status=None if tab == "all" else tab)
    everything = reconciliation.list_discrepancies(db.session)
    counts = {name: 0 for name in DISCREPANCY_TABS}
    for item in everything:
        counts[item.status] = counts.get(item.status, 0) + 1
    counts["all"] = len(everything)
    return render_template(
        "finance/discrepancies.html",
        tab=tab,
        tabs=DISCREPANCY_TABS,
        counts=counts,
        items=items,
        errors=errors or {},
        notes=notes or {},
    ), status


@bp.get("/discrepancies")
def discrepancies() -> tuple[str, int]:
    return _render_discrepancies(request.args.get("status", "open"))


@bp.post("/discrepancies/<int:discrepancy_id>/resolve")
def resolve_discrepancy(discrepancy_id: int) -> Any:
    tab = request.form.get("tab", "open")
    note = request.form.get("note", "").strip()[:2000]
    if not note:
        return _render_discrepancies(
            tab, errors={discrepancy_id: _("请写明处理说明，再标记为已处理。")}, status=422
        )
    try:
        reconciliation.resolve_discrepancy(db.session, discrepancy_id, _actor(), note)
    except NotFound:
        db.session.rollback()
        abort(404)
    except ShopError as exc:
        db.session.rollback()
        return _render_discrepancies(
            tab,
            errors={discrepancy_id: exc.message},
            notes={discrepancy_id: note},
            status=exc.status,
        )
    db.session.commit()
    flash(_("差异 #%(id)s 已标记为已处理。", id=discrepancy_id), "success")
    return redirect(url_for("finance.discrepancies", status=tab), code=303)


# --- month close -------------------------------------------------------------------------------


def _previous_month() -> str:
    today = shanghai_today(utcnow())
    year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    return f"{year}-{month:02d}"


def _render_months(month: str, *, error: str | None = None, status: int = 200) -> tuple[str, int]:
    closed = db.session.execute(
        select(ClosedMonth, User.name)
        .join(User, User.id == ClosedMonth.closed_by)
        .order_by(ClosedMonth.month.desc())
    ).all()
    return render_template(
        "finance/months.html",
        month=month,
        error=error,
        closed=[(row, name, ledger.month_unchanged(db.session, row)) for row, name in closed],
        latest=_previous_month(),
    ), status


@bp.get("/months")
def months() -> tuple[str, int]:
    return _render_months(_previous_month())


@bp.post("/months")
def close_month() -> Any:
    month = request.form.get("month", "").strip()[:16]
    try:
        closed = ledger.close_month(db.session, month, _actor())
    except InvalidInput as exc:
        db.session.rollback()
        return _render_months(month, error=exc.message, status=422)
    except Conflict as exc:
        db.session.rollback()
        flash(exc.message, "error")
        return redirect(url_for("finance.months"), code=303)
    flash(
        _(
            "%(month)s 已结账：计入合计 %(total)s，台账记录 %(entries)s 条。",
            month=closed.month,
            total=yuan(closed.total_fen),
            entries=closed.entries,
        ),
        "success",
    )
    return redirect(url_for("finance.months"), code=303)
