"""The content security policy in Chromium: a buyer checks out through Stripe Checkout (a
redirect to another origin), waits for the payment on the confirmation page and revokes a token;
an officer changes the year of the unit's progress; finance opens the dashboard. Chromium
reports no violation of the policy on the way, and does report one made on purpose."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect
from sqlalchemy import select

from shop.accounts.models import User
from shop.extensions import db
from tests.conftest import PASSWORD, LiveShop

pytestmark = pytest.mark.browser

# Runs before the page's own scripts (Playwright adds it outside the page's policy).
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", function (event) {
  console.error("CSP violation: " + event.violatedDirective + " blocked " + event.blockedURI);
});
"""


class Violations:
    """Every policy violation Chromium reports on the console of the pages it is given."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def watch(self, page: Page) -> Page:
        page.on("console", self._console)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or text.startswith("CSP violation"):
            self.seen.append(f"{message.page.url if message.page else '?'}: {text}")


@pytest.fixture
def violations() -> Violations:
    return Violations()


@pytest.fixture
def open_as(
    browser: Browser, live_shop: LiveShop, violations: Violations
) -> Iterator[dict[str, Page]]:
    """The buyer signs in through the login page; the others arrive with a session cookie."""
    contexts: list[BrowserContext] = []

    def new_page() -> Page:
        context = browser.new_context(
            base_url=live_shop.url, viewport={"width": 1280, "height": 900}, locale="zh-CN"
        )
        context.set_default_timeout(15_000)
        context.add_init_script(REPORT_VIOLATIONS)
        contexts.append(context)
        page = violations.watch(context.new_page())
        page.on("dialog", lambda dialog: dialog.accept())
        return page

    def with_session(email: str) -> Page:
        app = live_shop.app
        with app.app_context():
            user_id = db.session.scalar(select(User.id).where(User.email == email))
            db.session.remove()
        signer = app.session_interface.get_signing_serializer(app)
        page = new_page()
        page.context.add_cookies(
            [
                {
                    "name": app.config["SESSION_COOKIE_NAME"],
                    "value": signer.dumps({"_user_id": str(user_id), "_fresh": True}),
                    "url": live_shop.url,
                }
            ]
        )
        return page

    buyer = new_page()
    buyer.goto("/login")
    buyer.get_by_label("邮箱").fill("buyer@example.com")
    buyer.get_by_label("密码").fill(PASSWORD)
    buyer.get_by_role("button", name="登录").click()
    expect(buyer.get_by_role("button", name="退出")).to_be_visible()
    yield {
        "buyer": buyer,
        "officer": with_session("officer@example.com"),
        "finance": with_session("finance@example.com"),
    }
    for context in contexts:
        context.close()


def test_key_pages_and_the_checkout_redirect_break_no_content_security_policy(
    open_as: dict[str, Page], live_shop: LiveShop, violations: Violations
) -> None:
    buyer = open_as["buyer"]
    buyer.goto("/products/PA-TEA-005")
    buyer.get_by_role("button", name="加入购物车").click()
    expect(buyer).to_have_url(re.compile(r"/cart$"))
    buyer.goto("/checkout")
    # The district field follows the city (orders.js): a list for Huizhou, typed elsewhere.
    district_list, district_typed = (
        buyer.locator("select#district"),
        buyer.locator("#district_other"),
    )
    buyer.get_by_label("市", exact=True).fill("贵阳市")
    expect(district_list).to_be_hidden()
    expect(district_typed).to_be_visible()
    buyer.get_by_label("市", exact=True).fill("惠州市")
    expect(district_list).to_be_visible()
    district_list.select_option(label="惠城区")
    buyer.get_by_label("手机").fill("13800138000")
    buyer.get_by_label("详细地址").fill("江北街道文昌一路 8 号")
    buyer.get_by_role("button", name="提交订单并支付").click()
    # form-action lets the answer redirect to Stripe Checkout (here the emulator's page).
    expect(buyer).to_have_url(re.compile("^" + re.escape(live_shop.emulator_url) + "/checkout/"))
    live_shop.control("webhooks", drop_next=1000)
    buyer.get_by_role("button", name="Pay", exact=True).click()
    expect(buyer.get_by_test_id("confirming")).to_be_visible()
    live_shop.control("webhooks", drop_next=0)
    held = requests.get(f"{live_shop.emulator_url}/_emulator/deliveries", timeout=10).json()
    for delivery in held:
        if delivery["status"] == "dropped":
            live_shop.control(f"events/{delivery['event_id']}/deliver")
    # The page's script asks the API (connect-src 'self') and reloads once the payment landed.
    expect(buyer.locator(".confirmation .status")).to_have_text("已支付", timeout=20_000)

    # A token revoked from the account page, after the site script's "are you sure?".
    token = live_shop.token("buyer@example.com")
    buyer.goto("/account")
    buyer.locator("#tokens").get_by_role("button", name="撤销").click()
    expect(buyer.locator(".flash-success")).to_contain_text("令牌已撤销")
    assert requests.get(f"{live_shop.url}/api/v1/me", headers=token, timeout=10).status_code == 401

    # Choosing another year sends the form by itself (data-autosubmit).
    officer = open_as["officer"]
    officer.goto("/procurement/")
    year = officer.get_by_label("年度")
    last_year = str(int(year.input_value()) - 1)
    year.select_option(last_year)
    expect(officer).to_have_url(re.compile(rf"year={last_year}"))
    expect(officer.get_by_role("progressbar")).to_be_visible()

    finance = open_as["finance"]
    finance.goto("/finance/")
    expect(finance.get_by_role("progressbar").first).to_be_visible()
    finance.goto("/finance/months")

    assert violations.seen == []

    # The watch itself works: an inline script added now is blocked, and reported.
    finance.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.inlineRan = true'; document.body.append(s); }"
    )
    assert finance.evaluate("() => window.inlineRan === undefined")
    for _ in range(50):  # reports arrive asynchronously: up to 5 s
        if violations.seen:
            break
        finance.wait_for_timeout(100)
    assert any("script-src" in seen for seen in violations.seen), violations.seen
