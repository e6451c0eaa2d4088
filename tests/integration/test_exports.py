"""The export writers against the real database: exact yuan, neutralised text, streaming, jobs."""

from __future__ import annotations

import codecs
import csv
import io
import json
import tracemalloc
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from flask import Flask
from sqlalchemy import insert, select, update

from shop.accounts.models import User
from shop.catalog.models import County
from shop.extensions import db
from shop.finance import exports
from shop.finance.models import ExportJob, ExportStatus
from shop.ledger.models import LedgerEntry
from shop.ledger.services import rollup

DAY = date(2026, 3, 14)


def entry(origin: County, number: int, **overrides: Any) -> dict[str, Any]:
    """One ledger entry as the recognition service would write it for a paid line."""
    return {
        "source": "payment",
        "source_id": number,
        "line_no": 1,
        "day": DAY,
        "occurred_at": datetime(2026, 3, 14, 2, 30, 5, tzinfo=UTC),
        "reference": f"HQ{number:08d}",
        "amount_fen": 12800,
        "quantity": 1,
        "county_id": origin.id,
        "county": origin.name,
        "district": "惠城区",
        "buyer_type": "个人",
        "kind": "采购",
        "channel": "online",
        "funding": "个人",
        "category": "茶叶",
        "sku": "PA-TEA-001",
        "counted": True,
        "reason": "",
        **overrides,
    }


def add_entries(rows: list[dict[str, Any]]) -> None:
    db.session.execute(insert(LedgerEntry), rows)
    db.session.commit()


def pu_an() -> County:
    county = db.session.scalar(select(County).where(County.name == "普安县"))
    assert county is not None
    return county


def finance_user() -> User:
    user = db.session.scalar(select(User).where(User.email == "finance@example.com"))
    assert user is not None
    return user


def write(kind: str, fmt: str, path: Path, **kw: Any) -> int:
    rows = exports.write_report(
        db.session,
        kind,
        fmt,
        start=kw.pop("start", DAY),
        end=kw.pop("end", DAY),
        group_by=kw.pop("group_by", []),
        path=path,
    )
    db.session.rollback()
    return rows


