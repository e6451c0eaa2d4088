"""Finance over real HTTP: totals after paid orders, CSV and xlsx files, jobs, month close."""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import requests
from sqlalchemy import select

from shop.accounts.models import User
from shop.catalog.models import Supplier
from shop.db import utcnow
from shop.extensions import db
from shop.finance.models import ExportJob
from shop.timezones import shanghai_today
from tests.conftest import HUIZHOU_ADDRESS, LiveShop, bearer

BOM = codecs.BOM_UTF8
HYPERLINK = '=HYPERLINK("http://example.com/steal","点我领券")'
UNCOUNTED = {"PA-YC-001": "下单时商品未获消费帮扶认定", "XY-EK-001": "产地不是协作县"}
UNIT_FILE = (
    "商品编码,数量,收货人,电话,收货地址,区县\n"
    "PA-TEA-001,60,食堂甲,13800138001,江北街道文昌一路 8 号,惠城区\n"
    "XR-YR-001,30,食堂乙,13800138002,河南岸街道演达一路 2 号,惠城区\n"
    "PA-TEA-001,20,食堂乙,13800138002,河南岸街道演达一路 2 号,惠城区\n"
)
TWO_DECIMALS = r"^-?\d+\.\d{2}$"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def api(live: LiveShop, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    return requests.request(method, f"{live.url}/api/v1{path}", headers=headers, timeout=60, **kw)


def ok(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def this_month() -> str:
    return f"{shanghai_today(utcnow()):%Y-%m}"


def last_month_day() -> date:
    """The 15th of last month (Shanghai): always over, always before today."""
    return (shanghai_today(utcnow()).replace(day=1) - timedelta(days=1)).replace(day=15)


@dataclass
class Books:
    """What the shop sold in a test, and what finance should therefore see."""

    finance: dict[str, str]
    online: dict[str, Any]
    unit: dict[str, Any]
    start: date
    end: date
    # (county, month) → counted fen, and the whole counted total
    expected: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def total_fen(self) -> int:
        return sum(self.expected.values())

    def range(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}


def pay_online(live: LiveShop, buyer: dict[str, str], lines: list[dict[str, Any]]) -> Any:
    order = ok(
        api(live, "POST", "/orders", buyer, json={"lines": lines, "address": HUIZHOU_ADDRESS}),
        201,
    )
    live.control(f"checkout/sessions/{order['checkout_url'].rstrip('/').rsplit('/', 1)[-1]}/pay")
    live.wait_for_webhooks()
    paid = ok(api(live, "GET", f"/orders/{order['number']}", buyer))
    assert paid["status"] == "paid"
    return paid


def pay_unit_by_transfer(live: LiveShop, paid_on: date) -> Any:
    officer = live.token("officer@example.com")
    approver = live.token("approver@example.com")
    finance = live.token("finance@example.com")
    draft = ok(
        api(
            live,
            "POST",
            "/procurement/orders",
            officer,
            files={"file": ("order.csv", UNIT_FILE.encode("utf-8-sig"), "text/csv")},
        ),
        201,
    )
    ok(api(live, "POST", f"/procurement/orders/{draft['id']}/submit", officer))
    ok(api(live, "POST", f"/procurement/orders/{draft['id']}/approve", approver))
    paid = ok(
        api(
            live,
            "POST",
            "/finance/transfers",
            finance,
            json={
                "order": draft["number"],
                "amount_fen": draft["total_fen"],
                "paid_at": paid_on.isoformat(),
                "reference": f"BANK-{draft['number']}",
            },
        ),
        201,
    )
    live.wait_for_webhooks()
    return paid


def add_formula_product(live: LiveShop) -> str:
    """A certified product whose name is a spreadsheet formula, from a 贞丰县 supplier."""
    with live.app.app_context():
        supplier_id = db.session.scalar(
            select(Supplier.id).where(Supplier.name == "贞丰县顶坛花椒专业合作社")
        )
    ok(
        api(
            live,
            "POST",
            "/admin/products",
            live.token("admin@example.com"),
            json={
                "sku": "ZF-EVIL-001",
                "name": HYPERLINK,
                "name_en": "Formula",
                "category": "加工食品",
                "supplier_id": supplier_id,
                "pack": "1袋",
                "price_fen": 1234,
                "stock": 100,
                "certified": True,
            },
        ),
        201,
    )
    return "ZF-EVIL-001"


def certify_xingyi_supplier(live: LiveShop) -> None:
    """兴义市 is not a cooperation county: its certified goods are written but not counted."""
    with live.app.app_context():
        supplier_id = db.session.scalar(
            select(Supplier.id).where(Supplier.name == "兴义市黔味特色食品有限公司")
        )
    today = shanghai_today(utcnow())
    ok(
        api(
            live,
            "POST",
            f"/admin/suppliers/{supplier_id}/certifications",
            live.token("admin@example.com"),
            json={
                "number": "QXN-XF-2026-001",
                "valid_from": date(today.year - 1, 1, 1).isoformat(),
                "valid_to": date(today.year + 1, 12, 31).isoformat(),
            },
        ),
        201,
    )


@pytest.fixture
def books(live_shop: LiveShop) -> Books:
    """Online lines counted and not, a partial refund, a formula-named product, and a unit
    order paid by bank transfer last month."""
    buyer = live_shop.token("buyer@example.com")
    sku = add_formula_product(live_shop)
    certify_xingyi_supplier(live_shop)
    online = pay_online(
        live_shop,
        buyer,
        [
            {"sku": "PA-TEA-001", "quantity": 2},
            {"sku": "WM-MG-003", "quantity": 3},
            {"sku": "PA-YC-001", "quantity": 1},
            {"sku": "XY-EK-001", "quantity": 1},
            {"sku": sku, "quantity": 2},
        ],
    )
    refunded = ok(
        api(
            live_shop,
            "POST",
            f"/orders/{online['number']}/refunds",
            live_shop.token("admin@example.com"),
            json={"lines": [{"sku": "PA-TEA-001", "quantity": 1}]},
        ),
        201,
    )
    assert refunded["refunded_fen"] == 12800
    live_shop.wait_for_webhooks()
    paid_on = last_month_day()
    unit = pay_unit_by_transfer(live_shop, paid_on)
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for order, month in ((online, this_month()), (unit, f"{paid_on:%Y-%m}")):
        for line in order["lines"]:
            if line["sku"] not in UNCOUNTED:
                expected[(line["county"], month)] += line["amount_fen"]
    expected[("普安县", this_month())] -= 12800
    return Books(
        finance=live_shop.token("finance@example.com"),
        online=online,
        unit=unit,
        start=paid_on.replace(day=1),
        end=shanghai_today(utcnow()),
        expected=dict(expected),
    )


def totals(live: LiveShop, books: Books, **params: str) -> Any:
    return ok(api(live, "GET", "/finance/totals", books.finance, params=params))


def download(live: LiveShop, books: Books, path: str, **params: str) -> requests.Response:
    response = api(live, "GET", path, books.finance, params=params)
    assert response.status_code == 200, response.text
    return response


def csv_rows(data: bytes) -> list[list[str]]:
    assert data.startswith(BOM)
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


def workbook_rows(data: bytes) -> tuple[Any, list[list[Any]]]:
    sheet = openpyxl.load_workbook(io.BytesIO(data)).active
    return sheet, [list(row) for row in sheet.iter_rows(values_only=True)]


def fen(text: str) -> int:
    return int(Decimal(text) * 100)


# --- totals -----------------------------------------------------------------------------------


def test_totals_group_paid_orders_by_county_and_month(live_shop: LiveShop, books: Books) -> None:
    body = totals(live_shop, books, **books.range(), group_by="county,month")
    assert body["counted_only"] is True
    assert (body["from"], body["to"]) == (books.start.isoformat(), books.end.isoformat())
    seen = {(row["county"], row["month"]): row["amount_fen"] for row in body["rows"]}
    assert seen == books.expected
    assert body["total_fen"] == books.total_fen
    assert sorted(set(row) for row in body["rows"])[0] == {
        "county",
        "month",
        "amount_fen",
        "orders",
        "lines",
    }
    unit_cell = next(
        row
        for row in body["rows"]
        if row["county"] == "普安县" and row["month"] == f"{last_month_day():%Y-%m}"
    )
    assert (unit_cell["orders"], unit_cell["lines"]) == (1, 2)

    by_channel = totals(live_shop, books, **books.range(), group_by="channel")
    assert {row["channel"]: row["amount_fen"] for row in by_channel["rows"]} == {
        "online": sum(v for (_c, month), v in books.expected.items() if month == this_month()),
        "unit": sum(line["amount_fen"] for line in books.unit["lines"]),
    }


def test_totals_by_organisation_and_supplier_come_from_the_ledger_and_add_up(
    live_shop: LiveShop, books: Books
) -> None:
    body = totals(live_shop, books, **books.range(), group_by="organisation,supplier")
    assert body["total_fen"] == books.total_fen
    by_unit: dict[str, int] = {}
    for row in body["rows"]:
        assert row["supplier"], row
        by_unit[row["organisation"]] = by_unit.get(row["organisation"], 0) + row["amount_fen"]
    assert by_unit["惠州市惠城区机关事务服务中心"] == sum(
        line["amount_fen"] for line in books.unit["lines"]
    )
    assert by_unit[""] == books.total_fen - by_unit["惠州市惠城区机关事务服务中心"]


def test_the_total_counts_each_order_once_though_its_lines_sit_in_several_rows(
    live_shop: LiveShop, books: Books
) -> None:
    body = totals(live_shop, books, **books.range(), group_by="county")
    assert body["orders"] == 2  # the online order and the unit order
    assert sum(row["orders"] for row in body["rows"]) > 2  # each spans several counties
    exported = download(live_shop, books, "/finance/exports/totals", **books.range(), format="csv")
    total_row = csv_rows(exported.content)[-1]
    assert total_row[0] == "合计" and total_row[-2] == "2"


def test_totals_default_to_this_year_up_to_today(live_shop: LiveShop, books: Books) -> None:
    body = totals(live_shop, books)
    today = shanghai_today(utcnow())
    assert (body["from"], body["to"]) == (f"{today.year}-01-01", today.isoformat())
    assert body["group_by"] == []
    in_year = sum(
        v for (_c, month), v in books.expected.items() if month.startswith(str(today.year))
    )
    assert body["total_fen"] == in_year
    assert [row["amount_fen"] for row in body["rows"]] == [in_year]
    earlier = totals(live_shop, books, to=f"{today.year - 1}-06-30")
    assert (earlier["from"], earlier["to"]) == (
        f"{today.year - 1}-01-01",
        f"{today.year - 1}-06-30",
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-02-30"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-05-01", "to": "2026-04-30"}, "to"),
        ({"group_by": "county,colour"}, "group_by"),
    ],
)
def test_bad_dates_reversed_ranges_and_unknown_groups_are_422_with_details(
    client: Any, params: dict[str, str], field: str
) -> None:
    finance = bearer(client, "finance@example.com")
    for path in ("/api/v1/finance/totals", "/api/v1/finance/exports/totals"):
        response = client.get(path, headers=finance, query_string=params)
        assert response.status_code == 422, (path, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == "invalid_input"
        assert field in [detail["field"] for detail in error["details"]]
        assert any("\u4e00" <= char <= "\u9fff" for char in error["message"])


def test_unknown_formats_and_reports_are_422(client: Any) -> None:
    finance = bearer(client, "finance@example.com")
    for path in ("/api/v1/finance/exports/totals", "/api/v1/finance/exports/detail"):
        response = client.get(path, headers=finance, query_string={"format": "pdf"})
        assert response.status_code == 422
        assert response.get_json()["error"]["details"][0]["field"] == "format"
    started = client.post(
        "/api/v1/finance/exports", headers=finance, json={"report": "everything", "format": "csv"}
    )
    assert started.status_code == 422
    assert [d["field"] for d in started.get_json()["error"]["details"]] == ["report"]


FINANCE_CALLS = [
    ("GET", "/api/v1/finance/totals", None),
    ("GET", "/api/v1/finance/exports/totals?format=csv", None),
    ("GET", "/api/v1/finance/exports/detail?format=xlsx", None),
    ("POST", "/api/v1/finance/exports", {"report": "totals", "format": "csv"}),
    ("GET", "/api/v1/finance/exports", None),
    ("GET", "/api/v1/finance/exports/0123456789abcdef", None),
    ("GET", "/api/v1/finance/exports/0123456789abcdef/file", None),
    ("POST", "/api/v1/finance/months/2020-01/close", None),
    ("GET", "/api/v1/finance/months", None),
]


def test_only_finance_reads_totals_exports_and_closes_months(client: Any) -> None:
    people = {
        "anonymous": {},
        "buyer": bearer(client, "buyer@example.com"),
        "admin": bearer(client, "admin@example.com"),
        "finance": bearer(client, "finance@example.com"),
    }
    expected = {"anonymous": 401, "buyer": 403, "admin": 403}
    finance_status = {
        "/api/v1/finance/exports": {"POST": 202},
        "/api/v1/finance/exports/0123456789abcdef": {"GET": 404},
        "/api/v1/finance/exports/0123456789abcdef/file": {"GET": 404},
        "/api/v1/finance/months/2020-01/close": {"POST": 201},
    }
    for method, path, body in FINANCE_CALLS:
        for who, headers in people.items():
            response = client.open(path, method=method, headers=headers, json=body)
            want = (
                finance_status.get(path, {}).get(method, 200) if who == "finance" else expected[who]
            )
            assert response.status_code == want, (who, method, path, response.data[:300])


def test_the_openapi_document_describes_the_finance_endpoints(client: Any) -> None:
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    assert "get" in paths["/api/v1/finance/totals"]
    parameters = {p["name"] for p in paths["/api/v1/finance/totals"]["get"]["parameters"]}
    assert {"from", "to", "group_by"} <= parameters
    detail = paths["/api/v1/finance/exports/detail"]["get"]["responses"]["200"]["content"]
    assert {"text/csv; charset=utf-8", XLSX} <= set(detail)
    assert "202" in paths["/api/v1/finance/exports"]["post"]["responses"]
    assert {"404", "409"} <= set(paths["/api/v1/finance/exports/{job_id}/file"]["get"]["responses"])
    close = paths["/api/v1/finance/months/{month}/close"]["post"]["responses"]
    assert {"201", "409", "422"} <= set(close)


# --- files ------------------------------------------------------------------------------------


def test_totals_csv_has_a_bom_two_decimal_yuan_and_a_total_row(
    live_shop: LiveShop, books: Books
) -> None:
    response = download(
        live_shop,
        books,
        "/finance/exports/totals",
        format="csv",
        group_by="county,month",
        **books.range(),
    )
    assert response.headers["Content-Type"].startswith("text/csv")
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment")
    assert books.start.isoformat() in disposition and books.end.isoformat() in disposition
    rows = csv_rows(response.content)
    assert rows[0] == ["产地县", "月", "金额（元）", "订单数", "明细行数"]
    body, total = rows[1:-1], rows[-1]
    assert all(re.match(TWO_DECIMALS, row[2]) for row in [*body, total]), rows
    assert {(row[0], row[1]): fen(row[2]) for row in body} == books.expected
    assert total[0] == "合计"
    assert fen(total[2]) == books.total_fen


def test_detail_csv_lists_every_entry_with_reasons_and_neutralises_formulas(
    live_shop: LiveShop, books: Books
) -> None:
    response = download(live_shop, books, "/finance/exports/detail", format="csv", **books.range())
    rows = csv_rows(response.content)
    header, body, total = rows[0], rows[1:-1], rows[-1]
    column = {name: header.index(name) for name in header}
    assert header[:5] == ["台账号", "记账日", "发生时间（北京时间）", "来源", "订单号/参考号"]
    assert {"产地县", "惠州区县", "买家类型", "类型", "渠道", "资金来源", "品类", "数量"} <= set(
        header
    )
    assert header[-5:] == ["金额（元）", "是否计入", "不计入原因", "单位", "供应商"]
    # 5 online lines, 1 refund line, 3 unit lines: every entry, counted or not.
    assert len(body) == 9
    by_sku = defaultdict(list)
    for row in body:
        by_sku[row[column["SKU"]]].append(row)
    for sku, reason in UNCOUNTED.items():
        (row,) = by_sku[sku]
        assert (row[column["是否计入"]], row[column["不计入原因"]]) == ("否", reason)
    (formula,) = by_sku["ZF-EVIL-001"]
    assert formula[column["商品"]] == "'" + HYPERLINK
    assert formula[column["供应商"]] == "贞丰县顶坛花椒专业合作社"
    refund = next(row for row in body if row[column["来源"]] == "退款")
    assert refund[column["金额（元）"]] == "-128.00"  # a number, not neutralised
    assert refund[column["数量"]] == "-1"
    unit_rows = [row for row in body if row[column["订单号/参考号"]] == books.unit["number"]]
    assert {row[column["单位"]] for row in unit_rows} == {"惠州市惠城区机关事务服务中心"}
    assert {row[column["渠道"]] for row in unit_rows} == {"单位采购"}
    counted = sum(fen(row[column["金额（元）"]]) for row in body if row[column["是否计入"]] == "是")
    assert counted == books.total_fen
    assert (total[0], fen(total[column["金额（元）"]])) == ("合计", books.total_fen)
    for row in body:
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), row


