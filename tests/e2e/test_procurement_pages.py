"""Unit procurement in a real browser: an officer uploads a GBK bulk file with one bad row, fixes
the row, sees tier prices, saves and submits; the approver approves; finance records the bank
transfer, sees the year's total move by the goods and downloads the totals as xlsx, whose total
row equals the dashboard. Rejection and overdue cancellation return the stock; admin adds a unit.
Every page is photographed."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect
from sqlalchemy import func, select, update

from shop.db import utcnow
from shop.demo import demo_credit_code
from shop.extensions import db
from shop.orders.models import Order
from shop.timezones import shanghai_today
from tests.conftest import LiveShop, shots_dir
from tests.e2e.conftest import total_row_amount

pytestmark = pytest.mark.browser

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
UNIT = "惠州市惠城区机关事务服务中心"
HEADER = "商品编码,数量,收货人,电话,收货地址,区县\n"
CANTEEN_A = "食堂甲,13800138001,江北街道文昌一路 8 号 机关第一食堂,惠城区"
CANTEEN_B = "食堂乙,0752-2281234,河南岸街道演达大道 12 号 职工食堂,惠城区"
# 80 boxes of tea over two canteens reach the ≥ 50 tier (¥118.00); 50 bags of 薏仁米 the ≥ 50 tier
# (¥54.00). Goods: 80 × 118 + 50 × 54 = ¥12,140.00, free shipping, below the two-approver amount.
GOOD_FILE = (
    HEADER
    + f"PA-TEA-001,60,{CANTEEN_A}\n"
    + f"XR-YR-001,50,{CANTEEN_A}\n"
    + f"PA-TEA-001,20,{CANTEEN_B}\n"
)
GOODS_FEN = 80 * 11800 + 50 * 5400
# The same file before it was fixed: row 3 orders 12 bags where the unit rule says multiples of 5.
BAD_FILE = (
    HEADER
    + f"PA-TEA-001,60,{CANTEEN_A}\n"
    + f"XR-YR-001,12,{CANTEEN_A}\n"
    + f"PA-TEA-001,20,{CANTEEN_B}\n"
)
# What WPS and Excel on Chinese Windows save a CSV in.
GBK = "gbk"
DELIVERY = {"收货人": "王食堂", "电话": "13900139000", "收货地址": "江北街道云山西路 2 号 职工食堂"}


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(shots_dir() / f"procurement-{name}.png"), full_page=True)


def stock(live_shop: LiveShop, sku: str) -> int:
    response = requests.get(f"{live_shop.url}/api/v1/products/{sku}", timeout=10)
    assert response.status_code == 200, response.text
    value: int = response.json()["stock"]
    return value


def order_count(live_shop: LiveShop) -> int:
    with live_shop.app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(Order)) or 0)


def nav(page: Page) -> Any:
    return page.get_by_role("navigation", name="主导航")


def status_of(page: Page) -> Any:
    return page.locator(".order-title .status")


def yuan_text(fen: int) -> str:
    return f"¥{fen // 100:,}.{fen % 100:02d}"


def fen_of(text: str) -> int:
    """Fen from an amount as the pages show it: "¥12,140.00"."""
    whole, _dot, fraction = text.strip().removeprefix("¥").replace(",", "").partition(".")
    assert whole.isdigit() and len(fraction) == 2 and fraction.isdigit(), text
    return int(whole) * 100 + int(fraction)


def with_cell(csv: bytes, row: int, column: str, value: str) -> bytes:
    """The GBK file with one cell changed, as an officer fixes it in WPS and saves it again.
    `row` counts as the page does, the header being row 1; `column` is the header's name."""
    lines = csv.decode(GBK).splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[row - 1].rstrip("\n").split(",")
    cells[header.index(column)] = value
    lines[row - 1] = ",".join(cells) + "\n"
    return "".join(lines).encode(GBK)


