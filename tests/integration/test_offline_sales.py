"""Counter sales (消费帮扶专柜) from CSV and xlsx become offline ledger entries, each row once."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from flask import Flask
from sqlalchemy import func, select

from shop.accounts.models import AuditEntry, User
from shop.db import utcnow
from shop.errors import InvalidInput
from shop.extensions import db
from shop.ledger.models import LedgerEntry, NotCounted, OfflineImport, OfflineSale
from shop.ledger.offline import import_offline_sales
from shop.ledger.services import close_month, month_unchanged, totals
from shop.timezones import shanghai_today
from tests.conftest import bearer, make_app

HEADER = "日期,SKU,产地县,品类,金额（元）,数量,柜台,区县,认定产品\n"
SAMPLE_DIR = Path(__file__).parents[2] / "shop" / "ledger" / "sample"


def today() -> date:
    return shanghai_today(utcnow())


def last_month() -> date:
    """A day in the month before this one (Shanghai)."""
    return today().replace(day=1) - timedelta(days=3)


def counter_file(*rows: str, encoding: str = "gbk") -> bytes:
    return (HEADER + "".join(row + "\n" for row in rows)).encode(encoding)


def finance_user() -> User:
    user = db.session.scalar(select(User).where(User.email == "finance@example.com"))
    assert user is not None
    return user


def entries() -> list[LedgerEntry]:
    return list(db.session.scalars(select(LedgerEntry).order_by(LedgerEntry.reference)))


def count(model: Any) -> int:
    return int(db.session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def ctx(app: Flask) -> Iterator[Flask]:
    with app.app_context():
        yield app
        db.session.remove()


def test_a_gbk_csv_becomes_one_offline_entry_per_row_attributed_to_the_counter(ctx) -> None:
    day = today() - timedelta(days=2)
    data = counter_file(
        f"{day},PA-TEA-001,,,256.00,2,黔货出山展厅·普安县专柜,惠城区,",
        f"{day:%Y/%m/%d},,望谟县,水果,1280.5,40,惠东县消费帮扶专柜,惠东县,是",
        f"{day:%Y年%m月%d日},,兴义市,加工食品,98,5,惠城区消费帮扶专柜,惠城区,是",
        f"{day},,普安县,tea,10.01,1,龙门县专柜,龙门县,否",
        f"{day},PA-YC-001,,,98.00,1,龙门县专柜,龙门县,",
    )
    batch, created = import_offline_sales(db.session, data, "三月柜台.csv", finance_user())
    assert created is True
    assert (batch.rows, batch.total_fen) == (5, 25600 + 128050 + 9800 + 1001 + 9800)
    rows = {entry.reference: entry for entry in entries()}
    assert set(rows) == {f"OFF-{batch.id}-{row}" for row in (2, 3, 4, 5, 6)}

    tea = rows[f"OFF-{batch.id}-2"]
    assert (tea.county, tea.district, tea.category, tea.sku) == (
        "普安县",
        "惠城区",
        "茶叶",
        "PA-TEA-001",
    )
    assert (tea.buyer_type, tea.kind, tea.channel, tea.funding) == (
        "个人",
        "采购",
        "offline",
        "个人",
    )
    assert (tea.amount_fen, tea.quantity, tea.line_no, tea.day) == (25600, 2, 0, day)
    assert tea.source == "offline" and tea.order_id is None and tea.organisation_id is None
    assert tea.supplier_id is not None
    assert tea.occurred_at == datetime(day.year, day.month, day.day, 4, tzinfo=UTC)
    assert tea.counted is True and tea.reason == ""

    mango = rows[f"OFF-{batch.id}-3"]
    assert (mango.county, mango.district, mango.sku, mango.amount_fen) == (
        "望谟县",
        "惠东县",
        None,
        128050,
    )
    assert mango.counted is True

    outside = rows[f"OFF-{batch.id}-4"]
    assert (outside.counted, outside.reason) == (False, NotCounted.NOT_COOPERATION.value)
    undeclared = rows[f"OFF-{batch.id}-5"]
    assert undeclared.category == "茶叶"
    assert (undeclared.counted, undeclared.reason) == (False, NotCounted.NOT_DECLARED.value)
    uncertified_sku = rows[f"OFF-{batch.id}-6"]
    assert (uncertified_sku.counted, uncertified_sku.reason) == (
        False,
        NotCounted.UNCERTIFIED.value,
    )

    sales = {sale.row_no: sale for sale in db.session.scalars(select(OfflineSale))}
    assert {row: sale.id for row, sale in sales.items()} == {
        int(ref.rsplit("-", 1)[1]): entry.source_id for ref, entry in rows.items()
    }
    assert sales[3].counter == "惠东县消费帮扶专柜" and sales[3].certified is True
    audit = db.session.scalar(
        select(AuditEntry).where(AuditEntry.action == "ledger.import_offline")
    )
    assert audit is not None and audit.after["rows"] == 5


def test_an_xlsx_with_a_title_row_and_real_date_cells_imports_too(ctx) -> None:
    day = today() - timedelta(days=1)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["惠州市消费帮扶专柜销售日报"])
    sheet.append(["date", "sku", "county", "category", "amount", "quantity", "counter", "district"])
    sheet.append(
        [datetime(day.year, day.month, day.day), "XR-YR-001", None, None, 118.0, 2, "A", "惠阳区"]
    )
    sheet.append([day, None, "册亨县", "水果", 59.9, 1, "B", "仲恺高新区"])
    buffer = io.BytesIO()
    book.save(buffer)

    batch, created = import_offline_sales(db.session, buffer.getvalue(), "daily.xlsx", None)
    assert created and batch.rows == 2 and batch.total_fen == 11800 + 5990
    found = entries()
    assert [(e.reference, e.day, e.county, e.amount_fen) for e in found] == [
        (f"OFF-{batch.id}-3", day, "兴仁市", 11800),
        (f"OFF-{batch.id}-4", day, "册亨县", 5990),
    ]
    # No 认定产品 column: a row without SKU is not declared certified, so it does not count.
    assert [e.counted for e in found] == [True, False]


def test_the_downloadable_templates_import_cleanly(ctx) -> None:
    for name in ("counter-sales-template.csv", "counter-sales-template.xlsx"):
        batch, created = import_offline_sales(
            db.session, (SAMPLE_DIR / name).read_bytes(), name, None
        )
        assert created and batch.rows == 5 and batch.total_fen == 230850


def test_any_bad_row_imports_nothing_and_every_problem_is_named(ctx) -> None:
    good = f"{today()},PA-TEA-001,,,128,1,甲,惠城区,"
    data = counter_file(
        good,
        f"{today() + timedelta(days=1)},NO-SUCH-SKU,,,12.345,x,乙,火星区,",
        "2025-02-30,,火星县,糖果,0,0,丙,惠城区,也许",
        f"{today()},,普安县,茶叶,-5,1,,惠城区,是",
        f"{today()},,,,5,1,丁,惠城区,",
        good,
    )
    with pytest.raises(InvalidInput) as caught:
        import_offline_sales(db.session, data, "bad.csv", finance_user())
    error = caught.value
    assert error.code == "invalid_rows"
    problems = {(d["row"], d["column"]) for d in error.details}
    assert problems == {
        (3, "日期"),
        (3, "SKU"),
        (3, "金额（元）"),
        (3, "数量"),
        (3, "区县"),
        (4, "日期"),
        (4, "产地县"),
        (4, "品类"),
        (4, "金额（元）"),
        (4, "数量"),
        (4, "认定产品"),
        (5, "金额（元）"),
        (5, "柜台"),
        (6, "产地县"),
        (6, "品类"),
        (7, "金额（元）"),
    }
    messages = " ".join(d["message"] for d in error.details)
    for words in (
        "晚于今天",
        "NO-SUCH-SKU",
        "两位小数",
        "火星区",
        "火星县",
        "糖果",
        "与第 2 行重复",
    ):
        assert words in messages
    assert all(d["message"].startswith(f"第 {d['row']} 行：") for d in error.details)
    db.session.rollback()
    assert count(OfflineImport) == count(OfflineSale) == count(LedgerEntry) == 0


def test_an_unreadable_file_is_refused_as_a_whole(ctx) -> None:
    with pytest.raises(InvalidInput) as no_header:
        import_offline_sales(db.session, "名称,价格\n茶,1\n".encode(), "x.csv", None)
    assert no_header.value.code == "invalid_file"
    with pytest.raises(InvalidInput) as no_district:
        import_offline_sales(db.session, "日期,SKU,金额,数量,柜台\n".encode(), "y.csv", None)
    assert "区县" in no_district.value.message
    with pytest.raises(InvalidInput) as utf16:
        import_offline_sales(db.session, HEADER.encode("utf-16"), "z.csv", None)
    assert "UTF-16" in utf16.value.message
    db.session.rollback()
    assert count(OfflineImport) == 0


def test_the_same_file_imported_again_writes_nothing(ctx) -> None:
    data = counter_file(f"{today()},PA-TEA-001,,,128,1,甲,惠城区,")
    first, created = import_offline_sales(db.session, data, "a.csv", None)
    assert created
    again, created_again = import_offline_sales(db.session, data, "renamed.csv", finance_user())
    assert created_again is False
    assert again.id == first.id and again.filename == "a.csv"
    assert count(OfflineImport) == count(OfflineSale) == count(LedgerEntry) == 1


def test_a_sale_dated_in_a_closed_month_is_booked_today(ctx) -> None:
    before = last_month()
    closed = close_month(db.session, f"{before:%Y-%m}", finance_user())
    data = counter_file(
        f"{before},PA-TEA-001,,,128,1,甲,惠城区,", f"{today()},PA-TEA-002,,,68,1,甲,惠城区,"
    )
    batch, _ = import_offline_sales(db.session, data, "late.csv", None)
    booked = {e.reference: e for e in entries()}
    late = booked[f"OFF-{batch.id}-2"]
    assert late.day == today()
    assert late.occurred_at == datetime(before.year, before.month, before.day, 4, tzinfo=UTC)
    assert booked[f"OFF-{batch.id}-3"].day == today()
    assert month_unchanged(db.session, closed)
    sale = db.session.scalar(select(OfflineSale).where(OfflineSale.row_no == 2))
    assert sale is not None and sale.sold_on == before


def test_totals_count_only_the_counted_rows_under_channel_offline(ctx) -> None:
    day = today()
    data = counter_file(
        f"{day},PA-TEA-001,,,128,1,甲,惠城区,",
        f"{day},,望谟县,水果,100,1,乙,惠东县,是",
        f"{day},,兴义市,水果,50,1,乙,惠东县,是",
        f"{day},,安龙县,蔬菜,30,1,乙,惠东县,否",
    )
    import_offline_sales(db.session, data, "t.csv", None)
    by_channel = totals(db.session, start=day, end=day, group_by=["channel"])
    assert by_channel.rows == [{"channel": "offline", "amount_fen": 22800, "orders": 2, "lines": 2}]
    everything = totals(db.session, start=day, end=day, group_by=["channel"], counted_only=False)
    assert everything.total_fen == 12800 + 10000 + 5000 + 3000
    by_district = totals(db.session, start=day, end=day, group_by=["district", "county"])
    assert {(r["district"], r["county"]): r["amount_fen"] for r in by_district.rows} == {
        ("惠城区", "普安县"): 12800,
        ("惠东县", "望谟县"): 10000,
    }


# --- the API and the page ----------------------------------------------------------------------


def upload(client: Any, headers: dict[str, str], data: bytes, name: str = "sales.csv") -> Any:
    return client.post(
        "/api/v1/finance/offline-sales",
        headers=headers,
        data={"file": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def test_only_finance_may_import_or_list_counter_sales(client, buyer) -> None:
    data = counter_file(f"{today()},PA-TEA-001,,,128,1,甲,惠城区,")
    assert upload(client, buyer, data).status_code == 403
    assert client.get("/api/v1/finance/offline-sales", headers=buyer).status_code == 403
    assert upload(client, {}, data).status_code == 401


def test_finance_imports_over_the_api_once_and_the_file_is_kept(
    app, client, celery_worker, tmp_path
) -> None:
    app.config["UPLOAD_DIR"] = tmp_path
    finance = bearer(client, "finance@example.com")
    data = counter_file(
        f"{today()},PA-TEA-001,,,128,1,甲,惠城区,", f"{today()},,兴义市,水果,50,1,乙,惠东县,是"
    )
    first = upload(client, finance, data)
    assert first.status_code == 201, first.get_json()
    body = first.get_json()
    assert body == {"import_id": body["import_id"], "rows": 2, "total_fen": 17800, "created": True}
    again = upload(client, finance, data, "again.csv")
    assert again.status_code == 200
    assert again.get_json() == {**body, "created": False}
    stored = list((tmp_path / "offline-sales").iterdir())
    assert [p.read_bytes() for p in stored] == [data]

    listed = client.get("/api/v1/finance/offline-sales", headers=finance).get_json()["items"]
    assert len(listed) == 1
    assert listed[0]["filename"] == "sales.csv"
    assert (listed[0]["rows"], listed[0]["total_fen"], listed[0]["counted_fen"]) == (
        2,
        17800,
        12800,
    )
    assert listed[0]["imported_by"] == "finance@example.com"


def test_a_bad_file_over_the_api_is_422_with_every_row(app, client, tmp_path) -> None:
    app.config["UPLOAD_DIR"] = tmp_path
    finance = bearer(client, "finance@example.com")
    data = counter_file(
        f"{today()},NOPE,,,1,1,甲,惠城区,", f"{today()},PA-TEA-001,,,0,1,甲,惠城区,"
    )
    response = upload(client, finance, data)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_rows"
    assert [(d["row"], d["column"]) for d in error["details"]] == [(2, "SKU"), (3, "金额（元）")]
    unreadable = upload(client, finance, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1old", "old.xls")
    assert unreadable.status_code == 422
    assert unreadable.get_json()["error"]["code"] == "invalid_file"
    missing = client.post("/api/v1/finance/offline-sales", headers=finance)
    assert missing.status_code == 422
    assert not (tmp_path / "offline-sales").exists()
    with app.app_context():
        assert count(OfflineImport) == 0


def signed_in(client: Any, app: Flask, email: str) -> None:
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == email))
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def test_the_page_shows_row_problems_then_imports_and_lists_the_file(app, client, tmp_path) -> None:
    app.config["UPLOAD_DIR"] = tmp_path
    signed_in(client, app, "finance@example.com")
    page = client.get("/finance/offline-sales/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "counter-sales-template.xlsx" in html and 'data-testid="no-imports"' in html
    token = csrf_token(html)

    bad = counter_file(f"{today()},NOPE,,,1,1,甲,惠城区,")
    refused = client.post(
        "/finance/offline-sales/",
        data={"csrf_token": token, "file": (io.BytesIO(bad), "bad.csv")},
        content_type="multipart/form-data",
    )
    assert refused.status_code == 422
    assert "NOPE" in refused.get_data(as_text=True)

    good = counter_file(f"{today()},PA-TEA-001,,,128,1,甲,惠城区,")
    done = client.post(
        "/finance/offline-sales/",
        data={"csrf_token": token, "file": (io.BytesIO(good), "good.csv")},
        content_type="multipart/form-data",
        follow_redirects=True,
    )
    assert done.status_code == 200
    listed = done.get_data(as_text=True)
    assert "good.csv" in listed and "¥128.00" in listed

    sample = client.get("/finance/offline-sales/sample/counter-sales-template.csv")
    assert sample.status_code == 200
    assert sample.data == (SAMPLE_DIR / "counter-sales-template.csv").read_bytes()


def test_the_page_is_for_finance_only(app, client) -> None:
    signed_in(client, app, "buyer@example.com")
    assert client.get("/finance/offline-sales/").status_code == 403


# --- the command line ---------------------------------------------------------------------------


def shop_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=database_url)
    env.pop("CELERY_BROKER_URL", None)
    return subprocess.run(
        [str(Path(sys.executable).parent / "shop"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_imports_a_file_once_and_refuses_a_bad_one(
    app, database_url, tmp_path
) -> None:
    good = tmp_path / "counter.csv"
    good.write_bytes(counter_file(f"{today()},PA-TEA-001,,,128,1,甲,惠城区,"))
    first = shop_command(database_url, "import-offline", str(good), "--by", "finance@example.com")
    assert first.returncode == 0, first.stderr
    assert "imported 1 rows, 128.00 元" in first.stdout
    again = shop_command(database_url, "import-offline", str(good), "--by", "finance@example.com")
    assert again.returncode == 0, again.stderr
    assert "was imported before" in again.stdout

    bad = tmp_path / "bad.csv"
    bad.write_bytes(counter_file(f"{today()},NOPE,,,1,1,甲,惠城区,"))
    refused = shop_command(database_url, "import-offline", str(bad), "--by", "finance@example.com")
    assert refused.returncode != 0
    assert "NOPE" in refused.stderr
    not_finance = shop_command(
        database_url, "import-offline", str(bad), "--by", "buyer@example.com"
    )
    assert not_finance.returncode != 0

    with app.app_context():
        assert count(OfflineImport) == 1
        assert db.session.scalar(select(func.sum(LedgerEntry.amount_fen))) == 12800


def test_with_a_broker_but_no_result_backend_the_upload_is_imported_in_the_request(
    database_url: str, emulator: str, app: Flask
) -> None:
    """Nobody could wait for the task's answer, so the request imports the file itself."""
    celery = {
        **app.config["CELERY"],
        "broker_url": "redis://127.0.0.1:6379/3",
        "result_backend": None,
        "task_always_eager": False,
    }
    no_results = make_app(database_url, emulator, CELERY=celery)
    client = no_results.test_client()
    finance = bearer(client, "finance@example.com")
    answer = upload(client, finance, counter_file(f"{today()},PA-TEA-001,,,128,1,甲,惠城区,"))
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["rows"] == 1
    with no_results.app_context():
        assert count(OfflineSale) == 1
        db.session.remove()
        db.engine.dispose()
