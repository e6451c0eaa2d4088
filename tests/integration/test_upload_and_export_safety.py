"""Uploads within limits and refused by content, exports that never run, pages that never run
user text — each through the real endpoints (multipart uploads through the test client; the
exports over real HTTP with the Stripe emulator delivering webhooks).

Most tests share one shop (module scope) and each makes data of its own; the export test runs
last on the live shop, which starts from fresh demo data.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import zipfile
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import openpyxl
import openpyxl.xml
import pytest
import requests
from flask import Flask
from markupsafe import escape
from sqlalchemy import func, select

from shop.accounts.models import User
from shop.catalog.models import Supplier
from shop.config import load_config
from shop.db import utcnow
from shop.demo import demo_credit_code
from shop.extensions import db
from shop.ledger.models import OfflineImport
from shop.orders.models import Order
from shop.reconciliation.models import Discrepancy, DiscrepancyStatus
from shop.spreadsheets import MAX_FILE_BYTES, MAX_ROWS, MAX_SHEET_ROWS
from shop.timezones import shanghai_today
from tests.conftest import (
    HUIZHOU_ADDRESS,
    LiveShop,
    bearer,
    demo_shop,
)

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
# What a browser sends as a file's name: quotes and slashes never reach us unescaped.
IMG_NAME = "<img src=x onerror=alert(1)>.csv"
XSS = SCRIPT + IMG
ORDER_HEADER = "商品编码,数量,收货人,电话,收货地址,区县\r\n"
SALES_HEADER = "日期,SKU,金额,数量,柜台,区县\r\n"


@pytest.fixture(scope="module")
def shop(database_url: str, emulator: str) -> Iterator[Flask]:
    """One demo shop for the tests of this module that make only data of their own."""
    with demo_shop(database_url, emulator) as app:
        yield app


@pytest.fixture
def web(shop: Flask) -> Any:
    return shop.test_client()


def sign_in(client: Any, app: Flask, email: str) -> None:
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == email))
        db.session.remove()
    assert user_id is not None
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def csrf_token(client: Any, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.status_code
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match is not None
    return match.group(1)


def post_file(
    client: Any,
    path: str,
    data: bytes,
    name: str,
    *,
    headers: dict[str, str] | None = None,
    mimetype: str = "application/octet-stream",
    **fields: str,
) -> Any:
    return client.post(
        path,
        headers=headers or {},
        data={**fields, "file": (io.BytesIO(data), name, mimetype)},
        content_type="multipart/form-data",
    )


def counts(app: Flask) -> tuple[int, int]:
    """Orders and counter-sales imports: what a refused upload must not change."""
    with app.app_context():
        orders = db.session.scalar(select(func.count()).select_from(Order))
        imports = db.session.scalar(select(func.count()).select_from(OfflineImport))
        db.session.remove()
    return int(orders or 0), int(imports or 0)


class Uploads:
    """Every way a file reaches the shop: the order API and page, the counter-sales API and page."""

    def __init__(self, app: Flask, client: Any) -> None:
        self.app = app
        self.client = client
        self.officer = bearer(client, "officer@example.com")
        self.finance = bearer(client, "finance@example.com")

    def order_api(self, data: bytes, name: str, **kw: Any) -> Any:
        return post_file(
            self.client,
            "/api/v1/procurement/orders/preview",
            data,
            name,
            headers=self.officer,
            **kw,
        )

    def sales_api(self, data: bytes, name: str, **kw: Any) -> Any:
        return post_file(
            self.client, "/api/v1/finance/offline-sales", data, name, headers=self.finance, **kw
        )

    def order_page(self, data: bytes, name: str, **kw: Any) -> Any:
        sign_in(self.client, self.app, "officer@example.com")
        token = csrf_token(self.client, "/procurement/new")
        return post_file(self.client, "/procurement/new", data, name, csrf_token=token, **kw)

    def sales_page(self, data: bytes, name: str, **kw: Any) -> Any:
        sign_in(self.client, self.app, "finance@example.com")
        token = csrf_token(self.client, "/finance/offline-sales/")
        return post_file(self.client, "/finance/offline-sales/", data, name, csrf_token=token, **kw)


def api_refusal(response: Any) -> str:
    """The message of an unreadable file, however the endpoint words its summary."""
    assert response.status_code == 422, response.get_data(as_text=True)[:500]
    error = response.get_json()["error"]
    assert error["code"] in ("invalid_file", "invalid_rows")
    return " ".join([error["message"], *(d["message"] for d in error["details"])])


def page_refusal(response: Any) -> str:
    assert response.status_code == 422, response.status_code
    return response.get_data(as_text=True)


def xlsx_of(rows: list[list[Any]]) -> bytes:
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet()
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def csv_bytes(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8-sig")


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def parts_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# --- request and file limits ------------------------------------------------------------------


def test_a_body_over_the_request_limit_is_413_with_a_clear_message_everywhere(
    shop: Flask, web: Any
) -> None:
    assert load_config({})["MAX_CONTENT_LENGTH"] == 6 * 1024 * 1024
    limit = shop.config["MAX_CONTENT_LENGTH"]
    line = b"PA-TEA-001,1\r\n"
    huge = ORDER_HEADER.encode() + line * (limit // len(line) + 1)
    uploads = Uploads(shop, web)
    before = counts(shop)
    for send in (uploads.order_api, uploads.sales_api):
        response = send(huge, "order.csv")
        assert response.status_code == 413
        error = response.get_json()["error"]
        assert error["code"] == "request_entity_too_large"
        assert "超过了 6 MB 的上限" in error["message"] and "不能超过 5 MB" in error["message"]
    for send in (uploads.order_page, uploads.sales_page):
        page = send(huge, "order.csv")
        assert page.status_code == 413
        assert "超过了 6 MB 的上限" in page.get_data(as_text=True)
    assert counts(shop) == before

    # A previewed order travels back in a form field: one past Flask's 500 KB default for
    # fields is judged by the shop (here: stale), not refused by the server.
    sign_in(web, shop, "officer@example.com")
    token = csrf_token(web, "/procurement/new")
    saved = web.post(
        "/procurement/new",
        data={"csrf_token": token, "action": "save", "carried": "A" * 700_000},
    )
    assert saved.status_code == 422
    assert "预览的数据已失效" in saved.get_data(as_text=True)


def test_file_size_and_row_limits_hold_for_csv_and_xlsx_on_every_upload(
    shop: Flask, web: Any
) -> None:
    uploads = Uploads(shop, web)
    before = counts(shop)
    over_size = ORDER_HEADER.encode() + b"PA-TEA-001,1\r\n" * (MAX_FILE_BYTES // 14 + 1000)
    assert MAX_FILE_BYTES < len(over_size) < shop.config["MAX_CONTENT_LENGTH"]
    size_message = f"超过了 {MAX_FILE_BYTES // 1024 // 1024} MB 的上限"
    for send in (uploads.order_api, uploads.sales_api):
        assert size_message in api_refusal(send(over_size, "big.csv"))
    for send in (uploads.order_page, uploads.sales_page):
        assert size_message in page_refusal(send(over_size, "big.csv"))

    # One row past the limit; the rows need not be right, only there. Each reader is tried in
    # both formats, once through the API and once through the page.
    orders = [ORDER_HEADER.strip().split(","), *[["PA-TEA-001", 1]] * (MAX_ROWS + 1)]
    sales = [SALES_HEADER.strip().split(","), *[["2026-01-01"]] * (MAX_ROWS + 1)]
    row_message = f"超过 {MAX_ROWS} 行"
    assert row_message in api_refusal(uploads.order_api(csv_bytes(orders), "a.csv"))
    assert row_message in page_refusal(uploads.order_page(xlsx_of(orders), "a.xlsx"))
    assert row_message in api_refusal(uploads.sales_api(xlsx_of(sales), "a.xlsx"))
    assert row_message in page_refusal(uploads.sales_page(csv_bytes(sales), "a.csv"))
    assert counts(shop) == before


# --- what a workbook may hold -----------------------------------------------------------------


def crafted_workbooks(header: list[str], row: list[Any]) -> dict[str, tuple[bytes, str]]:
    """Each crafted file made from a sound one, and what its refusal must say."""
    valid = xlsx_of([header, row])
    parts = parts_of(valid)
    sheet_name = next(name for name in parts if name.startswith("xl/worksheets/"))
    sheet = parts[sheet_name]

    def with_sheet(content: bytes) -> bytes:
        return zip_of({**parts, sheet_name: content})

    body = sheet[sheet.index(b"<worksheet") :]
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    )
    external = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    invalid = "不是有效的 Excel (.xlsx) 文件"
    too_big = "解压后过大"
    return {
        "a member of 20 MB of spaces, 1000:1": (
            with_sheet(sheet.replace(b"</worksheet>", b" " * 20_000_000 + b"</worksheet>")),
            too_big,
        ),
        "members adding up past the unpacked limit, each below the ratio check": (
            zip_of({**parts, **{f"xl/media/{n}.xml": b"x" * 900_000 for n in range(60)}}),
            too_big,
        ),
        "600 members": (
            zip_of({**parts, **{f"xl/media/{n}.png": b"x" for n in range(600)}}),
            "个部件",
        ),
        "compressed with bzip2": (zip_of(parts, zipfile.ZIP_BZIP2), invalid),
        "a member named ../": (zip_of({**parts, "../../evil.xml": b"<x/>"}), invalid),
        "no workbook part": (zip_of({"readme.txt": b"hello"}), invalid),
        "a row numbered 999999999": (
            with_sheet(
                sheet.replace(
                    b"</sheetData>",
                    b'<row r="999999999"><c r="A999999999" t="inlineStr"><is><t>PA-TEA-001</t>'
                    b"</is></c></row></sheetData>",
                )
            ),
            f"超过 {MAX_SHEET_ROWS} 行",
        ),
        "an entity expanding a billion laughs": (
            with_sheet(laughs + body.replace(b"PA-TEA-001", b"&c;")),
            invalid,
        ),
        "an external entity naming /etc/passwd": (
            with_sheet(external + body.replace(b"PA-TEA-001", b"&e;")),
            invalid,
        ),
        "a shared string that is not there": (
            with_sheet(body.replace(b't="inlineStr"><is><t>SKU</t></is>', b't="s"><v>999</v>')),
            invalid,
        ),
        "a number cell holding text": (
            with_sheet(body.replace(b't="n"><v>3</v>', b't="n"><v>three</v>')),
            invalid,
        ),
        "cut short": (valid[: len(valid) // 2], invalid),
        "encrypted": (encrypted(zip_of(parts)), "设有密码"),
    }


def encrypted(data: bytes) -> bytes:
    """The same archive with every member flagged as encrypted, as a password-protected zip."""
    out = bytearray(data)
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (found := out.find(signature, start)) != -1:
            out[found + flag_at] |= 0x1
            start = found + 4
    return bytes(out)


def test_crafted_workbooks_are_refused_before_they_cost_anything(shop: Flask, web: Any) -> None:
    # openpyxl parses every part through defusedxml (a dependency) when it is installed.
    assert openpyxl.xml.DEFUSEDXML is True
    uploads = Uploads(shop, web)
    before = counts(shop)
    for send, header, row in (
        (uploads.order_api, ["SKU", "数量"], ["PA-TEA-001", 3]),
        (uploads.sales_api, SALES_HEADER.strip().split(","), ["2026-01-01", "PA-TEA-001", 128, 3]),
    ):
        for what, (data, says) in crafted_workbooks(header, row).items():
            assert len(data) <= MAX_FILE_BYTES, what
            message = api_refusal(send(data, "crafted.xlsx"))
            assert says in message, (what, message)
    assert counts(shop) == before


def test_the_content_decides_and_the_name_must_agree(shop: Flask, web: Any) -> None:
    uploads = Uploads(shop, web)
    before = counts(shop)
    order_csv = (ORDER_HEADER + "PA-TEA-001,20,,,,\r\n").encode("gbk")
    workbook = xlsx_of([["SKU", "数量"], ["PA-TEA-001", 20]])
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
    exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(64)
    cases = [
        (png, "photo.csv", "text/csv", "不是 CSV 或 Excel (.xlsx) 文件"),
        (exe, "setup.exe", "text/csv", "类型（.exe）不受支持"),
        (order_csv, "order.exe", "text/csv", "类型（.exe）不受支持"),
        (workbook, "order.xlsm", XLSX, "类型（.xlsm）不受支持"),
        (order_csv, "order.xlsx", XLSX, "不是有效的 Excel (.xlsx) 文件"),
        (png, "order.xlsx", XLSX, "不是有效的 Excel (.xlsx) 文件"),
        (workbook, "order.csv", "text/csv", "扩展名改回 .xlsx"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512), "order.xls", XLSX, "旧版 Excel (.xls)"),
        (order_csv.decode("gbk").encode("utf-16"), "order.csv", "text/csv", "UTF-16"),
    ]
    for data, name, declared, says in cases:
        for send in (uploads.order_api, uploads.sales_api):
            assert says in api_refusal(send(data, name, mimetype=declared)), name
        assert str(escape(says)) in page_refusal(uploads.order_page(data, name, mimetype=declared))
    assert counts(shop) == before

    # The declared type is never trusted, either way.
    for data, name in ((order_csv, "order.csv"), (workbook, "order.xlsx"), (order_csv, "order")):
        preview = uploads.order_api(data, name, mimetype="image/png")
        assert preview.status_code == 200, preview.get_json()
        assert [line["quantity"] for line in preview.get_json()["lines"]] == [20]


def test_a_delivery_longer_than_an_address_holds_is_a_row_problem(shop: Flask, web: Any) -> None:
    uploads = Uploads(shop, web)
    before = counts(shop)
    long_address = "江北街道文昌一路" * 40
    data = ORDER_HEADER + f"PA-TEA-001,20,{'李' * 65},13800138001,{long_address},惠城区\r\n"
    response = post_file(
        web,
        "/api/v1/procurement/orders",
        data.encode("utf-8"),
        "order.csv",
        headers=uploads.officer,
    )
    assert response.status_code == 422, response.get_data(as_text=True)[:300]
    details = response.get_json()["error"]["details"]
    assert [(d["row"], d["column"]) for d in details] == [(2, "收货人"), (2, "收货地址")]
    assert counts(shop) == before


# --- pages never run user text ------------------------------------------------------------------


def csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


def assert_escaped(html: str, text: str = XSS) -> None:
    assert "<script>alert(1)" not in html
    assert "<img src=x" not in html
    assert str(escape(text)) in html, f"{escape(text)} not shown"


def test_user_text_is_shown_escaped_on_every_page_that_shows_it(shop: Flask, web: Any) -> None:
    admin = bearer(web, "admin@example.com")
    with shop.app_context():
        supplier_id = db.session.scalar(
            select(Supplier.id).where(Supplier.name == "贞丰县顶坛花椒专业合作社")
        )
        db.session.remove()
    product = web.post(
        "/api/v1/admin/products",
        headers=admin,
        json={
            "sku": "ZF-XSS-001",
            "name": XSS,
            "name_en": XSS,
            "category": "加工食品",
            "supplier_id": supplier_id,
            "pack": "1袋",
            "price_fen": 1000,
            "stock": 100,
            "certified": True,
            "description": XSS,
        },
    )
    assert product.status_code == 201, product.get_json()
    unit = web.post(
        "/api/v1/admin/organisations",
        headers=admin,
        json={
            "name": XSS,
            "type": "机关事业单位",
            "credit_code": demo_credit_code("11", "441302", 901),
            "district": "惠城区",
            "reserved_target_fen": 100_000_00,
            "invoice_title": XSS,
            "tax_id": "91441300XSS0001",
        },
    )
    assert unit.status_code == 201, unit.get_json()
    for email, role in (
        ("xss-officer@example.com", "requester"),
        ("xss-ok@example.com", "approver"),
    ):
        member = web.post(
            f"/api/v1/admin/organisations/{unit.get_json()['id']}/members",
            headers=admin,
            json={"email": email, "role": role, "name": XSS, "password": "xss-password-123"},
        )
        assert member.status_code == 201, member.get_json()

    # The catalogue, the product, and the search box that echoes what was searched.
    assert_escaped(web.get("/", query_string={"q": XSS[:64]}).get_data(as_text=True))
    assert_escaped(web.get("/products/ZF-XSS-001").get_data(as_text=True))
    sign_in(web, shop, "admin@example.com")
    for page in ("/admin/products", "/admin/organisations"):
        assert_escaped(web.get(page).get_data(as_text=True))

    # A buyer's own address on their order.
    buyer = bearer(web, "buyer@example.com")
    address = {**HUIZHOU_ADDRESS, "name": XSS, "detail": XSS}
    placed = web.post(
        "/api/v1/orders",
        headers=buyer,
        json={"lines": [{"sku": "ZF-XSS-001", "quantity": 1}], "address": address},
    )
    assert placed.status_code == 201, placed.get_json()
    sign_in(web, shop, "buyer@example.com")
    assert_escaped(web.get(f"/orders/{placed.get_json()['number']}").get_data(as_text=True))

    # The unit's pages: the preview of an uploaded file (its deliveries, its bad cells and its
    # name), the draft, and the reason it was rejected for.
    sign_in(web, shop, "xss-officer@example.com")
    assert_escaped(web.get("/procurement/").get_data(as_text=True))
    token = csrf_token(web, "/procurement/new")
    good = csv_line(["ZF-XSS-001", "1", XSS, "13800138001", XSS, "惠城区"])
    preview = post_file(
        web, "/procurement/new", (ORDER_HEADER + good).encode(), IMG_NAME, csrf_token=token
    )
    assert preview.status_code == 200
    assert_escaped(preview.get_data(as_text=True))
    assert_escaped(preview.get_data(as_text=True), IMG_NAME)
    bad = post_file(
        web,
        "/procurement/new",
        (ORDER_HEADER + f"{SCRIPT},1,,,,\r\n").encode(),
        f"{SCRIPT}.csv",
        csrf_token=token,
    )
    assert_escaped(page_refusal(bad), SCRIPT)
    officer = bearer(web, "xss-officer@example.com", "xss-password-123")
    draft = post_file(
        web, "/api/v1/procurement/orders", (ORDER_HEADER + good).encode(), "o.csv", headers=officer
    )
    assert draft.status_code == 201, draft.get_json()
    order_id = draft.get_json()["id"]
    assert (
        web.post(f"/api/v1/procurement/orders/{order_id}/submit", headers=officer).status_code
        == 200
    )
    approver = bearer(web, "xss-ok@example.com", "xss-password-123")
    rejected = web.post(
        f"/api/v1/procurement/orders/{order_id}/reject", headers=approver, json={"reason": XSS}
    )
    assert rejected.status_code == 200, rejected.get_json()
    assert_escaped(web.get(f"/procurement/orders/{order_id}").get_data(as_text=True))

    # Finance: a discrepancy's note, and a counter-sales file's bad cells.
    with shop.app_context():
        found = Discrepancy(
            kind="amount_differs",
            status=DiscrepancyStatus.OPEN,
            stripe_object="pi_xss_escape_check",
            shop_fen=100,
            stripe_fen=200,
            currency="cny",
            detail="金额不一致",
        )
        db.session.add(found)
        db.session.commit()
        discrepancy_id = found.id
        db.session.remove()
    sign_in(web, shop, "finance@example.com")
    token = csrf_token(web, "/finance/discrepancies")
    resolved = web.post(
        f"/finance/discrepancies/{discrepancy_id}/resolve",
        data={"csrf_token": token, "note": XSS, "tab": "open"},
    )
    assert resolved.status_code == 303
    assert_escaped(web.get("/finance/discrepancies?status=resolved").get_data(as_text=True))
    day = shanghai_today(utcnow()) - timedelta(days=1)
    sales = (SALES_HEADER + f"{day},{SCRIPT},1,1,柜台,惠城区\r\n").encode()
    assert_escaped(page_refusal(Uploads(shop, web).sales_page(sales, "sales.csv")), SCRIPT)


# --- exports never run what people typed ----------------------------------------------------------

HYPERLINK = '=HYPERLINK("http://example.com/steal","点我领券")'
SUPPLIER = "@SUM(1) 贞丰县测试合作社"
UNIT = "+1 惠州市测试单位"
MINUS = "-2+3 刺梨干"
CONTROL = "普安\x0b红茶"  # a vertical tab pasted from Word: XML cannot hold it


def api(live: LiveShop, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    response = requests.request(
        method, f"{live.url}/api/v1{path}", headers=headers, timeout=60, **kw
    )
    return response


def created(response: requests.Response, status: int = 201) -> Any:
    assert response.status_code == status, response.text[:500]
    return response.json()


def formula_catalogue(live: LiveShop, admin: dict[str, str]) -> None:
    """A certified supplier and products whose names a spreadsheet would run."""
    today = shanghai_today(utcnow())
    supplier = created(
        api(
            live,
            "POST",
            "/admin/suppliers",
            admin,
            json={
                "name": SUPPLIER,
                "credit_code": demo_credit_code("93", "522325", 902),
                "county": "贞丰县",
            },
        )
    )
    created(
        api(
            live,
            "POST",
            f"/admin/suppliers/{supplier['id']}/certifications",
            admin,
            json={
                "number": "ZF-XSS-2026-01",
                "valid_from": date(today.year - 1, 1, 1).isoformat(),
                "valid_to": date(today.year + 1, 12, 31).isoformat(),
            },
        )
    )
    for sku, name in (("ZF-F-001", HYPERLINK), ("ZF-F-002", MINUS), ("ZF-F-003", CONTROL)):
        created(
            api(
                live,
                "POST",
                "/admin/products",
                admin,
                json={
                    "sku": sku,
                    "name": name,
                    "name_en": "Formula",
                    "category": "加工食品",
                    "supplier_id": supplier["id"],
                    "pack": "1袋",
                    "price_fen": 1200,
                    "stock": 500,
                    "certified": True,
                },
            )
        )


def formula_unit_paid_by_transfer(live: LiveShop, admin: dict[str, str]) -> None:
    unit = created(
        api(
            live,
            "POST",
            "/admin/organisations",
            admin,
            json={
                "name": UNIT,
                "type": "国有企业",
                "credit_code": demo_credit_code("91", "441302", 903),
                "district": "惠阳区",
                "reserved_target_fen": 100_000_00,
                "invoice_title": UNIT,
                "tax_id": "91441300FML0001",
            },
        )
    )
    for email, role in (
        ("fml-officer@example.com", "requester"),
        ("fml-ok@example.com", "approver"),
    ):
        created(
            api(
                live,
                "POST",
                f"/admin/organisations/{unit['id']}/members",
                admin,
                json={"email": email, "role": role, "name": "测试", "password": "fml-password-123"},
            )
        )
    officer = live.token("fml-officer@example.com", "fml-password-123")
    approver = live.token("fml-ok@example.com", "fml-password-123")
    rows = "".join(
        f"{sku},10,食堂,13800138001,文昌一路 8 号,惠阳区\r\n" for sku in ("ZF-F-001", "ZF-F-003")
    )
    draft = created(
        api(
            live,
            "POST",
            "/procurement/orders",
            officer,
            files={"file": ("order.csv", (ORDER_HEADER + rows).encode("utf-8-sig"), "text/csv")},
        )
    )
    created(api(live, "POST", f"/procurement/orders/{draft['id']}/submit", officer), 200)
    created(api(live, "POST", f"/procurement/orders/{draft['id']}/approve", approver), 200)
    created(
        api(
            live,
            "POST",
            "/finance/transfers",
            live.token("finance@example.com"),
            json={
                "order": draft["number"],
                "amount_fen": draft["total_fen"],
                "paid_at": shanghai_today(utcnow()).isoformat(),
                "reference": f"BANK-{draft['number']}",
            },
        )
    )


def formula_online_order_refunded(live: LiveShop, admin: dict[str, str]) -> None:
    buyer = live.token("buyer@example.com")
    order = created(
        api(
            live,
            "POST",
            "/orders",
            buyer,
            json={
                "lines": [{"sku": "ZF-F-001", "quantity": 1}, {"sku": "ZF-F-002", "quantity": 1}],
                "address": HUIZHOU_ADDRESS,
            },
        )
    )
    session_id = order["checkout_url"].rstrip("/").rsplit("/", 1)[-1]
    live.control(f"checkout/sessions/{session_id}/pay")
    live.wait_for_webhooks()
    assert created(api(live, "GET", f"/orders/{order['number']}", buyer), 200)["status"] == "paid"
    created(
        api(
            live,
            "POST",
            f"/orders/{order['number']}/refunds",
            admin,
            json={"lines": [{"sku": "ZF-F-002", "quantity": 1}], "reason": "=1+1"},
        )
    )
    live.wait_for_webhooks()


def csv_rows(data: bytes) -> list[list[str]]:
    assert data.startswith(codecs.BOM_UTF8)
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


def xlsx_rows(data: bytes) -> list[list[Any]]:
    sheet = openpyxl.load_workbook(io.BytesIO(data)).worksheets[0]
    for row in sheet.iter_rows():
        for cell in row:
            assert cell.data_type != "f", f"{cell.coordinate} is a formula: {cell.value!r}"
    return [list(row) for row in sheet.iter_rows(values_only=True)]


def test_exports_neutralise_what_people_typed_and_keep_refunds_numbers(
    live_shop: LiveShop,
) -> None:
    admin = live_shop.token("admin@example.com")
    formula_catalogue(live_shop, admin)
    formula_unit_paid_by_transfer(live_shop, admin)
    formula_online_order_refunded(live_shop, admin)
    finance = live_shop.token("finance@example.com")
    today = shanghai_today(utcnow()).isoformat()
    span = {"from": today, "to": today}

    def export(report: str, fmt: str, **params: str) -> bytes:
        response = api(
            live_shop,
            "GET",
            f"/finance/exports/{report}",
            finance,
            params={**span, **params, "format": fmt},
        )
        assert response.status_code == 200, response.text[:300]
        return response.content

    # The detail: on PostgreSQL the CSV comes from COPY, formatted in SQL.
    header, *body = csv_rows(export("detail", "csv"))
    column = {name: header.index(name) for name in header}
    ours = [row for row in body if row[column["SKU"]].startswith("ZF-F-")]
    names = {row[column["商品"]] for row in ours}
    assert names == {"'" + HYPERLINK, "'" + MINUS, CONTROL}
    assert {row[column["供应商"]] for row in ours} == {"'" + SUPPLIER}
    assert "'" + UNIT in {row[column["单位"]] for row in ours}
    refund = [row for row in ours if row[column["来源"]] == "退款"]
    assert [row[column["金额（元）"]] for row in refund] == ["-12.00"]  # a number, not text

    header, *body = xlsx_rows(export("detail", "xlsx"))
    column = {name: header.index(name) for name in header}
    ours = [row for row in body if str(row[column["SKU"]] or "").startswith("ZF-F-")]
    assert {row[column["商品"]] for row in ours} == {"'" + HYPERLINK, "'" + MINUS, "普安红茶"}
    assert {row[column["供应商"]] for row in ours} == {"'" + SUPPLIER}
    assert "'" + UNIT in {row[column["单位"]] for row in ours}
    (refund_amount,) = [row[column["金额（元）"]] for row in ours if row[column["来源"]] == "退款"]
    assert isinstance(refund_amount, int | float) and Decimal(str(refund_amount)) == Decimal("-12")

    for fmt in ("csv", "xlsx"):
        data = export("totals", fmt, group_by="supplier,organisation")
        rows = csv_rows(data) if fmt == "csv" else xlsx_rows(data)
        groups = {(row[0], row[1]) for row in rows[1:-1]}
        assert ("'" + SUPPLIER, "'" + UNIT) in groups
        assert all(
            not str(cell).startswith(("=", "+", "-", "@"))
            for row in rows
            for cell in row[:2]
            if cell
        )