def test_an_officer_uploads_the_approver_approves_and_finance_records_the_transfer(
    sign_in: Callable[[str], Page],
    live_shop: LiveShop,
    celery_worker: str | None,
    tmp_path: Path,
) -> None:
    officer = sign_in("officer@example.com")
    nav(officer).get_by_role("link", name="单位采购").click()
    expect(officer.get_by_role("heading", name=UNIT)).to_be_visible()
    shot(officer, "unit")
    officer.get_by_role("link", name="新建采购单").click()
    expect(officer).to_have_url(re.compile(r"/procurement/new$"))
    shot(officer, "new")

    # The template files: a CSV that Excel opens (UTF-8 with BOM, Chinese headers) and an xlsx.
    with officer.expect_download() as download:
        officer.get_by_role("link", name="CSV 模板").click()
    assert download.value.suggested_filename == "bulk-order-template.csv"
    template = Path(download.value.path()).read_bytes()
    assert template.startswith(codecs.BOM_UTF8)
    assert template.decode("utf-8-sig").splitlines()[0].split(",")[:2] == ["商品编码", "数量"]
    xlsx = officer.request.get("/procurement/sample/bulk-order-template.xlsx")
    assert xlsx.ok and xlsx.headers["content-type"] == XLSX
    assert xlsx.body().startswith(b"PK")

    # The officer's file, saved by WPS in GBK, with one bad row: the problem by row and column,
    # and nothing saved.
    upload = tmp_path / "采购单.csv"
    upload.write_bytes(BAD_FILE.encode(GBK))
    with pytest.raises(UnicodeDecodeError):
        upload.read_bytes().decode("utf-8")
    bulk = officer.locator("#bulk-form")
    bulk.get_by_label("订单文件").set_input_files(upload)
    bulk.get_by_role("button", name="保存草稿").click()
    problems = officer.get_by_test_id("problems")
    expect(problems).to_contain_text("没有创建任何订单")
    rows = problems.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.locator("td").nth(0)).to_have_text("3")
    expect(rows.locator("td").nth(1)).to_have_text("数量")
    expect(rows.locator("td").nth(2)).to_contain_text("不是 5 的整数倍")
    shot(officer, "problems")
    assert order_count(live_shop) == 0

    # The officer fixes that row (12 bags become 50) and saves the file, still in GBK: the
    # preview prices by tier over the whole file.
    upload.write_bytes(with_cell(upload.read_bytes(), 3, "数量", "50"))
    assert upload.read_bytes() == GOOD_FILE.encode(GBK)
    bulk = officer.locator("#bulk-form")
    bulk.get_by_label("订单文件").set_input_files(upload)
    expect(bulk.get_by_label("资金来源")).to_have_value("财政资金")
    bulk.get_by_role("button", name="预览").click()
    preview = officer.get_by_test_id("preview")
    expect(preview.locator("tbody tr")).to_have_count(3)
    for row in (2, 4):
        line = preview.locator(f"tr[data-row='{row}']")
        expect(line.locator(".unit-price")).to_contain_text("¥118.00")
        expect(line.locator(".unit-price")).to_contain_text("阶梯价")
    expect(preview.locator("tr[data-row='3'] .unit-price")).to_contain_text("¥54.00")
    expect(preview.locator("tr[data-row='4']")).to_contain_text("食堂乙")
    expect(officer.get_by_test_id("goods")).to_have_text(yuan_text(GOODS_FEN))
    shot(officer, "preview")
    assert order_count(live_shop) == 0

    preview.get_by_role("button", name="保存草稿").click()
    expect(officer).to_have_url(re.compile(r"/procurement/orders/\d+$"))
    expect(officer.locator(".flash-success")).to_contain_text("草稿已保存")
    expect(status_of(officer)).to_have_text("草稿")
    expect(officer.locator(".delivery-head")).to_have_count(2)
    shot(officer, "draft")
    tea, grain = stock(live_shop, "PA-TEA-001"), stock(live_shop, "XR-YR-001")
    officer.get_by_role("button", name="提交审批").click()
    expect(status_of(officer)).to_have_text("待审批")
    expect(officer.locator(".flash-success")).to_have_text("已提交审批，库存已为本订单预留。")
    assert stock(live_shop, "PA-TEA-001") == tea - 80
    assert stock(live_shop, "XR-YR-001") == grain - 50
    expect(officer.get_by_role("button", name="批准")).to_have_count(0)
    order_url = officer.url
    number = officer.locator(".crumbs span").inner_text()
    total_text = officer.get_by_test_id("total").inner_text()
    shot(officer, "submitted")

    # The approver approves: the unit is invoiced on 30 days' terms.
    approver = sign_in("approver@example.com")
    nav(approver).get_by_role("link", name="单位采购").click()
    awaiting = approver.locator(f"tr[data-order={number}]")
    expect(awaiting.locator(".status")).to_have_text("待审批")
    shot(approver, "approver-unit")
    awaiting.get_by_role("link", name=number).click()
    expect(status_of(approver)).to_have_text("待审批")
    shot(approver, "awaiting-approval")
    approver.get_by_role("button", name="批准").click()
    expect(approver.locator(".flash-success")).to_contain_text("已批准")
    expect(status_of(approver)).to_have_text("待付款")
    due = shanghai_today(utcnow()) + timedelta(days=30)
    expect(approver.get_by_test_id("due-date")).to_have_text(due.isoformat())
    expect(approver.get_by_role("link", name="查看并支付发票")).to_have_attribute(
        "href", re.compile("^" + re.escape(live_shop.emulator_url) + "/invoice/")
    )
    expect(approver.locator(".approvals li")).to_contain_text("刘审批")
    shot(approver, "approved")

    # Finance's dashboard before the money arrives: the year's counted total and the unit's.
    finance = sign_in("finance@example.com")
    nav(finance).get_by_role("link", name="财务", exact=True).click()
    expect(finance).to_have_url(re.compile(r"/finance/$"))
    expect(finance.get_by_role("heading", name="财务总览")).to_be_visible()
    year_total = finance.get_by_test_id("total-yuan")
    unit_spent = finance.locator(f"tr[data-organisation='{UNIT}'] td").first
    total_before = fen_of(year_total.inner_text())
    unit_before = fen_of(unit_spent.inner_text())
    shot(finance, "finance-before")

    # Finance records the bank transfer; a wrong amount is refused first.
    finance.get_by_role("link", name="逾期发票").click()
    expect(finance.get_by_test_id("no-overdue")).to_be_visible()
    shot(finance, "no-overdue")
    finance.get_by_role("link", name="登记对公转账").click()
    expect(finance.locator(f".awaiting-table tr[data-order={number}]")).to_contain_text(UNIT)
    shot(finance, "awaiting-transfer")
    finance.locator(f".awaiting-table tr[data-order={number}]").get_by_role("link").click()
    expect(finance.get_by_label("订单号")).to_have_value(number)
    finance.get_by_label("转账金额（元）").fill("100.00")
    finance.get_by_label("银行流水号").fill("ICBC-20261130-0001")
    finance.get_by_label("付款账号").fill("2008 0212 0900 1234 567")
    finance.get_by_role("button", name="登记转账").click()
    expect(finance.locator(".field-error")).to_contain_text("与应付")
    shot(finance, "transfer-refused")
    amount = total_text.removeprefix("¥").replace(",", "")
    finance.get_by_label("转账金额（元）").fill(amount)
    shot(finance, "transfer-form")
    finance.get_by_role("button", name="登记转账").click()
    expect(finance.locator(".flash-success")).to_have_text(
        f"已登记对公转账：订单 {number} 已支付。"
    )
    recorded = finance.locator(f".transfers-table tr[data-order={number}]")
    expect(recorded).to_contain_text(total_text)
    expect(recorded.locator(".status")).to_have_text("已支付")
    expect(finance.locator(f".awaiting-table tr[data-order={number}]")).to_have_count(0)
    shot(finance, "transfer-recorded")

    # The year's total and the unit's move by the goods (the ledger leaves shipping out).
    finance.get_by_role("navigation", name="财务").get_by_role("link", name="总览").click()
    total_fen = total_before + GOODS_FEN
    expect(year_total).to_have_text(yuan_text(total_fen))
    expect(unit_spent).to_have_text(yuan_text(unit_before + GOODS_FEN))
    shot(finance, "finance-after")

    # The year's totals as xlsx, started from the dashboard: its 合计 row is the dashboard's.
    finance.get_by_role("button", name="汇总 Excel").click()
    download_link = finance.locator("[data-export-job]").get_by_role("link", name="下载文件")
    expect(download_link).to_be_visible(timeout=30_000)
    shot(finance, "finance-exported")
    with finance.expect_download() as download:
        download_link.click()
    assert download.value.suggested_filename.endswith(".xlsx")
    workbook = Path(download.value.path()).read_bytes()
    assert total_row_amount(workbook) == Decimal(total_fen) / 100

    officer.goto(order_url)
    expect(status_of(officer)).to_have_text("已支付")
    shot(officer, "paid")

    # The unit's dashboard counts the goods against the reserved share of ¥500,000.
    nav(officer).get_by_role("link", name="单位采购").click()
    progress = officer.get_by_test_id("progress")
    expect(progress.get_by_test_id("spent")).to_have_text(yuan_text(GOODS_FEN))
    expect(progress.get_by_test_id("percent")).to_have_text("2.43%")
    expect(progress.get_by_test_id("remaining")).to_have_text(yuan_text(50_000_000 - GOODS_FEN))
    expect(progress).to_contain_text("1.21 万元")
    expect(officer.locator(".bar-list").first).to_contain_text("普安县")
    expect(officer.locator(".bar-list").first).to_contain_text(yuan_text(80 * 11800))
    expect(officer.locator(f"tr[data-order={number}] .status")).to_have_text("已支付")
    shot(officer, "dashboard")

    officer.goto("/procurement/?lang=en")
    expect(
        officer.get_by_role("heading", name=re.compile(r"^Reserved share in \d{4}$"))
    ).to_be_visible()
    expect(officer.locator(".bar-list").first).to_contain_text("Pu'an County")
    shot(officer, "dashboard-en")