def test_totals_xlsx_has_a_bold_header_frozen_panes_number_formats_and_the_api_total(
    live_shop: LiveShop, books: Books
) -> None:
    response = download(
        live_shop,
        books,
        "/finance/exports/totals",
        format="xlsx",
        group_by="county,month",
        **books.range(),
    )
    assert response.headers["Content-Type"] == XLSX
    assert ".xlsx" in response.headers["Content-Disposition"]
    sheet, rows = workbook_rows(response.content)
    assert rows[0] == ["产地县", "月", "金额（元）", "订单数", "明细行数"]
    assert all(cell.font.b for cell in sheet[1])
    assert sheet.freeze_panes == "A2"
    amounts = [row[2] for row in sheet.iter_rows(min_row=2)]
    assert {cell.number_format for cell in amounts} == {"#,##0.00"}
    assert all(isinstance(cell.value, int | float) for cell in amounts)
    api_total = totals(live_shop, books, **books.range(), group_by="county,month")["total_fen"]
    assert rows[-1][0] == "合计"
    assert Decimal(str(rows[-1][2])) == Decimal(api_total) / 100
    assert {(r[0], r[1]): round(Decimal(str(r[2])) * 100) for r in rows[1:-1]} == books.expected


def test_detail_csv_and_xlsx_hold_the_same_cells(live_shop: LiveShop, books: Books) -> None:
    as_csv = csv_rows(
        download(live_shop, books, "/finance/exports/detail", format="csv", **books.range()).content
    )
    xlsx = download(live_shop, books, "/finance/exports/detail", format="xlsx", **books.range())
    sheet, rows = workbook_rows(xlsx.content)
    assert sheet.freeze_panes == "A2"
    assert all(cell.font.b for cell in sheet[1])
    amount = as_csv[0].index("金额（元）")
    assert sheet.cell(row=2, column=amount + 1).number_format == "#,##0.00"

    def text(value: Any, column: int) -> str:
        if value is None:
            return ""
        if column == amount and not isinstance(value, str):
            return f"{Decimal(str(value)):.2f}"
        if hasattr(value, "hour"):
            return value.strftime("%Y-%m-%d %H:%M:%S" if column == 2 else "%Y-%m-%d")
        return str(value)

    assert [[text(v, i) for i, v in enumerate(row)] for row in rows] == as_csv


