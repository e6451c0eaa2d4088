"""Totals and detail exports to CSV (UTF-8 with BOM) and xlsx, run by a task for large files.

Both reports end in a 合计 row that is the sum of the rows above it (the detail's sums the counted
entries only), so a file always adds up to the totals finance sees (SPEC §5 rule 7). Every text
cell that a spreadsheet would read as a formula is neutralised with a leading apostrophe
(shop.spreadsheets), in CSV, in xlsx and in SQL alike; amounts stay numbers, negative or not.

The detail report streams: on PostgreSQL the CSV is produced by `COPY (SELECT …) TO STDOUT`, with
the formatting and the neutralisation done in SQL; elsewhere, and for xlsx, rows are fetched in
batches and formatted here. The columns and their text are the same either way.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from flask import current_app
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from sqlalchemy import ColumnElement, Select, case, func, literal, literal_column, select, true
from sqlalchemy.engine import Connection

from shop.accounts.models import User
from shop.catalog.models import Product, Supplier
from shop.db import DbSession, utcnow
from shop.errors import InvalidInput, NotFound, ServiceUnavailable, ShopError
from shop.finance.models import ExportJob, ExportStatus
from shop.ledger.models import LedgerEntry
from shop.ledger.services import Totals, count_orders, parse_group_by, totals
from shop.procurement.models import Organisation
from shop.spreadsheets import FORMULA_CODES, neutralised, xlsx_text
from shop.timezones import SHANGHAI, shanghai_today

log = logging.getLogger(__name__)

REPORTS = {"totals": "汇总", "detail": "明细"}
FORMATS = ("csv", "xlsx")
MIMETYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
TOTAL_LABEL = "合计"
AMOUNT_HEADER = "金额（元）"
AMOUNT_FORMAT = "#,##0.00"
GROUP_HEADERS = {
    "county": "产地县",
    "district": "惠州区县",
    "buyer_type": "买家类型",
    "kind": "类型",
    "channel": "渠道",
    "funding": "资金来源",
    "category": "品类",
    "supplier": "供应商",
    "organisation": "单位",
    "day": "日",
    "month": "月",
    "year": "年",
}
SOURCE_LABELS = {"payment": "支付", "refund": "退款", "offline": "线下专柜"}
CHANNEL_LABELS = {"online": "线上商城", "unit": "单位采购", "offline": "线下专柜"}
YES, NO = "是", "否"
# Rows fetched per round trip when formatting here: about 3 MB of Python objects.
BATCH_ROWS = 1000
COPY_CHUNK_BYTES = 1 << 20


def yuan_text(fen: int) -> str:
    """Integer fen as 元 with two decimals, without passing through a float."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole}.{cents:02d}"


def yuan_number(fen: int) -> Decimal:
    return Decimal(fen) / 100


# --- what finance asks for ----------------------------------------------------------------------


def parse_day(raw: str | date | None, field: str, default: date) -> date:
    if isinstance(raw, date):
        return raw
    text = (raw or "").strip()
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"日期「{text[:20]}」无效，请写成 YYYY-MM-DD。",
            details=[{"field": field, "message": "日期应为 YYYY-MM-DD。"}],
        ) from None


def report_range(start: str | date | None, end: str | date | None) -> tuple[date, date]:
    """The Shanghai days asked for; by default from 1 January of the last day's year to today."""
    problems: list[dict[str, Any]] = []
    days: dict[str, date] = {}
    for field, raw in (("to", end), ("from", start)):
        default = days["to"].replace(month=1, day=1) if "to" in days else shanghai_today(utcnow())
        try:
            days[field] = parse_day(raw, field, default)
        except InvalidInput as exc:
            problems += exc.details
    if problems:
        raise InvalidInput("日期无效，请写成 YYYY-MM-DD。", details=problems)
    if days["to"] < days["from"]:
        raise InvalidInput(
            "结束日期不能早于开始日期。",
            details=[{"field": "to", "message": "结束日期不能早于开始日期。"}],
        )
    return days["from"], days["to"]


