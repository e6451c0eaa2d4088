"""Finance JSON API: totals, exports and month close."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from flask import Response, send_file, url_for
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from shop.accounts.models import Role, User
from shop.api import api_blueprint, endpoint
from shop.errors import Conflict, NotFound
from shop.extensions import db
from shop.finance import exports
from shop.finance.models import ExportJob, ExportStatus
from shop.ledger import services as ledger
from shop.ledger.models import ClosedMonth

bp = api_blueprint("finance_api", __name__)
FINANCE = (Role.FINANCE,)
GROUPS = ", ".join(ledger.GROUPS)
RECENT_JOBS = 20


class RangeQuery(BaseModel):
    start: str | None = Field(
        None, alias="from", description="first Shanghai day, YYYY-MM-DD; default 1 January of `to`"
    )
    end: str | None = Field(None, alias="to", description="last Shanghai day; default today")


class TotalsQuery(RangeQuery):
    group_by: str = Field("", description=f"comma-separated, any of: {GROUPS}")


class DetailExportQuery(RangeQuery):
    format: str = Field("csv", description="csv | xlsx")


class TotalsExportQuery(TotalsQuery):
    format: str = Field("csv", description="csv | xlsx")


class TotalsRow(BaseModel):
    """One group: its keys (county, month, …) beside the amounts."""

    model_config = ConfigDict(extra="allow")

    amount_fen: int
    orders: int
    lines: int


class TotalsOut(BaseModel):
    rows: list[TotalsRow]
    total_fen: int
    # Each order once; a row counts an order in every row it has a line in.
    orders: int
    counted_only: bool = True
    start: date = Field(serialization_alias="from")
    end: date = Field(serialization_alias="to")
    group_by: list[str]


class ExportIn(BaseModel):
    report: str = Field(description="totals | detail")
    format: str = Field("csv", description="csv | xlsx")
    start: str | None = Field(
        None, alias="from", description="YYYY-MM-DD; default 1 January of `to`"
    )
    end: str | None = Field(None, alias="to", description="YYYY-MM-DD; default today")
    group_by: str | list[str] = Field("", description=f"totals only; any of: {GROUPS}")


class ExportStarted(BaseModel):
    id: str
    status: str
    url: str


class ExportOut(BaseModel):
    id: str
    report: str
    format: str
    status: str
    start: date = Field(serialization_alias="from")
    end: date = Field(serialization_alias="to")
    group_by: list[str]
    rows: int | None
    error: str
    created_at: datetime
    finished_at: datetime | None
    download_url: str | None

    @classmethod
    def of(cls, job: ExportJob) -> ExportOut:
        params = exports.job_params(job)
        done = job.status == ExportStatus.DONE
        return cls(
            id=job.id,
            report=job.report,
            format=job.format,
            status=job.status,
            start=date.fromisoformat(params["from"]),
            end=date.fromisoformat(params["to"]),
            group_by=list(params.get("group_by") or []),
            rows=job.rows,
            error=job.error,
            created_at=job.created_at,
            finished_at=job.finished_at,
            download_url=url_for(".export_file", job_id=job.id) if done else None,
        )


class ExportListOut(BaseModel):
    items: list[ExportOut]


class ClosedMonthOut(BaseModel):
    month: str
    total_fen: int
    entries: int
    closed_at: datetime


class ClosedMonthItem(ClosedMonthOut):
    closed_by: str
    unchanged: bool


class ClosedMonthListOut(BaseModel):
    items: list[ClosedMonthItem]


# --- totals -----------------------------------------------------------------------------------


@endpoint(
    bp,
    "/finance/totals",
    "GET",
    summary="Counted consumption-assistance totals, grouped",
    query=TotalsQuery,
    response=TotalsOut,
    roles=FINANCE,
)
def finance_totals(user: User, query: TotalsQuery) -> TotalsOut:
    start, end = exports.report_range(query.start, query.end)
    group_by = ledger.parse_group_by(query.group_by)
    result = ledger.totals(db.session, start=start, end=end, group_by=group_by)
    return TotalsOut(
        rows=[TotalsRow(**row) for row in result.rows],
        total_fen=result.total_fen,
        orders=ledger.count_orders(db.session, start=start, end=end),
        start=start,
        end=end,
        group_by=group_by,
    )


# --- exports ----------------------------------------------------------------------------------


def _send(report: str, fmt: str, start: date, end: date, group_by: list[str]) -> Response:
    exports.check_report(report, fmt)
    handle = exports.report_file(db.session, report, fmt, start, end, group_by)
    db.session.rollback()  # the report only read; end its transaction before streaming
    return send_file(
        handle,
        mimetype=exports.MIMETYPES[fmt],
        as_attachment=True,
        download_name=exports.download_name(report, fmt, start, end),
    )


@endpoint(
    bp,
    "/finance/exports/totals",
    "GET",
    summary="Download the totals as CSV (UTF-8 with BOM) or xlsx",
    query=TotalsExportQuery,
    roles=FINANCE,
    files=tuple(exports.MIMETYPES.values()),
)
def export_totals(user: User, query: TotalsExportQuery) -> Response:
    start, end = exports.report_range(query.start, query.end)
    return _send("totals", query.format, start, end, ledger.parse_group_by(query.group_by))


@endpoint(
    bp,
    "/finance/exports/detail",
    "GET",
    summary="Download every ledger entry in the range, counted or not, as CSV or xlsx",
    query=DetailExportQuery,
    roles=FINANCE,
    files=tuple(exports.MIMETYPES.values()),
)
def export_detail(user: User, query: DetailExportQuery) -> Response:
    start, end = exports.report_range(query.start, query.end)
    return _send("detail", query.format, start, end, [])


@endpoint(
    bp,
    "/finance/exports",
    "POST",
    summary="Start an export job; poll its url until it is done",
    body=ExportIn,
    response=ExportStarted,
    status=202,
    roles=FINANCE,
    errors=(503,),
)
def start_export(user: User, body: ExportIn) -> ExportStarted:
    job = exports.start_export(
        db.session,
        user,
        body.report,
        body.format,
        {"from": body.start, "to": body.end, "group_by": body.group_by},
    )
    return ExportStarted(id=job.id, status=job.status, url=url_for(".export_status", job_id=job.id))


@endpoint(
    bp,
    "/finance/exports",
    "GET",
    summary="The latest export jobs",
    response=ExportListOut,
    roles=FINANCE,
)
def list_exports(user: User) -> ExportListOut:
    jobs = db.session.scalars(
        select(ExportJob).order_by(ExportJob.created_at.desc()).limit(RECENT_JOBS)
    )
    return ExportListOut(items=[ExportOut.of(job) for job in jobs])


def _job(job_id: str) -> ExportJob:
    job = db.session.get(ExportJob, job_id[:32])
    if job is None:
        raise NotFound("没有这个导出任务。")
    return job


@endpoint(
    bp,
    "/finance/exports/<job_id>",
    "GET",
    summary="An export job: its status, rows and, when done, where to download it",
    response=ExportOut,
    roles=FINANCE,
    errors=(404,),
)
def export_status(user: User, job_id: str) -> ExportOut:
    return ExportOut.of(_job(job_id))


@endpoint(
    bp,
    "/finance/exports/<job_id>/file",
    "GET",
    summary="Download the file of a finished export job",
    roles=FINANCE,
    errors=(404, 409),
    files=tuple(exports.MIMETYPES.values()),
)
def export_file(user: User, job_id: str) -> Any:
    job = _job(job_id)
    if job.status == ExportStatus.FAILED:
        raise Conflict(f"导出失败：{job.error or '请重新导出。'}", code="export_failed")
    if job.status != ExportStatus.DONE:
        raise Conflict("文件还在生成，请稍后再下载。", code="export_not_ready")
    path = exports.job_file(job)
    if path is None:
        raise NotFound("导出文件已不在服务器上，请重新导出。")
    params = exports.job_params(job)
    start, end = date.fromisoformat(params["from"]), date.fromisoformat(params["to"])
    return send_file(
        path,
        mimetype=exports.MIMETYPES[job.format],
        as_attachment=True,
        download_name=exports.download_name(job.report, job.format, start, end),
    )


# --- closing months ---------------------------------------------------------------------------


@endpoint(
    bp,
    "/finance/months/<month>/close",
    "POST",
    summary="Close a month (YYYY-MM): nothing dated inside it changes afterwards",
    response=ClosedMonthOut,
    status=201,
    roles=FINANCE,
    errors=(409, 422),
)
def close_month(user: User, month: str) -> ClosedMonthOut:
    closed = ledger.close_month(db.session, month, user)
    return ClosedMonthOut(
        month=closed.month,
        total_fen=closed.total_fen,
        entries=closed.entries,
        closed_at=closed.closed_at,
    )


@endpoint(
    bp,
    "/finance/months",
    "GET",
    summary="Closed months, newest first, each checked against what it held when closed",
    response=ClosedMonthListOut,
    roles=FINANCE,
)
def closed_months(user: User) -> ClosedMonthListOut:
    rows = db.session.execute(
        select(ClosedMonth, User.email)
        .join(User, User.id == ClosedMonth.closed_by)
        .order_by(ClosedMonth.month.desc())
    ).all()
    return ClosedMonthListOut(
        items=[
            ClosedMonthItem(
                month=closed.month,
                total_fen=closed.total_fen,
                entries=closed.entries,
                closed_at=closed.closed_at,
                closed_by=email,
                unchanged=ledger.month_unchanged(db.session, closed),
            )
            for closed, email in rows
        ]
    )
