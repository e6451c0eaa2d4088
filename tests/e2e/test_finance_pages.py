"""Finance in a real browser: a buyer's paid order shows on the dashboard and in the totals,
finance resolves a discrepancy, closes last month and downloads the year's totals as xlsx, whose
total row equals the dashboard. Every page is photographed at desktop and phone width."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect

from shop.db import utcnow
from shop.extensions import db
from shop.orders.models import Order
from shop.reconciliation.models import Discrepancy, DiscrepancyKind
from shop.timezones import shanghai_today
from tests.conftest import HUIZHOU_ADDRESS, LiveShop, shots_dir
from tests.e2e.conftest import total_row_amount

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# 40 boxes of certified tea from a cooperation county: every fen of the goods counts.
SKU, QUANTITY = "PA-TEA-001", 40


def shoot(page: Page, name: str) -> None:
    """The page as it is now, at desktop width and again at phone width."""
    page.screenshot(path=str(shots_dir() / f"finance-{name}.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(shots_dir() / f"finance-{name}-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], name
    page.set_viewport_size(DESKTOP)


def yuan_text(fen: int) -> str:
    return f"¥{fen // 100:,}.{fen % 100:02d}"


def in_units(fen: int, unit_fen: int, places: int) -> str:
    scaled = (Decimal(fen) / unit_fen).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    return f"{scaled:,}"


def paid_order(live_shop: LiveShop) -> dict[str, Any]:
    """A buyer's order placed through the API and paid on the emulator's hosted page."""
    buyer = live_shop.token("buyer@example.com")
    placed = requests.post(
        f"{live_shop.url}/api/v1/orders",
        headers=buyer,
        json={"lines": [{"sku": SKU, "quantity": QUANTITY}], "address": HUIZHOU_ADDRESS},
        timeout=30,
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    session = order["checkout_url"].rstrip("/").rsplit("/", 1)[-1]
    live_shop.control(f"checkout/sessions/{session}/pay")
    live_shop.wait_for_webhooks()
    paid = requests.get(
        f"{live_shop.url}/api/v1/orders/{order['number']}", headers=buyer, timeout=10
    ).json()
    assert paid["status"] == "paid", paid
    return dict(paid)


def add_discrepancy(live_shop: LiveShop, number: str) -> int:
    """What reconciliation writes when Stripe charged less than the shop recorded."""
    with live_shop.app.app_context():
        order = db.session.query(Order).filter_by(number=number).one()
        found = Discrepancy(
            kind=DiscrepancyKind.AMOUNT_DIFFERS,
            stripe_object=order.stripe_payment_intent_id or f"pi_{number}",
            order_id=order.id,
            order_number=number,
            shop_fen=order.total_fen,
            stripe_fen=order.total_fen - 100,
            currency="cny",
            detail="Stripe 收款比订单少 1 元",
        )
        db.session.add(found)
        db.session.commit()
        return found.id


def last_month() -> str:
    today = shanghai_today(utcnow())
    year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    return f"{year}-{month:02d}"


def test_finance_sees_the_paid_order_resolves_closes_a_month_and_exports_the_year(
    sign_in: Callable[..., Page], live_shop: LiveShop, celery_worker: str | None
) -> None:
    order = paid_order(live_shop)
    goods = order["goods_fen"]
    assert goods == QUANTITY * 12800
    discrepancy = add_discrepancy(live_shop, order["number"])

    finance = sign_in("finance@example.com")
    finance.get_by_role("navigation", name="主导航").get_by_role(
        "link", name="财务", exact=True
    ).click()
    expect(finance).to_have_url(re.compile(r"/finance/$"))
    expect(finance.get_by_role("heading", name="财务总览")).to_be_visible()
    expect(finance.get_by_test_id("total-yuan")).to_have_text(yuan_text(goods))
    expect(finance.get_by_test_id("total-wan")).to_have_text(
        f"{in_units(goods, 1_000_000, 2)} 万元"
    )
    expect(finance.get_by_test_id("total-yi")).to_have_text(
        f"{in_units(goods, 10_000_000_000, 4)} 亿元"
    )
    county = finance.locator("#county-chart g[data-key='普安县']")
    expect(county).to_have_attribute("data-fen", str(goods))
    expect(county.locator("text.chart-amount")).to_have_text(yuan_text(goods))
    month = f"{shanghai_today(utcnow()):%Y-%m}"
    expect(finance.locator(f"#month-chart g[data-key='{month}']")).to_have_attribute(
        "data-fen", str(goods)
    )
    expect(finance.get_by_test_id("open-count")).to_have_text("1")
    unit = finance.locator("tr[data-organisation='惠州市惠城区机关事务服务中心']")
    expect(unit.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "0")
    shoot(finance, "dashboard")

    # Totals by county and month for this year: one row, the same amount, and the 合计 row.
    finance.get_by_role("link", name="汇总查询").click()
    expect(finance.get_by_label("产地县")).to_be_checked()
    finance.get_by_label("月份", exact=True).check()
    finance.get_by_role("button", name="查询").click()
    table = finance.get_by_test_id("totals")
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table.locator("tbody tr td[data-group=county]")).to_have_text("普安县")
    expect(table.locator("tbody tr td[data-group=month]")).to_have_text(month)
    expect(table.get_by_test_id("amount")).to_have_text(yuan_text(goods))
    expect(table.get_by_test_id("total")).to_have_text(yuan_text(goods))
    expect(finance.get_by_role("link", name="汇总 Excel")).to_have_attribute(
        "href",
        re.compile(r"/api/v1/finance/exports/totals\?format=xlsx&.*group_by=county(%2C|,)month"),
    )
    shoot(finance, "totals")

    # A day range that ends before it starts is refused beside the field.
    finance.get_by_label("结束日期").fill("2020-01-01")
    finance.get_by_role("button", name="查询").click()
    expect(finance.locator("#to-error")).to_contain_text("结束日期不能早于开始日期")

    # The discrepancy needs a note before it counts as resolved.
    finance.get_by_role("link", name="对账差异").click()
    item = finance.locator(f"[data-discrepancy='{discrepancy}']")
    expect(item).to_contain_text("金额不一致")
    expect(item).to_contain_text(order["number"])
    item.get_by_role("button", name="标记为已处理").click()
    item = finance.locator(f"[data-discrepancy='{discrepancy}']")
    expect(item.locator(".field-error")).to_have_text("请写明处理说明，再标记为已处理。")
    shoot(finance, "discrepancy-note-missing")
    item.get_by_label("处理说明").fill("已与银行流水核对，差额为支付手续费。")
    item.get_by_role("button", name="标记为已处理").click()
    expect(finance.locator(".flash-success")).to_have_text(f"差异 #{discrepancy} 已标记为已处理。")
    expect(finance.get_by_test_id("no-discrepancies")).to_be_visible()
    finance.get_by_role("navigation", name="按状态筛选").get_by_role("link", name="已处理").click()
    expect(finance.locator(f"[data-discrepancy='{discrepancy}'] [data-testid=note]")).to_have_text(
        "已与银行流水核对，差额为支付手续费。"
    )
    shoot(finance, "discrepancies")

    # Last month closes once; a second close says it already is.
    finance.get_by_role("link", name="月度结账").click()
    expect(finance.get_by_label("月份（YYYY-MM）")).to_have_value(last_month())
    finance.get_by_role("button", name="结账").click()
    expect(finance.locator(".flash-success")).to_contain_text(f"{last_month()} 已结账")
    expect(finance.locator(f"tr[data-month='{last_month()}']")).to_contain_text("未变动")
    finance.get_by_role("button", name="结账").click()
    expect(finance.locator(".flash-error")).to_contain_text("已经结账")
    shoot(finance, "months")

    # The year's totals as xlsx: started from the dashboard, downloaded when ready.
    finance.get_by_role("link", name="总览").click()
    expect(finance.get_by_test_id("open-count")).to_have_text("0")
    finance.get_by_role("button", name="汇总 Excel").click()
    download_link = finance.locator("[data-export-job]").get_by_role("link", name="下载文件")
    expect(download_link).to_be_visible(timeout=30_000)
    with finance.expect_download() as download:
        download_link.click()
    assert download.value.suggested_filename.endswith(".xlsx")
    workbook = Path(download.value.path()).read_bytes()
    assert total_row_amount(workbook) == Decimal(goods) / 100
    shoot(finance, "dashboard-exported")

    finance.goto("/finance/?lang=en")
    expect(finance.get_by_role("heading", name="Finance overview")).to_be_visible()
    expect(finance.locator("#county-chart g[data-key='普安县'] text.chart-name")).to_have_text(
        "Pu'an County"
    )
    shoot(finance, "dashboard-en")


def test_without_scripts_an_export_page_refreshes_until_its_file_downloads(
    sign_in: Callable[..., Page], live_shop: LiveShop, celery_worker: str | None
) -> None:
    order = paid_order(live_shop)
    finance = sign_in("finance@example.com", javascript=False)
    finance.goto("/finance/")
    finance.get_by_role("button", name="明细 CSV").click()
    expect(finance).to_have_url(re.compile(r"/finance/exports/\w+$"))
    job = finance.get_by_test_id("export-job")
    expect(job).to_have_attribute("data-status", "done", timeout=30_000)
    shoot(finance, "export-job")
    with finance.expect_download() as download:
        job.get_by_role("link", name="下载文件").click()
    data = Path(download.value.path()).read_bytes()
    assert data.startswith(codecs.BOM_UTF8)
    assert order["number"] in data.decode("utf-8-sig")


def test_people_without_the_finance_role_are_turned_away(
    sign_in: Callable[..., Page],
) -> None:
    buyer = sign_in("buyer@example.com")
    expect(
        buyer.get_by_role("navigation", name="主导航").get_by_role("link", name="财务", exact=True)
    ).to_have_count(0)
    for path in ("/finance/", "/finance/totals", "/finance/discrepancies", "/finance/months"):
        response = buyer.goto(path)
        assert response is not None and response.status == 403, path