def check_report(report: str, fmt: str) -> None:
    problems = []
    if report not in REPORTS:
        problems.append({"field": "report", "message": "报表应为 totals 或 detail。"})
    if fmt not in FORMATS:
        problems.append({"field": "format", "message": "格式应为 csv 或 xlsx。"})
    if problems:
        raise InvalidInput("不支持这种报表或格式。", details=problems)


def download_name(report: str, fmt: str, start: date, end: date) -> str:
    return f"消费帮扶{REPORTS[report]}_{start.isoformat()}_{end.isoformat()}.{fmt}"


# --- writing a report ---------------------------------------------------------------------------


def write_report(
    session: DbSession,
    report: str,
    fmt: str,
    *,
    start: date,
    end: date,
    group_by: list[str],
    path: Path,
) -> int:
    """Write one report to `path`; returns the rows written, header and 合计 row excluded."""
    check_report(report, fmt)
    if end < start:
        raise InvalidInput("结束日期不能早于开始日期。", details=[{"field": "to"}])
    if report == "totals":
        group_by = parse_group_by(group_by)
        result = totals(session, start=start, end=end, group_by=group_by)
        table = _totals_table(result, group_by, start, end)
        table.total[-2] = count_orders(session, start=start, end=end)
        (_write_csv if fmt == "csv" else _write_xlsx)(table, path)
        return len(table.rows)
    if fmt == "csv" and session.get_bind().dialect.name == "postgresql":
        return _copy_detail_csv(session, start, end, path)
    return _write_detail(session, fmt, start, end, path)


@dataclass
class Table:
    """A small report held whole: the totals."""

    header: list[str]
    kinds: list[str]  # per column: text | int | amount
    rows: list[list[Any]]
    total: list[Any]


def _totals_table(result: Totals, group_by: Sequence[str], start: date, end: date) -> Table:
    rows: list[list[Any]]
    if group_by:
        header = [GROUP_HEADERS[key] for key in group_by]
        rows = [
            [_group_value(key, row[key]) for key in group_by]
            + [row["amount_fen"], row["orders"], row["lines"]]
            for row in result.rows
        ]
    else:
        # Nothing to group by: one row for the whole range, so 合计 has a column to sit in.
        header = ["期间"]
        period = f"{start.isoformat()} 至 {end.isoformat()}"
        rows = [[period, row["amount_fen"], row["orders"], row["lines"]] for row in result.rows]
    width = len(header)
    lines = sum(row[-1] for row in rows)
    # An order with lines in two rows is in both rows; the caller puts the distinct count here.
    total = [TOTAL_LABEL, *([""] * (width - 1)), result.total_fen, None, lines]
    return Table(
        header=[*header, AMOUNT_HEADER, "订单数", "明细行数"],
        kinds=["text"] * width + ["amount", "int", "int"],
        rows=rows,
        total=total,
    )


def _group_value(key: str, value: Any) -> str:
    text = "" if value is None else str(value)
    return CHANNEL_LABELS.get(text, text) if key == "channel" else text


def _csv_cell(kind: str, value: Any) -> Any:
    if value is None or value == "":
        return ""
    if kind == "amount":
        return yuan_text(value)
    if kind == "text":
        return neutralised(str(value))
    return value


