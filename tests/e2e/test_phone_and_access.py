"""Phone-sized pages and accessibility in a real browser: a buyer orders on a 390 px phone (no
sideways scrolling, thumb-sized buy and pay buttons, readable text), every role's main page names
its form fields, has one <h1> and alt texts, the checkout works from the keyboard alone, and body
text and the primary button meet the WCAG AA contrast ratio."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.conftest import HUIZHOU_ADDRESS, LiveShop, shots_dir

pytestmark = pytest.mark.browser

PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
MIN_TAP_PX = 40
MIN_TEXT_PX = 12
AA_RATIO = 4.5
MAX_TABS = 60

# Visible elements holding their own text whose computed font size is below the minimum.
SMALL_TEXT_JS = """min => {
  const small = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || el.closest('.visually-hidden')) continue;
    const size = parseFloat(style.fontSize);
    if (size < min) small.push(`${el.tagName.toLowerCase()}.${el.className}: ${size}px`);
  }
  return small;
}"""

# Links and controls that touch the screen's edge, and tables wider than their scroll box.
EDGE_JS = """margin => {
  const width = document.documentElement.clientWidth;
  const touching = [];
  for (const el of document.querySelectorAll('a, button, input, select, textarea')) {
    const box = el.getBoundingClientRect();
    if (!box.width || !box.height || el.closest('.visually-hidden')) continue;
    if (box.left < margin || box.right > width - margin) touching.push(el.outerHTML.slice(0, 80));
  }
  const clipped = [...document.querySelectorAll('.table-scroll')]
    .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.scrollWidth);
  return {touching, clipped};
}"""
EDGE_PX = 4

# Visible form fields, links and buttons with no accessible name, images without alt, the <h1>
# count and <html lang>.
A11Y_JS = """() => {
  const visible = el =>
    el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  const unnamed = [];
  for (const el of document.querySelectorAll('input, select, textarea')) {
    const skipped = ['hidden', 'submit', 'button', 'reset', 'image'].includes(el.type);
    if (skipped || !visible(el)) continue;
    const label = [...(el.labels || [])].some(l => l.textContent.trim());
    const aria = (el.getAttribute('aria-label') || '').trim();
    const ids = (el.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean);
    const by = ids.some(id => (document.getElementById(id)?.textContent || '').trim());
    if (!label && !aria && !by) unnamed.push(el.outerHTML.slice(0, 120));
  }
  const spoken = el => [...el.childNodes].map(n => {
    if (n.nodeType === 3) return n.textContent;
    if (n.nodeType !== 1 || n.getAttribute('aria-hidden') === 'true') return '';
    if (n.tagName === 'IMG') return n.getAttribute('alt') || '';
    const shown = n.getClientRects().length || n.closest('.visually-hidden');
    return shown ? spoken(n) : '';
  }).join('');
  for (const el of document.querySelectorAll('a[href], button')) {
    if (!visible(el)) continue;
    const name = (el.getAttribute('aria-label') || '') + spoken(el);
    if (!name.trim()) unnamed.push(el.outerHTML.slice(0, 120));
  }
  return {
    unnamed,
    noAlt: [...document.images].filter(img => !img.hasAttribute('alt')).map(img => img.src),
    h1: document.querySelectorAll('h1').length,
    lang: document.documentElement.lang,
  };
}"""

# WCAG 2.x contrast ratio of an element's text colour against its effective background.
CONTRAST_JS = """el => {
  const rgba = text => (text.match(/[\\d.]+/g) || []).map(Number);
  const background = node => {
    for (; node; node = node.parentElement) {
      const c = rgba(getComputedStyle(node).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const luminance = ([r, g, b]) => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const fg = luminance(rgba(getComputedStyle(el).color).slice(0, 3));
  const bg = luminance(background(el));
  return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
}"""


def check_phone_page(page: Page, name: str) -> None:
    """Fits the phone's width, no text below 12 px; photographed as phone-<name>.png."""
    page.screenshot(path=str(shots_dir() / f"phone-{name}.png"), full_page=True)
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1] + 1, f"{name} scrolls sideways: {widths}"
    assert page.evaluate(SMALL_TEXT_JS, MIN_TEXT_PX) == [], name
    check_accessible(page, f"phone-{name}")
    edges = page.evaluate(EDGE_JS, EDGE_PX)
    assert edges["touching"] == [], f"{name}: on the screen's edge {edges['touching']}"
    assert edges["clipped"] == [], f"{name}: a table scrolls sideways {edges['clipped']}"


def tall_enough(target: Locator) -> None:
    box = target.bounding_box()
    assert box is not None and box["height"] >= MIN_TAP_PX, box


def check_accessible(page: Page, name: str) -> None:
    found = page.evaluate(A11Y_JS)
    assert found["unnamed"] == [], f"{name}: without an accessible name {found['unnamed']}"
    assert found["noAlt"] == [], f"{name}: images without alt {found['noAlt']}"
    assert found["h1"] == 1, f"{name}: {found['h1']} <h1>"
    assert found["lang"].startswith("zh"), f"{name}: lang={found['lang']}"


def contrast(target: Locator) -> float:
    ratio: float = target.evaluate(CONTRAST_JS)
    return ratio


def tab_to(page: Page, selector: str) -> None:
    """Presses Tab until the element matching the selector has the focus."""
    for _ in range(MAX_TABS):
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def has_focus_ring(target: Locator) -> bool:
    style = target.evaluate(
        "el => { const s = getComputedStyle(el);"
        " return [s.outlineStyle, s.outlineWidth, s.boxShadow]; }"
    )
    outline = style[0] != "none" and style[1] != "0px"
    return outline or style[2] != "none"


def test_a_buyer_orders_on_a_phone(sign_in: Any, live_shop: LiveShop) -> None:
    page = sign_in("buyer@example.com", **PHONE)
    page.goto("/login")
    check_phone_page(page, "sign-in")

    page.goto("/")
    check_phone_page(page, "catalogue")
    page.locator("[data-filter=county]").get_by_role("link", name="普安县").click()
    expect(page).to_have_url(re.compile(r"county=522323"))
    check_phone_page(page, "county")

    page.goto("/products/PA-TEA-001")
    check_phone_page(page, "product")
    add = page.get_by_role("button", name="加入购物车")
    tall_enough(add)
    page.get_by_label("数量").fill("2")
    add.tap()
    expect(page).to_have_url(re.compile(r"/cart$"))
    check_phone_page(page, "cart")
    to_checkout = page.get_by_role("link", name="去结算")
    tall_enough(to_checkout)

    to_checkout.tap()
    expect(page).to_have_url(re.compile(r"/checkout$"))
    page.get_by_label("收货人").fill(HUIZHOU_ADDRESS["name"])
    page.get_by_label("手机").fill(HUIZHOU_ADDRESS["phone"])
    page.locator("select#district").select_option(label=HUIZHOU_ADDRESS["district"])
    page.get_by_label("详细地址").fill(HUIZHOU_ADDRESS["detail"])
    check_phone_page(page, "checkout")
    pay = page.get_by_role("button", name="提交订单并支付")
    tall_enough(pay)
    pay.tap()
    expect(page).to_have_url(re.compile("^" + re.escape(live_shop.emulator_url) + "/checkout/"))

    page.goto("/orders")
    check_phone_page(page, "orders")
    page.locator(".order-number").first.click()
    expect(page).to_have_url(re.compile(r"/orders/HQ\d+$"))
    check_phone_page(page, "order")
    tall_enough(page.get_by_role("link", name="去支付"))


def test_main_pages_are_accessible_and_checkout_works_by_keyboard(
    sign_in: Any, live_shop: LiveShop
) -> None:
    buyer = sign_in("buyer@example.com")
    buyer.goto("/")
    check_accessible(buyer, "catalogue")
    body = buyer.locator("body")
    assert contrast(body) >= AA_RATIO
    assert contrast(buyer.locator(".result-summary")) >= AA_RATIO

    buyer.goto("/products/PA-TEA-001")
    check_accessible(buyer, "product")
    add = buyer.get_by_role("button", name="加入购物车")
    assert contrast(add) >= AA_RATIO
    add.click()
    expect(buyer).to_have_url(re.compile(r"/cart$"))
    check_accessible(buyer, "cart")

    # Checkout from the keyboard alone: Tab into each field, type, Tab on, Enter to pay.
    buyer.goto("/checkout")
    check_accessible(buyer, "checkout")
    tab_to(buyer, "#name")
    buyer.keyboard.type(HUIZHOU_ADDRESS["name"])
    tab_to(buyer, "#phone")
    buyer.keyboard.type(HUIZHOU_ADDRESS["phone"])
    tab_to(buyer, "#district")
    buyer.keyboard.press("ArrowDown")
    assert buyer.locator("#district").input_value() != ""
    tab_to(buyer, "#detail")
    buyer.keyboard.type(HUIZHOU_ADDRESS["detail"])
    tab_to(buyer, "#checkout-form button[type=submit]")
    pay = buyer.get_by_role("button", name="提交订单并支付")
    expect(pay).to_be_focused()
    assert has_focus_ring(pay), "the focused pay button shows no focus ring"
    assert contrast(pay) >= AA_RATIO
    buyer.keyboard.press("Enter")
    expect(buyer).to_have_url(re.compile("^" + re.escape(live_shop.emulator_url) + "/checkout/"))

    officer = sign_in("officer@example.com")
    officer.goto("/procurement/")
    check_accessible(officer, "procurement")
    officer.goto("/procurement/new")
    check_accessible(officer, "procurement-new")

    finance = sign_in("finance@example.com")
    finance.goto("/finance/")
    check_accessible(finance, "finance")

    admin = sign_in("admin@example.com")
    admin.goto("/admin/products")
    check_accessible(admin, "admin-products")
    assert contrast(admin.locator("body")) >= AA_RATIO