def test_a_rejected_order_returns_its_stock_and_can_be_ordered_again(
    sign_in: Callable[[str], Page], live_shop: LiveShop
) -> None:
    before = stock(live_shop, "ZF-NM-001")
    officer = sign_in("officer@example.com")
    officer.goto("/procurement/new")
    quick = officer.locator("#quick-form")
    quick.get_by_label("商品和数量").fill("SKU 数量\nZF-NM-001 50\nNO-SUCH 3")
    for label, value in DELIVERY.items():
        quick.get_by_label(label, exact=True).fill(value)
    quick.get_by_label("区县").select_option(label="惠城区")
    quick.get_by_role("button", name="生成草稿").click()
    problems = officer.get_by_test_id("problems")
    expect(problems.locator("tbody tr")).to_have_count(1)
    expect(problems.locator("tbody tr td").nth(0)).to_have_text("3")
    expect(problems).to_contain_text("NO-SUCH")
    assert order_count(live_shop) == 0

    quick = officer.locator("#quick-form")
    expect(quick.get_by_label("收货人")).to_have_value(DELIVERY["收货人"])
    quick.get_by_label("商品和数量").fill("ZF-NM-001 50")
    quick.get_by_role("button", name="生成草稿").click()
    expect(status_of(officer)).to_have_text("草稿")
    officer.get_by_role("button", name="提交审批").click()
    expect(status_of(officer)).to_have_text("待审批")
    assert stock(live_shop, "ZF-NM-001") == before - 50
    order_url = officer.url

    approver = sign_in("approver@example.com")
    approver.goto(order_url)
    approver.get_by_label("驳回理由").fill("本月预算尚未下达")
    approver.get_by_role("button", name="驳回").click()
    expect(approver.locator(".flash-success")).to_have_text(
        "已驳回，订单已取消，预留的库存已退回。"
    )
    expect(status_of(approver)).to_have_text("已取消")
    expect(approver.locator(".approvals")).to_contain_text("本月预算尚未下达")
    expect(approver.get_by_role("button", name="批准")).to_have_count(0)
    assert stock(live_shop, "ZF-NM-001") == before
    shot(approver, "rejected")

    officer.goto(order_url)
    officer.get_by_role("button", name="再来一单").click()
    expect(officer.locator(".flash-success")).to_contain_text("已按订单")
    expect(officer).not_to_have_url(order_url)
    expect(status_of(officer)).to_have_text("草稿")
    expect(officer.locator("tr[data-sku=ZF-NM-001]")).to_contain_text("50")
    expect(officer.locator(".delivery-head")).to_contain_text(DELIVERY["收货人"])