class _LineFeedEnds:
    """Rows from a CRLF csv.writer, stored ending in LF as PostgreSQL's COPY ends them.

    csv.writer quotes a field holding a carriage return only when one ends its lines; COPY
    always quotes it. Writing CRLF rows and storing LF gives the same bytes as COPY.
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, line: str) -> int:
        return self.out.write(line[:-2] + "\n")


def _csv_writer(out: IO[str]) -> Any:
    return csv.writer(_LineFeedEnds(out), lineterminator="\r\n")


def _write_csv(table: Table, path: Path) -> None:
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = _csv_writer(out)
        writer.writerow(table.header)
        for row in [*table.rows, table.total]:
            writer.writerow([_csv_cell(kind, v) for kind, v in zip(table.kinds, row, strict=True)])


def _write_xlsx(table: Table, path: Path) -> None:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "汇总"
    sheet.append(table.header)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in table.rows:
        sheet.append([_xlsx_value(kind, v) for kind, v in zip(table.kinds, row, strict=True)])
    sheet.append([_xlsx_value(kind, v) for kind, v in zip(table.kinds, table.total, strict=True)])
    for cell in sheet[sheet.max_row]:
        cell.font = Font(bold=True)
    for column, kind in enumerate(table.kinds, start=1):
        if kind == "amount":
            for (cell,) in sheet.iter_rows(min_row=2, min_col=column, max_col=column):
                cell.number_format = AMOUNT_FORMAT
    for column, title in enumerate(table.header, start=1):
        sheet.column_dimensions[get_column_letter(column)].width = max(12, 2 * len(title) + 4)
    sheet.freeze_panes = "A2"
    workbook.save(path)


def _xlsx_value(kind: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if kind == "amount":
        return yuan_number(value)
    if kind == "text":
        return xlsx_text(str(value))
    return value


# --- the detail report --------------------------------------------------------------------------

# (header, kind, source column); kinds say how a value is written, in SQL or here.
DETAIL_COLUMNS = (
    ("台账号", "int", "id"),
    ("记账日", "day", "day"),
    ("发生时间（北京时间）", "time", "occurred_at"),
    ("来源", "source", "source"),
    ("订单号/参考号", "text", "reference"),
    ("SKU", "text", "sku"),
    ("商品", "text", "product"),
    ("产地县", "text", "county"),
    ("惠州区县", "text", "district"),
    ("买家类型", "text", "buyer_type"),
    ("类型", "text", "kind"),
    ("渠道", "channel", "channel"),
    ("资金来源", "text", "funding"),
    ("品类", "text", "category"),
    ("数量", "int", "quantity"),
    (AMOUNT_HEADER, "amount", "amount_fen"),
    ("是否计入", "counted", "counted"),
    ("不计入原因", "text", "reason"),
    ("单位", "text", "organisation"),
    ("供应商", "text", "supplier"),
)
DETAIL_HEADER = [header for header, _kind, _name in DETAIL_COLUMNS]
AMOUNT_INDEX = DETAIL_HEADER.index(AMOUNT_HEADER)
COUNTED_INDEX = DETAIL_HEADER.index("是否计入")
DETAIL_TOTAL_NOTE = "仅计入"


def _detail_select(start: date, end: date, *, formatted_in_sql: bool) -> Select[Any]:
    """Every entry booked from `start` to `end`, in the order written.

    No ORDER BY: the ledger is append-only, so its physical order is the order entries were
    written, and sorting a million wide rows would cost more than the rest of the export.
    Names come from small tables by hash join; formatted in SQL they are neutralised there once
    per name rather than once per entry.
    """
    entries = LedgerEntry.__table__
    names = {
        "organisation": (Organisation.__table__, "id", entries.c.organisation_id),
        "supplier": (Supplier.__table__, "id", entries.c.supplier_id),
        "product": (Product.__table__, "sku", entries.c.sku),
    }
    sources: dict[str, ColumnElement[Any]] = {column.name: column for column in entries.c}
    joined: Any = entries
    for name, (table, key, foreign) in names.items():
        value: ColumnElement[Any] = table.c.name
        if formatted_in_sql:
            value = _neutralised_sql(value)
        lookup = select(table.c[key].label("key"), value.label("name")).subquery(name)
        joined = joined.outerjoin(lookup, lookup.c.key == foreign)
        sources[name] = lookup.c.name
    columns = []
    for index, (_header, kind, name) in enumerate(DETAIL_COLUMNS):
        column = sources[name]
        if formatted_in_sql and name not in names:
            column = _formatted_sql(kind, column)
        columns.append(column.label(f"c{index}"))
    return select(*columns).select_from(joined).where(entries.c.day.between(start, end))


def _neutralised_sql(value: ColumnElement[Any]) -> ColumnElement[Any]:
    # ascii() reads the first character's code: cheaper than a substring compared six times.
    return func.nullif(
        case((func.ascii(value).in_(FORMULA_CODES), literal("'") + value), else_=value), ""
    )


def _labels_sql(value: ColumnElement[Any], labels: Mapping[str, str]) -> ColumnElement[Any]:
    return case(labels, value=value, else_=value)


def _formatted_sql(kind: str, value: ColumnElement[Any]) -> ColumnElement[Any]:
    if kind == "text":
        return _neutralised_sql(value)
    if kind == "amount":
        # bigint × numeric(3,2) is an exact numeric with two decimals: 12.80, -0.05, 0.00.
        return value * literal_column("0.01")
    if kind == "time":
        return func.date_trunc("second", func.timezone(SHANGHAI.key, value))
    if kind == "source":
        return _labels_sql(value, SOURCE_LABELS)
    if kind == "channel":
        return _labels_sql(value, CHANNEL_LABELS)
    if kind == "counted":
        return case((value == true(), literal(YES)), else_=literal(NO))
    return value


def _csv_formatter(kind: str) -> Callable[[Any], Any]:
    if kind == "text":
        return lambda value: neutralised(value) if value else ""
    if kind == "amount":
        return yuan_text
    if kind == "day":
        return date.isoformat
    if kind == "time":
        return lambda value: value.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    if kind == "source":
        return lambda value: SOURCE_LABELS.get(value, value)
    if kind == "channel":
        return lambda value: CHANNEL_LABELS.get(value, value)
    if kind == "counted":
        return lambda value: YES if value else NO
    return lambda value: value


def _detail_rows(session: DbSession, start: date, end: date) -> Iterator[Sequence[Any]]:
    statement = _detail_select(start, end, formatted_in_sql=False)
    # yield_per streams: a server-side cursor on PostgreSQL, fetchmany batches on SQLite.
    result = session.execute(statement.execution_options(yield_per=BATCH_ROWS))
    for partition in result.partitions():
        yield from partition


def _write_detail(session: DbSession, fmt: str, start: date, end: date, path: Path) -> int:
    rows = 0
    total_fen = 0
    if fmt == "csv":
        formatters = [_csv_formatter(kind) for _header, kind, _name in DETAIL_COLUMNS]
        with path.open("w", encoding="utf-8-sig", newline="") as out:
            writer = _csv_writer(out)
            writer.writerow(DETAIL_HEADER)
            for row in _detail_rows(session, start, end):
                writer.writerow([f(v) for f, v in zip(formatters, row, strict=True)])
                rows += 1
                if row[COUNTED_INDEX]:
                    total_fen += row[AMOUNT_INDEX]
            writer.writerow(_detail_total(total_fen, yuan_text(total_fen), ""))
        return rows
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("明细")
    _prepare_detail_sheet(sheet)
    cells = _xlsx_cells(sheet)
    for row in _detail_rows(session, start, end):
        sheet.append([make(v) for make, v in zip(cells, row, strict=True)])
        rows += 1
        if row[COUNTED_INDEX]:
            total_fen += row[AMOUNT_INDEX]
    total = _detail_total(total_fen, _styled(sheet, yuan_number(total_fen), AMOUNT_FORMAT), None)
    sheet.append([_bold(sheet, v) if isinstance(v, str) else v for v in total])
    workbook.save(path)
    return rows


def _detail_total(total_fen: int, amount: Any, blank: Any) -> list[Any]:
    row: list[Any] = [blank] * len(DETAIL_COLUMNS)
    row[0] = TOTAL_LABEL
    row[AMOUNT_INDEX] = amount
    row[COUNTED_INDEX] = DETAIL_TOTAL_NOTE
    return row


def _prepare_detail_sheet(sheet: WriteOnlyWorksheet) -> None:
    widths = {"int": 10, "day": 12, "time": 20, "amount": 14}
    for index, (header, kind, _name) in enumerate(DETAIL_COLUMNS, start=1):
        width = widths.get(kind, 2 * len(header) + 6)
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "A2"
    sheet.append([_bold(sheet, header) for header in DETAIL_HEADER])


def _bold(sheet: WriteOnlyWorksheet, value: Any) -> WriteOnlyCell:
    cell = WriteOnlyCell(sheet, value=value)
    cell.font = Font(bold=True)
    return cell


def _styled(sheet: WriteOnlyWorksheet, value: Any, number_format: str) -> WriteOnlyCell:
    cell = WriteOnlyCell(sheet, value=value)
    cell.number_format = number_format
    return cell


def _xlsx_cells(sheet: WriteOnlyWorksheet) -> list[Callable[[Any], Any]]:
    def for_kind(kind: str) -> Callable[[Any], Any]:
        if kind == "amount":
            return lambda value: _styled(sheet, yuan_number(value), AMOUNT_FORMAT)
        if kind == "time":
            return lambda value: _styled(
                sheet, value.astimezone(SHANGHAI).replace(tzinfo=None), "yyyy-mm-dd hh:mm:ss"
            )
        if kind == "day":
            return lambda value: _styled(sheet, value, "yyyy-mm-dd")
        if kind == "text":
            return lambda value: xlsx_text(value) if value else None
        return _csv_formatter(kind)

    return [for_kind(kind) for _header, kind, _name in DETAIL_COLUMNS]


def _copy_detail_csv(session: DbSession, start: date, end: date, path: Path) -> int:
    """PostgreSQL's COPY writes the rows; the 合计 comes from the same snapshot."""
    entries = LedgerEntry.__table__
    in_range = entries.c.day.between(start, end)
    statement = _detail_select(start, end, formatted_in_sql=True)
    # A connection of its own: the session's may already be in a READ COMMITTED transaction.
    with session.get_bind().engine.connect() as connection:
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            connection.exec_driver_sql("SET LOCAL DateStyle = 'ISO, YMD'")
            total_fen = connection.scalar(
                select(
                    func.coalesce(func.sum(entries.c.amount_fen).filter(entries.c.counted), 0)
                ).where(in_range)
            )
            sql = str(
                statement.compile(
                    dialect=connection.dialect, compile_kwargs={"literal_binds": True}
                )
            )
            with path.open("wb") as out:
                out.write(codecs.BOM_UTF8)
                out.write(_csv_line(DETAIL_HEADER))
                rows = _copy_to(connection, f"COPY ({sql}) TO STDOUT (FORMAT csv)", out)
                total = _detail_total(int(total_fen or 0), yuan_text(int(total_fen or 0)), "")
                out.write(_csv_line(total))
    return rows