def read_csv(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    assert data.startswith(codecs.BOM_UTF8)
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


@pytest.fixture
def ctx(app: Flask, tmp_path: Path) -> Any:
    app.config["EXPORT_DIR"] = tmp_path / "exports"
    with app.app_context():
        yield app
        db.session.remove()


def test_formula_starts_get_an_apostrophe_and_nothing_else_does() -> None:
    for text in ("=1+1", "+86 138", "-2", "@SUM(A1)", "\tcmd", "\rcmd"):
        assert exports.neutralised(text) == "'" + text
    for text in ("普安县", "HQ0001", "1=1", " =x", ""):
        assert exports.neutralised(text) == text


def test_yuan_are_exact_from_integer_fen() -> None:
    cases = {0: "0.00", 1: "0.01", -1: "-0.01", 5: "0.05", -50: "-0.50", 12800: "128.00"}
    cases[10**17 + 3] = "1000000000000000.03"  # beyond a double's exact integers
    for fen, text in cases.items():
        assert exports.yuan_text(fen) == text
        assert exports.yuan_number(fen) == Decimal(text)


def test_every_text_cell_is_neutralised_on_this_database(ctx: Flask, tmp_path: Path) -> None:
    county = pu_an()
    add_entries(
        [
            entry(
                county,
                1,
                reference="=cmd|' /C calc'!A0",
                sku="-EVIL",
                county="+普安县",
                district="@惠城区",
                category="\t茶叶",
                funding="\r个人",
                amount_fen=-1,
                quantity=-1,
                counted=False,
                reason="=原因",
            ),
            entry(county, 2, amount_fen=1),
        ]
    )
    path = tmp_path / "detail.csv"
    assert write("detail", "csv", path) == 2
    header, evil, plain, total = read_csv(path)
    cell = dict(zip(header, evil, strict=True))
    assert cell["订单号/参考号"] == "'=cmd|' /C calc'!A0"
    assert cell["SKU"] == "'-EVIL"
    assert cell["产地县"] == "'+普安县"
    assert cell["惠州区县"] == "'@惠城区"
    assert cell["品类"] == "'\t茶叶"
    assert cell["资金来源"] == "'\r个人"
    assert cell["不计入原因"] == "'=原因"
    assert (cell["金额（元）"], cell["数量"], cell["是否计入"]) == ("-0.01", "-1", "否")
    assert dict(zip(header, plain, strict=True))["金额（元）"] == "0.01"
    assert (total[0], total[header.index("金额（元）")]) == ("合计", "0.01")

    xlsx = tmp_path / "detail.xlsx"
    assert write("detail", "xlsx", xlsx) == 2
    sheet = openpyxl.load_workbook(xlsx).active
    values = {h: c for h, c in zip(header, sheet[2], strict=True)}
    assert values["订单号/参考号"].value == "'=cmd|' /C calc'!A0"
    assert values["订单号/参考号"].data_type == "s"
    assert Decimal(str(values["金额（元）"].value)) == Decimal("-0.01")
    assert values["金额（元）"].number_format == "#,##0.00"
    assert values["数量"].value == -1


def test_rows_written_leave_out_the_header_and_the_total(ctx: Flask, tmp_path: Path) -> None:
    county = pu_an()
    add_entries([entry(county, n, amount_fen=100 * n) for n in range(1, 6)])
    for fmt in ("csv", "xlsx"):
        path = tmp_path / f"detail.{fmt}"
        assert write("detail", fmt, path) == 5
    assert len(read_csv(tmp_path / "detail.csv")) == 5 + 2
    ungrouped = tmp_path / "totals.csv"
    assert write("totals", "csv", ungrouped) == 1
    header, only, total = read_csv(ungrouped)
    assert header == ["期间", "金额（元）", "订单数", "明细行数"]
    assert only == [f"{DAY} 至 {DAY}", "15.00", "5", "5"]
    assert total == ["合计", "15.00", "5", "5"]


def test_the_detail_streams_instead_of_loading_every_entry(ctx: Flask, tmp_path: Path) -> None:
    county = pu_an()
    count = 20_000
    add_entries([entry(county, n, reference=f"HQ{n:018d}") for n in range(1, count + 1)])
    path = tmp_path / "detail.csv"
    tracemalloc.start()
    try:
        assert write("detail", "csv", path) == count
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Twenty thousand rows of twenty cells held at once would take tens of MB.
    assert peak < 8 * 1024 * 1024, peak
    rows = read_csv(path)
    assert len(rows) == count + 2
    assert rows[-1][rows[0].index("金额（元）")] == f"{count * 128}.00"


def test_postgresql_copy_and_the_row_by_row_writer_give_the_same_bytes(
    ctx: Flask, tmp_path: Path
) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("COPY exists on PostgreSQL only; SQLite has the row-by-row writer alone")
    county = pu_an()
    add_entries(
        [
            entry(county, 1, reference='引号"和,逗号', reason="", counted=True),
            entry(county, 2, source="refund", amount_fen=-6400, quantity=0, sku=None),
            entry(county, 3, counted=False, reason="产地不是协作县", channel="unit"),
            entry(county, 4, occurred_at=datetime(2026, 3, 13, 16, 0, 0, 999999, tzinfo=UTC)),
        ]
    )
    copied, streamed = tmp_path / "copy.csv", tmp_path / "rows.csv"
    assert write("detail", "csv", copied) == 4
    assert exports._write_detail(db.session, "csv", DAY, DAY, streamed) == 4
    db.session.rollback()
    assert copied.read_bytes() == streamed.read_bytes()
    assert "2026-03-14 00:00:00" in copied.read_text(encoding="utf-8-sig")


def test_totals_match_the_rollups_and_the_detail(ctx: Flask, tmp_path: Path) -> None:
    county = pu_an()
    add_entries(
        [
            entry(county, 1, amount_fen=1001),
            entry(county, 2, amount_fen=2002, district="惠阳区"),
            entry(county, 3, amount_fen=999, counted=False, reason="下单时商品未获消费帮扶认定"),
        ]
    )
    rollup(db.session)
    add_entries([entry(county, 4, amount_fen=7, day=DAY + timedelta(days=1))])
    path = tmp_path / "totals.xlsx"
    end = DAY + timedelta(days=1)
    assert write("totals", "xlsx", path, end=end, group_by=["district", "day"]) == 3
    rows = [list(r) for r in openpyxl.load_workbook(path).active.iter_rows(values_only=True)]
    assert rows[0] == ["惠州区县", "日", "金额（元）", "订单数", "明细行数"]
    assert rows[-1][0] == "合计" and Decimal(str(rows[-1][2])) == Decimal("30.10")
    detail = tmp_path / "detail.csv"
    write("detail", "csv", detail, end=end)
    header, *body, total = read_csv(detail)
    amount, counted = header.index("金额（元）"), header.index("是否计入")
    assert sum(Decimal(r[amount]) for r in body if r[counted] == "是") == Decimal("30.10")
    assert Decimal(total[amount]) == Decimal("30.10")


def new_job(report: str = "detail", fmt: str = "csv", **params: Any) -> str:
    job = ExportJob(
        id=uuid.uuid4().hex,
        report=report,
        format=fmt,
        params=json.dumps({"from": str(DAY), "to": str(DAY), "group_by": [], **params}),
        requested_by=finance_user().id,
    )
    db.session.add(job)
    db.session.commit()
    return job.id


def test_running_a_job_twice_leaves_one_finished_file(ctx: Flask) -> None:
    add_entries([entry(pu_an(), 1)])
    job_id = new_job()
    first = exports.run_export(db.session, job_id)
    assert (first.status, first.rows, first.error) == (ExportStatus.DONE, 1, "")
    assert first.finished_at is not None
    path = exports.job_file(first)
    assert path is not None and path.parent == Path(ctx.config["EXPORT_DIR"])
    made = path.stat().st_mtime_ns
    second = exports.run_export(db.session, job_id)
    assert second.status == ExportStatus.DONE
    assert path.stat().st_mtime_ns == made
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_job_a_killed_worker_left_running_is_made_again(ctx: Flask) -> None:
    add_entries([entry(pu_an(), 1), entry(pu_an(), 2)])
    job_id = new_job()
    db.session.execute(
        update(ExportJob).where(ExportJob.id == job_id).values(status=ExportStatus.RUNNING)
    )
    db.session.commit()
    job = exports.run_export(db.session, job_id)
    assert (job.status, job.rows) == (ExportStatus.DONE, 2)
    assert len(read_csv(exports.job_file(job) or Path("missing"))) == 2 + 2


def test_a_job_that_cannot_be_made_is_failed_with_the_reason(ctx: Flask) -> None:
    job_id = new_job("totals", "xlsx", group_by=["colour"])
    job = exports.run_export(db.session, job_id)
    assert job.status == ExportStatus.FAILED
    assert "colour" in job.error
    assert exports.job_file(job) is None
    assert not list(Path(ctx.config["EXPORT_DIR"]).iterdir())


def test_starting_an_export_commits_the_job_before_the_task_runs(ctx: Flask) -> None:
    add_entries([entry(pu_an(), 1)])
    job = exports.start_export(
        db.session,
        finance_user(),
        "totals",
        "csv",
        {"from": str(DAY), "to": "", "group_by": "county"},
    )
    stored = json.loads(job.params)
    assert stored["from"] == str(DAY) and stored["group_by"] == ["county"]
    if ctx.config["CELERY"]["task_always_eager"]:
        # In-process, the task ran inside delay(): it could only find the job once committed.
        assert (job.status, job.rows) == (ExportStatus.DONE, 1)
    else:
        assert job.status in (ExportStatus.QUEUED, ExportStatus.RUNNING, ExportStatus.DONE)