def test_finance_cancels_an_overdue_unit_invoice_and_the_stock_returns(
    sign_in: Callable[[str], Page], live_shop: LiveShop
) -> None:
    before = stock(live_shop, "CH-NM-001")
    officer, approver = (
        live_shop.token("officer@example.com"),
        live_shop.token("approver@example.com"),
    )
    created = requests.post(
        f"{live_shop.url}/api/v1/procurement/orders",
        headers=officer,
        files={
            "file": ("order.csv", (HEADER + f"CH-NM-001,100,{CANTEEN_A}\n").encode(), "text/csv")
        },
        timeout=30,
    )
    assert created.status_code == 201, created.text
    order = created.json()
    for who, step in ((officer, "submit"), (approver, "approve")):
        response = requests.post(
            f"{live_shop.url}/api/v1/procurement/orders/{order['id']}/{step}",
            headers=who,
            timeout=30,
        )
        assert response.status_code == 200, response.text
    with live_shop.app.app_context():
        db.session.execute(
            update(Order)
            .where(Order.id == order["id"])
            .values(invoice_due_at=utcnow() - timedelta(days=3))
        )
        db.session.commit()

    finance = sign_in("finance@example.com")
    finance.goto("/finance/overdue")
    row = finance.locator(f"tr[data-order={order['number']}]")
    expect(row).to_contain_text(UNIT)
    expect(row).to_contain_text("3 天")
    row.get_by_label("取消原因").fill("逾期三天未付，单位确认不再采购")
    shot(finance, "overdue")
    row.get_by_role("button", name="取消订单").click()
    expect(finance.locator(".flash-success")).to_contain_text("已取消")
    expect(finance.get_by_test_id("no-overdue")).to_be_visible()
    assert stock(live_shop, "CH-NM-001") == before