def test_detail_export_sum_of_counted_rows_is_the_totals_total(
    live_shop: LiveShop, books: Books
) -> None:
    _sheet, rows = workbook_rows(
        download(
            live_shop, books, "/finance/exports/detail", format="xlsx", **books.range()
        ).content
    )
    header = rows[0]
    amount, counted = header.index("金额（元）"), header.index("是否计入")
    total = sum(Decimal(str(r[amount])) for r in rows[1:-1] if r[counted] == "是")
    api_total = totals(live_shop, books, **books.range())["total_fen"]
    assert total == Decimal(api_total) / 100 == Decimal(str(rows[-1][amount]))


# --- export jobs ------------------------------------------------------------------------------


def wait_until_done(live: LiveShop, books: Books, url: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        body = ok(requests.get(f"{live.url}{url}", headers=books.finance, timeout=10))
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_an_export_job_runs_through_the_task_and_its_file_downloads(
    live_shop: LiveShop, books: Books, celery_worker: str | None
) -> None:
    started = ok(
        api(
            live_shop,
            "POST",
            "/finance/exports",
            books.finance,
            json={"report": "detail", "format": "csv", **books.range()},
        ),
        202,
    )
    assert set(started) == {"id", "status", "url"}
    assert started["url"] == f"/api/v1/finance/exports/{started['id']}"
    job = wait_until_done(live_shop, books, started["url"])
    assert job["status"] == "done", job
    assert (job["id"], job["report"], job["format"], job["rows"]) == (
        started["id"],
        "detail",
        "csv",
        9,
    )
    assert job["download_url"] == f"/api/v1/finance/exports/{started['id']}/file"
    file = requests.get(f"{live_shop.url}{job['download_url']}", headers=books.finance, timeout=30)
    assert file.status_code == 200
    assert books.start.isoformat() in file.headers["Content-Disposition"]
    rows = csv_rows(file.content)
    assert len(rows) == 9 + 2
    assert fen(rows[-1][rows[0].index("金额（元）")]) == books.total_fen

    grouped = ok(
        api(
            live_shop,
            "POST",
            "/finance/exports",
            books.finance,
            json={
                "report": "totals",
                "format": "xlsx",
                "group_by": ["county", "month"],
                **books.range(),
            },
        ),
        202,
    )
    job = wait_until_done(live_shop, books, grouped["url"])
    assert (job["status"], job["rows"], job["group_by"]) == (
        "done",
        len(books.expected),
        ["county", "month"],
    )
    listed = ok(api(live_shop, "GET", "/finance/exports", books.finance))["items"]
    assert {item["id"] for item in listed} == {started["id"], grouped["id"]}


def test_a_job_file_is_409_until_done_and_404_when_unknown(live_shop: LiveShop) -> None:
    finance = live_shop.token("finance@example.com")
    with live_shop.app.app_context():
        user = db.session.scalar(select(User).where(User.email == "finance@example.com"))
        assert user is not None
        db.session.add(
            ExportJob(
                id="f" * 32,
                report="detail",
                format="csv",
                params='{"from": "2026-01-01", "to": "2026-01-31", "group_by": []}',
                requested_by=user.id,
            )
        )
        db.session.commit()
    status = ok(api(live_shop, "GET", f"/finance/exports/{'f' * 32}", finance))
    assert (status["status"], status["download_url"]) == ("queued", None)
    waiting = api(live_shop, "GET", f"/finance/exports/{'f' * 32}/file", finance)
    assert waiting.status_code == 409
    assert waiting.json()["error"]["code"] == "export_not_ready"
    unknown = api(live_shop, "GET", f"/finance/exports/{'0' * 32}/file", finance)
    assert unknown.status_code == 404


# --- the command line -------------------------------------------------------------------------


def test_shop_export_totals_on_the_command_line_matches_the_api(
    live_shop: LiveShop, books: Books, database_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "汇总.xlsx"
    argv = [
        str(Path(sys.executable).parent / "shop"),
        "export",
        "totals",
        "--from",
        books.start.isoformat(),
        "--to",
        books.end.isoformat(),
        "--group-by",
        "county,month",
        "--format",
        "xlsx",
        "-o",
        str(output),
    ]
    done = subprocess.run(
        argv,
        env=dict(os.environ, DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {len(books.expected)} rows" in done.stdout
    _sheet, rows = workbook_rows(output.read_bytes())
    api_total = totals(live_shop, books, **books.range(), group_by="county,month")["total_fen"]
    assert rows[-1][0] == "合计"
    assert Decimal(str(rows[-1][2])) == Decimal(api_total) / 100 == Decimal(books.total_fen) / 100


# --- month close ------------------------------------------------------------------------------


def test_a_month_closes_once_and_only_when_it_is_over(live_shop: LiveShop, books: Books) -> None:
    month = f"{last_month_day():%Y-%m}"
    closed = ok(api(live_shop, "POST", f"/finance/months/{month}/close", books.finance), 201)
    unit_counted = sum(line["amount_fen"] for line in books.unit["lines"])
    assert (closed["month"], closed["total_fen"], closed["entries"]) == (
        month,
        unit_counted,
        len(books.unit["lines"]),
    )
    assert closed["closed_at"]
    again = api(live_shop, "POST", f"/finance/months/{month}/close", books.finance)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "month_closed"
    current = api(live_shop, "POST", f"/finance/months/{this_month()}/close", books.finance)
    assert current.status_code == 409
    assert current.json()["error"]["code"] == "month_not_over"
    for bad in ("2026-13", "last", "2026-1"):
        response = api(live_shop, "POST", f"/finance/months/{bad}/close", books.finance)
        assert response.status_code == 422, bad
    listed = ok(api(live_shop, "GET", "/finance/months", books.finance))["items"]
    assert [(m["month"], m["total_fen"], m["closed_by"], m["unchanged"]) for m in listed] == [
        (month, unit_counted, "finance@example.com", True)
    ]
