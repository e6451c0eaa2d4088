"""The shop pages in a real browser: a buyer browses, pays through the Stripe emulator's hosted
page, cancels an unpaid order; the pages switch to English; an admin changes stock and ships."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from shop.accounts.models import Role
from shop.accounts.services import create_user
from shop.catalog.models import Product
from shop.db import utcnow
from shop.demo import demo_credit_code
from shop.extensions import db
from shop.timezones import shanghai_today
from tests.conftest import HUIZHOU_ADDRESS, PASSWORD, LiveShop, shots_dir

pytestmark = pytest.mark.browser

WEBHOOK_TIMEOUT_MS = 20_000


@pytest.fixture
def page(browser: Browser, live_shop: LiveShop) -> Iterator[Page]:
    context = browser.new_context(
        base_url=live_shop.url, viewport={"width": 1280, "height": 900}, locale="zh-CN"
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    # The cancel button asks "are you sure?"; the buyer says yes.
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(shots_dir() / f"{name}.png"), full_page=True)


def log_in(page: Page, email: str) -> None:
    page.goto("/login")
    page.get_by_label("邮箱").fill(email)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page.get_by_role("button", name="退出")).to_be_visible()


def api_product(live_shop: LiveShop, sku: str) -> dict[str, Any]:
    response = requests.get(f"{live_shop.url}/api/v1/products/{sku}", timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def api_order(live_shop: LiveShop, number: str, headers: dict[str, str]) -> dict[str, Any]:
    response = requests.get(f"{live_shop.url}/api/v1/orders/{number}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def held_deliveries(live_shop: LiveShop) -> list[str]:
    """Ids of the events the emulator was told to drop instead of delivering."""
    response = requests.get(f"{live_shop.emulator_url}/_emulator/deliveries", timeout=10)
    response.raise_for_status()
    return [d["event_id"] for d in response.json() if d["status"] == "dropped"]


def order_number_in(url: str) -> str:
    found = re.search(r"/orders/(HQ\d+)", url)
    assert found, url
    return found.group(1)


def add_to_cart(page: Page, sku: str, quantity: int) -> None:
    page.goto(f"/products/{sku}")
    page.get_by_label("数量").fill(str(quantity))
    page.get_by_role("button", name="加入购物车").click()
    expect(page).to_have_url(re.compile(r"/cart$"))


def fill_huizhou_address(page: Page) -> None:
    page.get_by_label("收货人").fill(HUIZHOU_ADDRESS["name"])
    page.get_by_label("手机").fill(HUIZHOU_ADDRESS["phone"])
    expect(page.get_by_label("省", exact=True)).to_have_value("广东省")
    expect(page.get_by_label("市", exact=True)).to_have_value("惠州市")
    page.locator("select#district").select_option(label=HUIZHOU_ADDRESS["district"])
    page.get_by_label("详细地址").fill(HUIZHOU_ADDRESS["detail"])


def test_a_buyer_browses_pays_and_cancels_an_unpaid_order(page: Page, live_shop: LiveShop) -> None:
    log_in(page, "buyer@example.com")

    # Browse by county, then category.
    page.locator("[data-filter=county]").get_by_role("link", name="普安县").click()
    expect(page).to_have_url(re.compile(r"county=522323"))
    counties = page.locator(".product-card .county")
    expect(counties.first).to_be_visible()
    assert set(counties.all_inner_texts()) == {"普安县"}
    page.locator("[data-filter=category]").get_by_role("link", name="茶叶").click()
    expect(page).to_have_url(re.compile(r"county=522323.*category=tea|category=tea.*county=522323"))
    expect(page.locator(".product-card")).to_have_count(5)
    expect(page.locator(".product-card .tag-cert").first).to_have_text("消费帮扶认定")
    shot(page, "catalogue")

    # Search within the filters.
    page.get_by_role("searchbox").fill("红茶")
    page.get_by_role("searchbox").press("Enter")
    expect(page.locator(".result-summary")).to_contain_text("共 3 件商品")
    cards = page.locator(".product-card")
    for name in cards.locator(".card-title").all_inner_texts():
        assert "红茶" in name

    # Open a product and add it to the cart.
    cards.filter(has_text="普安红茶（特级）").get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(r"/products/PA-TEA-001$"))
    expect(page.get_by_role("heading", name="普安红茶（特级）")).to_be_visible()
    expect(page.locator(".big-price")).to_have_text("¥128.00")
    shot(page, "product")
    page.get_by_label("数量").fill("2")
    page.get_by_role("button", name="加入购物车").click()
    expect(page).to_have_url(re.compile(r"/cart$"))
    expect(page.get_by_test_id("cart-count")).to_have_text("2")
    expect(page.locator("tr[data-sku=PA-TEA-001]")).to_contain_text("¥256.00")
    shot(page, "cart")

    # Check out to a Huizhou address and pay on the emulator's hosted page.
    page.get_by_role("link", name="去结算").click()
    expect(page).to_have_url(re.compile(r"/checkout$"))
    fill_huizhou_address(page)
    shot(page, "checkout")
    page.get_by_role("button", name="提交订单并支付").click()
    expect(page).to_have_url(re.compile("^" + re.escape(live_shop.emulator_url) + "/checkout/"))
    # Hold Stripe's webhooks back, so the buyer lands before the payment is known.
    live_shop.control("webhooks", drop_next=1000)
    page.get_by_role("button", name="Pay", exact=True).click()

    # Back in the shop, the confirmation page waits, then turns paid once the webhook lands.
    expect(page).to_have_url(re.compile(r"/orders/HQ\d+/confirmation\?session_id="))
    number = order_number_in(page.url)
    expect(page.locator(".confirmation .status")).to_have_text("待支付")
    expect(page.get_by_test_id("confirming")).to_be_visible()
    shot(page, "confirmation-waiting")
    live_shop.control("webhooks", drop_next=0)
    for event_id in held_deliveries(live_shop):
        live_shop.control(f"events/{event_id}/deliver")
    expect(page.locator(".confirmation .status")).to_have_text("已支付", timeout=WEBHOOK_TIMEOUT_MS)
    expect(page.get_by_role("heading", name="支付成功，谢谢你的支持！")).to_be_visible()
    expect(page.get_by_test_id("cart-count")).to_have_text("0")
    shot(page, "confirmation")

    # It is in my orders.
    page.get_by_role("link", name="我的订单").first.click()
    paid_row = page.locator(f"[data-order={number}]")
    expect(paid_row.locator(".status")).to_have_text("已支付")
    expect(paid_row).to_contain_text("¥256.00")
    shot(page, "my-orders")

    # A second order, left unpaid, then cancelled: its stock comes back.
    stock_before = api_product(live_shop, "PA-TEA-002")["stock"]
    add_to_cart(page, "PA-TEA-002", 3)
    page.goto("/checkout")
    fill_huizhou_address(page)
    page.get_by_role("button", name="提交订单并支付").click()
    expect(page).to_have_url(re.compile("^" + re.escape(live_shop.emulator_url) + "/checkout/"))
    assert api_product(live_shop, "PA-TEA-002")["stock"] == stock_before - 3
    page.get_by_role("link", name="Cancel and return to the shop").click()
    expect(page).to_have_url(re.compile(r"/orders/HQ\d+$"))
    unpaid = order_number_in(page.url)
    assert unpaid != number
    expect(page.locator(".order-title .status")).to_have_text("待支付")
    expect(page.get_by_role("link", name="去支付")).to_be_visible()
    page.get_by_role("button", name="取消订单").click()
    expect(page.locator(".flash-success")).to_have_text("订单已取消，库存已退回。")
    expect(page.locator(".order-title .status")).to_have_text("已取消")
    expect(page.get_by_role("button", name="取消订单")).to_have_count(0)
    shot(page, "order-cancelled")
    assert api_product(live_shop, "PA-TEA-002")["stock"] == stock_before

    page.goto("/orders")
    expect(page.locator(f"[data-order={unpaid}] .status")).to_have_text("已取消")
    expect(page.locator(f"[data-order={number}] .status")).to_have_text("已支付")

    # A buyer is not an admin.
    response = page.goto("/admin/products")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="无权访问")).to_be_visible()


def test_out_of_season_products_cannot_be_added_to_the_cart(
    page: Page, live_shop: LiveShop
) -> None:
    with live_shop.app.app_context():
        today = shanghai_today(utcnow())
        off_season = next(
            p.sku
            for p in db.session.scalars(select(Product).order_by(Product.sku))
            if not p.in_season(today)
        )
    page.goto(f"/products/{off_season}")
    expect(page.locator(".product-info .tag-off")).to_have_text("非当季/暂不可售")
    expect(page.get_by_role("button", name="加入购物车")).to_be_disabled()
    shot(page, "product-out-of-season")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/?q={off_season}")
    card = page.locator(f".product-card[data-sku={off_season}]")
    expect(card).to_contain_text("非当季/暂不可售")
    expect(card.locator(".season")).to_contain_text("销售季")
    shot(page, "catalogue-narrow")


def test_the_pages_switch_to_english_and_back(page: Page) -> None:
    page.goto("/?lang=en")
    nav = page.get_by_role("navigation", name="Main navigation")
    expect(nav.get_by_role("link", name="Products")).to_be_visible()
    expect(nav.get_by_role("link", name="Cart")).to_be_visible()
    expect(nav.get_by_role("link", name="Sign in")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(
        page.locator("[data-filter=county]").get_by_role("link", name="Pu'an County")
    ).to_be_visible()
    page.locator("[data-filter=category]").get_by_role("link", name="Tea").click()
    expect(
        page.locator(".product-card").filter(has_text="Pu'an black tea, special grade")
    ).to_have_count(1)
    expect(page.locator(".product-card .tag-cert").first).to_have_text(
        "Certified assistance product"
    )
    shot(page, "catalogue-en")

    # The choice sticks to the session until switched back.
    page.goto("/products/PA-TEA-001")
    expect(page.get_by_role("heading", name="Pu'an black tea, special grade")).to_be_visible()
    expect(page.get_by_role("button", name="Add to cart")).to_be_visible()
    page.goto("/cart")
    expect(page.get_by_role("heading", name="Cart")).to_be_visible()

    page.get_by_role("link", name="中文").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_role("heading", name="购物车")).to_be_visible()


def test_orders_are_visible_only_to_their_buyer(page: Page, live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    number = place_order(live_shop, buyer, "AL-MS-001", 1)
    with live_shop.app.app_context():
        create_user(
            db.session, email="other@example.com", password=PASSWORD, name="赵其他", role=Role.BUYER
        )
        db.session.commit()
    log_in(page, "other@example.com")
    for path in (f"/orders/{number}", f"/orders/{number}/confirmation"):
        response = page.goto(path)
        assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="找不到这个页面")).to_be_visible()


def place_order(live_shop: LiveShop, headers: dict[str, str], sku: str, quantity: int) -> str:
    response = requests.post(
        f"{live_shop.url}/api/v1/orders",
        headers=headers,
        timeout=20,
        json={"lines": [{"sku": sku, "quantity": quantity}], "address": HUIZHOU_ADDRESS},
    )
    assert response.status_code == 201, response.text
    number: str = response.json()["number"]
    return number


def test_an_admin_changes_stock_ships_and_refunds(page: Page, live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    number = place_order(live_shop, buyer, "XR-YR-001", 2)
    page.goto(api_order(live_shop, number, buyer)["checkout_url"])
    page.get_by_role("button", name="Pay", exact=True).click()
    live_shop.wait_for_webhooks()
    assert api_order(live_shop, number, buyer)["status"] == "paid"

    log_in(page, "admin@example.com")
    page.get_by_role("link", name="运营管理").click()
    expect(page.get_by_role("heading", name="运营管理")).to_be_visible()

    # Stock, edited inline on the products table.
    page.get_by_role("link", name="商品与库存").click()
    row = page.locator("tr[data-sku=PA-TEA-003]")
    row.get_by_label("库存").fill("123")
    row.get_by_role("button", name="保存").click()
    expect(page.locator(".flash-success")).to_have_text("PA-TEA-003 已保存。")
    expect(page.locator("tr[data-sku=PA-TEA-003]").get_by_label("库存")).to_have_value("123")
    assert api_product(live_shop, "PA-TEA-003")["stock"] == 123
    shot(page, "admin-products")

    # A bad price is refused with a message, nothing changes.
    row = page.locator("tr[data-sku=PA-TEA-003]")
    row.get_by_label("单价（元）").fill("12.345")
    row.get_by_role("button", name="保存").click()
    expect(page.locator(".flash-error")).to_be_visible()
    assert api_product(live_shop, "PA-TEA-003")["price_fen"] == 39800

    # Ship the paid order with carrier and tracking number.
    page.get_by_role("link", name="订单发货与退款").click()
    page.get_by_label("状态").select_option("paid")
    expect(page).to_have_url(re.compile(r"status=paid"))
    order = page.locator(f"[data-order={number}]")
    order.get_by_label("承运商").fill("顺丰速运")
    order.get_by_label("运单号").fill("SF1234567890")
    order.get_by_role("button", name="标记发货").click()
    expect(page.locator(".flash-success")).to_have_text(f"订单 {number} 已发货。")
    shipped = api_order(live_shop, number, buyer)
    assert (shipped["status"], shipped["carrier"], shipped["tracking_number"]) == (
        "shipped",
        "顺丰速运",
        "SF1234567890",
    )

    # Refund ¥10.00 of it by amount.
    page.goto("/admin/orders")
    order = page.locator(f"[data-order={number}]")
    expect(order.locator(".status")).to_have_text("已发货")
    order.locator("summary", has_text="退款").click()
    order.get_by_label("按金额（元）").check()
    order.get_by_label("退款金额（元）").fill("10.00")
    shot(page, "admin-refund-form")
    order.get_by_role("button", name="确认退款").click()
    expect(page.locator(".flash-success")).to_have_text(f"订单 {number} 的退款已提交。")
    live_shop.wait_for_webhooks()
    refunded = api_order(live_shop, number, buyer)
    assert (refunded["status"], refunded["refunded_fen"]) == ("partially_refunded", 1000)
    page.goto("/admin/orders?status=partially_refunded")
    expect(page.locator(f"[data-order={number}] .status")).to_have_text("部分退款")
    shot(page, "admin-orders")


def test_an_admin_registers_a_supplier_and_its_certificate(page: Page) -> None:
    log_in(page, "admin@example.com")
    page.goto("/admin/suppliers")
    page.get_by_label("名称").fill("普安县新店茶叶专业合作社")
    page.get_by_label("统一社会信用代码").fill("not-a-credit-code!")
    page.get_by_label("所在县").select_option(label="普安县")
    page.get_by_role("button", name="登记", exact=True).click()
    expect(page.locator(".flash-error")).to_contain_text("统一社会信用代码无效")

    code = demo_credit_code("93", "522323", 99)
    page.get_by_label("名称").fill("普安县新店茶叶专业合作社")
    page.get_by_label("统一社会信用代码").fill(code)
    page.get_by_label("所在县").select_option(label="普安县")
    page.get_by_label("带动脱贫户数").fill("42")
    page.get_by_role("button", name="登记", exact=True).click()
    expect(page.locator(".flash-success")).to_have_text("供应商已登记。")

    row = page.locator("tr", has_text=code)
    row.get_by_label("证书编号").fill("QXN-XFBF-2025-0099")
    row.get_by_label("有效期自").fill("2025-01-01")
    row.get_by_label("有效期至").fill("2027-12-31")
    row.get_by_role("button", name="添加").click()
    expect(page.locator(".flash-success")).to_have_text("认定证书已登记。")
    expect(page.locator("tr", has_text=code)).to_contain_text("QXN-XFBF-2025-0099")
    shot(page, "admin-suppliers")