def test_admin_creates_a_unit_and_its_new_member_sees_unit_procurement(
    sign_in: Callable[[str], Page],
) -> None:
    buyer = sign_in("buyer@example.com")
    expect(nav(buyer).get_by_role("link", name="单位采购")).to_have_count(0)
    response = buyer.goto("/procurement/")
    assert response is not None and response.status == 403
    expect(buyer.get_by_test_id("forbidden-message")).to_contain_text("不是任何采购单位的成员")
    response = buyer.goto("/finance/transfers/new")
    assert response is not None and response.status == 403

    admin = sign_in("admin@example.com")
    admin.goto("/admin/organisations")
    expect(admin.locator("[data-organisation]", has_text=UNIT)).to_contain_text("陈采购")
    form = admin.locator("#new-organisation")
    form.get_by_label("单位名称").fill("惠州市总工会")
    form.get_by_label("单位类型").select_option(label="工会")
    form.get_by_label("统一社会信用代码").fill("not-a-credit-code")
    form.get_by_label("所在区县").select_option(label="惠城区")
    form.get_by_label("年度预留份额（元）").fill("200000")
    form.get_by_label("发票抬头").fill("惠州市总工会")
    form.get_by_label("税号").fill("81441300MA00000000")
    form.get_by_role("button", name="创建单位").click()
    form = admin.locator("#new-organisation")
    expect(form.locator(".field-error")).to_contain_text("统一社会信用代码无效")
    expect(form.get_by_label("单位名称")).to_have_value("惠州市总工会")
    form.get_by_label("统一社会信用代码").fill(demo_credit_code("81", "441302", 42))
    form.get_by_label("双人审批额度（元，可选）").fill("30000")
    form.get_by_role("button", name="创建单位").click()
    expect(admin.locator(".flash-success")).to_have_text("采购单位「惠州市总工会」已创建。")
    unit = admin.locator("[data-organisation]", has_text="惠州市总工会")
    expect(unit).to_contain_text("工会经费")
    expect(unit).to_contain_text("¥200,000.00")
    unit.locator("summary", has_text="添加成员").click()
    unit.get_by_label("邮箱").fill("buyer@example.com")
    unit.get_by_label("角色").select_option(label="采购员")
    unit.get_by_role("button", name="添加").click()
    expect(admin.locator(".flash-success")).to_contain_text("buyer@example.com")
    expect(admin.locator("[data-organisation]", has_text="惠州市总工会")).to_contain_text("张小惠")
    shot(admin, "organisations")

    buyer.goto("/")
    nav(buyer).get_by_role("link", name="单位采购").click()
    expect(buyer.get_by_role("heading", name="惠州市总工会")).to_be_visible()
    expect(buyer.get_by_test_id("progress")).to_contain_text("¥200,000.00")