def _copy_to(connection: Connection, sql: str, out: IO[bytes]) -> int:
    raw: Any = connection.connection.driver_connection
    with raw.cursor() as cursor:
        with cursor.copy(sql) as copy:
            buffer = bytearray()
            for data in copy:
                buffer += data
                if len(buffer) >= COPY_CHUNK_BYTES:
                    out.write(buffer)
                    buffer.clear()
            out.write(buffer)
        return int(cursor.rowcount)


def _csv_line(row: Sequence[Any]) -> bytes:
    line = io.StringIO()
    _csv_writer(line).writerow(row)
    return line.getvalue().encode("utf-8")


# --- jobs ---------------------------------------------------------------------------------------


def job_params(job: ExportJob) -> dict[str, Any]:
    return dict(json.loads(job.params))


def start_export(
    session: DbSession, actor: User, report: str, fmt: str, params: Mapping[str, Any]
) -> ExportJob:
    """Record an export job, commit it, and only then hand it to a worker."""
    check_report(report, fmt)
    start, end = report_range(params.get("from"), params.get("to"))
    group_by = parse_group_by(params.get("group_by")) if report == "totals" else []
    job = ExportJob(
        id=uuid.uuid4().hex,
        report=report,
        format=fmt,
        params=json.dumps({"from": start.isoformat(), "to": end.isoformat(), "group_by": group_by}),
        status=ExportStatus.QUEUED,
        requested_by=actor.id,
    )
    job_id = job.id
    session.add(job)
    session.commit()
    # Imported here: workers.tasks imports this module.
    from kombu.exceptions import OperationalError

    from workers.tasks import export

    try:
        # Nobody waits for the result (the job row says how it went): asking for one would
        # subscribe to the result store first, which fails otherwise than the broker does.
        export.apply_async((job_id,), ignore_result=True)
    except OperationalError as exc:
        log.exception("could not enqueue export %s", job_id)
        _finish(session, session.get(ExportJob, job_id), ExportStatus.FAILED, "无法排队。")
        raise ServiceUnavailable("导出任务暂时无法开始，请稍后重试。") from exc
    found = session.get(ExportJob, job_id, populate_existing=True)
    assert found is not None
    return found


