"""Headless Debian Chromium for the page tests, driven by Playwright."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from io import BytesIO
from typing import Any

import openpyxl
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import PASSWORD, LiveShop

CHROMIUM = "/usr/bin/chromium"
# No background traffic: this machine has no network beyond the package registries.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def sign_in(browser: Browser, live_shop: LiveShop) -> Iterator[Callable[..., Page]]:
    """A signed-in page per person, each in its own browser context (its own session cookie)."""
    contexts: list[BrowserContext] = []

    def open_as(email: str, *, javascript: bool = True, **device: Any) -> Page:
        """`device` overrides the desktop viewport: a phone's viewport, is_mobile, has_touch."""
        context = browser.new_context(
            base_url=live_shop.url,
            locale="zh-CN",
            accept_downloads=True,
            java_script_enabled=javascript,
            **{"viewport": {"width": 1280, "height": 900}, **device},
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto("/login")
        page.get_by_label("邮箱").fill(email)
        page.get_by_label("密码").fill(PASSWORD)
        page.get_by_role("button", name="登录").click()
        expect(page.get_by_role("button", name="退出")).to_be_visible()
        return page

    yield open_as
    for context in contexts:
        context.close()


def total_row_amount(workbook_bytes: bytes) -> Decimal:
    """The 元 amount on the xlsx's 合计 row (the header row names the amount column)."""
    sheet = openpyxl.load_workbook(BytesIO(workbook_bytes)).active
    assert sheet is not None
    rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    header = [str(cell or "") for cell in rows[0]]
    amount_column = next(i for i, name in enumerate(header) if "金额" in name)
    total = next(row for row in rows if any(str(cell or "") == "合计" for cell in row))
    return Decimal(str(total[amount_column])).quantize(Decimal("0.01"))