def export_dir() -> Path:
    directory = Path(current_app.config["EXPORT_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def run_export(session: DbSession, job_id: str) -> ExportJob:
    """Produce a job's file. Safe to run twice: a done job is left alone, any other is (re)made.

    The file is written under a name of its own and renamed into place, so two runs at once
    (a redelivered task) each write a whole file and the last rename wins.
    """
    job = session.get(ExportJob, job_id)
    if job is None:
        raise NotFound(f"没有导出任务 {job_id}。")
    directory = export_dir()
    if job.status == ExportStatus.DONE and job.filename and (directory / job.filename).exists():
        return job
    job.status = ExportStatus.RUNNING
    job.error = ""
    session.commit()
    params = job_params(job)
    start, end = date.fromisoformat(params["from"]), date.fromisoformat(params["to"])
    filename = f"ledger-{job.report}_{start.isoformat()}_{end.isoformat()}_{job.id}.{job.format}"
    partial = directory / f".{filename}.{uuid.uuid4().hex}.part"
    try:
        rows = write_report(
            session,
            job.report,
            job.format,
            start=start,
            end=end,
            group_by=list(params.get("group_by") or []),
            path=partial,
        )
        session.rollback()  # ends the read; nothing was written
        os.replace(partial, directory / filename)
    except Exception as exc:
        session.rollback()
        partial.unlink(missing_ok=True)
        log.exception("export %s failed", job_id)
        message = exc.message if isinstance(exc, ShopError) else "生成文件时出错。"
        return _finish(session, session.get(ExportJob, job_id), ExportStatus.FAILED, message)
    job.rows = rows
    job.filename = filename
    return _finish(session, job, ExportStatus.DONE, "")


def _finish(session: DbSession, job: ExportJob | None, status: str, error: str) -> ExportJob:
    assert job is not None
    job.status = status
    job.error = error
    job.finished_at = utcnow()
    session.commit()
    return job


def job_file(job: ExportJob) -> Path | None:
    """The finished file of a done job, if it is still there."""
    if job.status != ExportStatus.DONE or not job.filename:
        return None
    path = export_dir() / job.filename
    return path if path.exists() else None


def report_file(
    session: DbSession, report: str, fmt: str, start: date, end: date, group_by: list[str]
) -> IO[bytes]:
    """A report written to an unnamed file, for a response to stream and then forget."""
    directory = export_dir()
    path = directory / f".download-{uuid.uuid4().hex}.{fmt}"
    try:
        write_report(session, report, fmt, start=start, end=end, group_by=group_by, path=path)
        handle = path.open("rb")
    finally:
        path.unlink(missing_ok=True)
    return handle
