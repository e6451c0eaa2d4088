"""Security headers, the content security policy, cookies and CSRF, on the pages every kind of
person reaches: no inline script, handler or style anywhere, a CSRF token in every posted form."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from flask import Flask, template_rendered
from sqlalchemy import select
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from shop.accounts.models import User
from shop.config import load_config
from shop.demo import load_demo_data, load_demo_sales
from shop.extensions import db
from shop.finance.models import ExportJob
from shop.orders.models import Order
from shop.security import STRIPE_CHECKOUT_ORIGIN, content_security_policy
from tests.conftest import HUIZHOU_ADDRESS, emulator_control, make_app, reset_database

TEMPLATES = Path(__file__).resolve().parents[2] / "shop" / "templates"
ROLES = ("buyer", "admin", "finance", "officer", "approver")
# Where each kind of person starts; the rest is found by following the links on the pages.
SEEDS = (
    "/",
    "/account",
    "/cart",
    "/checkout",
    "/orders",
    "/procurement/",
    "/procurement/new",
    "/no-such-page",  # the error page
)
SEEDS_BY_ROLE = {
    "admin": ("/admin/", "/admin/orders", "/admin/products", "/admin/suppliers"),
    "finance": ("/finance/", "/finance/overdue", "/finance/discrepancies", "/finance/months"),
}
# Downloads lead to no page template (nor do language switches, which are not followed either).
NOT_FOLLOWED = ("/static/", "/api/", "/finance/offline-sales/sample/", "/procurement/sample/")


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


class PageAudit(HTMLParser):
    """What a page holds that the policy forbids, its posted forms, and the links it offers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.links: list[str] = []
        self.post_forms: list[tuple[str, bool]] = []
        self._form: tuple[str, list[bool]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, _ in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=…> inline event handler")
            if name == "style":
                self.problems.append(f"<{tag} style=…> inline style")
        if tag == "script" and not values.get("src"):
            self.problems.append("<script> without src")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag == "form" and (values.get("method") or "get").lower() == "post":
            self._form = (values.get("action") or "", [])
        if tag == "input" and self._form is not None and values.get("name") == "csrf_token":
            self._form[1].append(bool(values.get("value")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._form is not None:
            action, tokens = self._form
            self.post_forms.append((action, tokens == [True]))
            self._form = None


def audit(html: str) -> PageAudit:
    page = PageAudit()
    page.feed(html)
    page.close()
    return page


def sign_in_as(client: Any, app: Flask, email: str) -> None:
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == email))
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def csrf_token_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def test_every_answer_carries_the_security_headers_and_a_policy_without_inline_code(
    database_url, emulator
) -> None:
    client = make_app(database_url, emulator).test_client()
    answers = {
        "page": client.get("/"),
        "missing page": client.get("/no-such-page"),
        "api": client.get("/api/v1/products"),
        "api error": client.get("/api/v1/orders"),
        "static file": client.get("/static/shop.css"),
        "redirect": client.get("/orders"),
    }
    for what, response in answers.items():
        headers = response.headers
        assert headers.get("X-Content-Type-Options") == "nosniff", what
        assert headers.get("X-Frame-Options") == "DENY", what
        assert headers.get("Referrer-Policy") == "same-origin", what
        assert "Strict-Transport-Security" not in headers, f"{what}: HSTS outside production"
        policy = directives(headers["Content-Security-Policy"])
        assert policy["script-src"] == ["'self'"], what
        assert policy["style-src"] == ["'self'"], what
        assert policy["frame-ancestors"] == ["'none'"], what
        assert policy["object-src"] == ["'none'"], what
        assert policy["base-uri"] == ["'self'"], what
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"], what
        assert "'unsafe-eval'" not in headers["Content-Security-Policy"], what
    assert answers["redirect"].status_code == 302


def test_forms_post_here_and_the_checkout_redirect_goes_to_stripe_checkout_only() -> None:
    emulator = directives(content_security_policy({"STRIPE_API_BASE": "http://127.0.0.1:12111/"}))
    assert emulator["form-action"] == ["'self'", "http://127.0.0.1:12111"]
    stripe = directives(content_security_policy({"STRIPE_API_BASE": ""}))
    assert stripe["form-action"] == ["'self'", STRIPE_CHECKOUT_ORIGIN]


def test_production_adds_hsts_and_secure_cookies(database_url, emulator) -> None:
    production = load_config(
        {
            "SHOP_ENV": "production",
            "SECRET_KEY": "a-production-secret",
            "DATABASE_URL": database_url,
            "STRIPE_SECRET_KEY": "sk_test_emulator",
            "STRIPE_WEBHOOK_SECRET": "whsec_emulator",
        }
    )
    app = make_app(database_url, emulator, **production)
    response = app.test_client().get("/login")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    cookie = response.headers["Set-Cookie"]
    assert "; Secure" in cookie and "; HttpOnly" in cookie and "; SameSite=Lax" in cookie
    # Sessions never use Flask-Login's remember-me cookie; were it set, it would be as guarded.
    assert app.config["REMEMBER_COOKIE_SECURE"] is True
    assert app.config["REMEMBER_COOKIE_HTTPONLY"] is True
    assert app.config["REMEMBER_COOKIE_SAMESITE"] == "Lax"

    development = make_app(database_url, emulator).test_client().get("/login")
    cookie = development.headers["Set-Cookie"]
    assert "; HttpOnly" in cookie and "; SameSite=Lax" in cookie and "; Secure" not in cookie


def test_a_page_form_posted_without_its_csrf_token_is_refused_and_changes_nothing(
    shop_in_use: Flask,
) -> None:
    app = shop_in_use
    client = app.test_client()
    sign_in_as(client, app, "buyer@example.com")
    page = client.get("/account")
    unit = re.search(r'<option value="(\d+)"', page.get_data(as_text=True))
    assert unit, "no unit to choose on the account page"
    refused = client.post("/account/employer", data={"organisation_id": unit.group(1)})
    assert refused.status_code == 400
    assert "页面已过期" in refused.get_data(as_text=True)
    assert client.post("/logout").status_code == 400
    assert client.get("/api/v1/me").status_code == 200, "still signed in"
    with app.app_context():
        buyer = db.session.scalar(select(User).where(User.email == "buyer@example.com"))
        assert buyer is not None and buyer.employer_organisation_id is None

    token = csrf_token_of(page.get_data(as_text=True))
    accepted = client.post(
        "/account/employer", data={"organisation_id": unit.group(1), "csrf_token": token}
    )
    assert accepted.status_code == 303


def test_template_sources_have_no_inline_code_and_every_posted_form_has_a_csrf_token() -> None:
    handler = re.compile(r"<[a-zA-Z][^>]*?(?<![\w-])on[a-z]+\s*=", re.DOTALL)
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
    style = re.compile(r"<[a-zA-Z][^>]*?\sstyle\s*=|<style[\s>]", re.DOTALL | re.IGNORECASE)
    post_form = re.compile(r"<form\b[^>]*method=\"post\"[^>]*>(.*?)</form>", re.DOTALL)
    problems = []
    templates = sorted(TEMPLATES.rglob("*.html"))
    assert len(templates) > 30
    for path in templates:
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(TEMPLATES)
        for pattern, what in ((handler, "handler"), (inline_script, "script"), (style, "style")):
            problems += [
                f"{name}: inline {what}: {m.group(0)[:60]!r}" for m in pattern.finditer(source)
            ]
        for form in post_form.finditer(source):
            if "csrf()" not in form.group(1) and "csrf_token()" not in form.group(1):
                problems.append(f"{name}: a posted form without a CSRF token")
    assert problems == []


@pytest.fixture(scope="module")
def shop_in_use(database_url: str, emulator: str) -> Iterator[Flask]:
    """Paid sales, a buyer's unpaid order, a unit order awaiting approval, an export.

    Built once for this module's page tests: they read it, and change only what they check.
    """
    emulator_control(emulator, "failures", mode="none")
    emulator_control(emulator, "webhooks", url=None, drop_next=0)
    reset_database(database_url)
    app = make_app(database_url, emulator)
    with app.app_context():
        load_demo_data(db.session)
        load_demo_sales(db.session, orders=4)
        finance = db.session.scalar(select(User).where(User.email == "finance@example.com"))
        assert finance is not None
        db.session.add(
            ExportJob(
                id=uuid4().hex,
                report="totals",
                format="csv",
                params="{}",
                requested_by=finance.id,
            )
        )
        db.session.commit()
        db.session.remove()
    client = app.test_client()
    sign_in_as(client, app, "buyer@example.com")
    placed = client.post(
        "/api/v1/orders",
        json={"lines": [{"sku": "PA-TEA-005", "quantity": 1}], "address": HUIZHOU_ADDRESS},
        headers=api_headers(client),
    )
    assert placed.status_code == 201, placed.get_json()
    client = app.test_client()
    sign_in_as(client, app, "officer@example.com")
    quick = {
        "text": "PA-TEA-001 10",
        "delivery": {
            "recipient": "食堂",
            "phone": "13800138000",
            "address": "文昌一路 8 号",
            "district": "惠城区",
        },
    }
    drafted = client.post(
        "/api/v1/procurement/orders/quick", json=quick, headers=api_headers(client)
    )
    assert drafted.status_code == 201, drafted.get_json()
    submitted = client.post(
        f"/api/v1/procurement/orders/{drafted.get_json()['id']}/submit",
        headers=api_headers(client),
    )
    assert submitted.status_code == 200, submitted.get_json()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def api_headers(client: Any) -> dict[str, str]:
    """A signed-in page's CSRF token, for API writes with the session cookie."""
    return {"X-CSRFToken": csrf_token_of(client.get("/account").get_data(as_text=True))}


def crawl(app: Flask, client: Any, seeds: tuple[str, ...]) -> dict[str, PageAudit]:
    """GET the seeds and every page linked from them, one address per view."""
    adapter = app.url_map.bind("localhost")
    queue: deque[str] = deque(seeds)
    seen_views: set[str] = set()
    pages: dict[str, PageAudit] = {}
    while queue:
        url = queue.popleft()
        path = urlsplit(url).path
        try:
            view, _ = adapter.match(path, method="GET")
        except (HTTPException, RequestRedirect):
            view = f"missing:{path}"
        if view in seen_views:
            continue
        seen_views.add(view)
        response = client.get(url)
        if response.mimetype != "text/html":
            continue
        page = audit(response.get_data(as_text=True))
        pages[url] = page
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or not parts.path.startswith("/"):
                continue
            if "lang=" in parts.query or parts.path.startswith(NOT_FOLLOWED):
                continue
            queue.append(link)
    return pages


def test_no_page_anyone_reaches_has_inline_code_and_every_posted_form_has_a_csrf_token(
    shop_in_use: Flask,
) -> None:
    app = shop_in_use
    rendered: set[str] = set()

    def record(sender: Flask, template: Any, context: dict[str, Any], **extra: Any) -> None:
        rendered.add(template.name)

    problems: list[str] = []
    visited = 0
    with template_rendered.connected_to(record, app):
        for role in (None, *ROLES):
            client = app.test_client()
            if role:
                sign_in_as(client, app, f"{role}@example.com")
            if role == "buyer":
                product = client.get("/products/PA-TEA-005").get_data(as_text=True)
                added = client.post(
                    "/cart/add",
                    data={
                        "sku": "PA-TEA-005",
                        "quantity": "1",
                        "csrf_token": csrf_token_of(product),
                    },
                )
                assert added.status_code == 302
            seeds = SEEDS + SEEDS_BY_ROLE.get(role or "", ())
            if role == "finance":
                with app.app_context():
                    job = db.session.scalar(select(ExportJob.id))
                seeds += (f"/finance/exports/{job}",)
            if role == "buyer":
                with app.app_context():
                    number = db.session.scalar(
                        select(Order.number).where(Order.status == "awaiting_payment")
                    )
                seeds += (f"/orders/{number}/confirmation",)
            for url, page in crawl(app, client, seeds).items():
                visited += 1
                problems += [f"{role or 'anonymous'} {url}: {p}" for p in page.problems]
                problems += [
                    f"{role or 'anonymous'} {url}: form posting to {action} has no CSRF token"
                    for action, has_token in page.post_forms
                    if not has_token
                ]
    assert problems == []
    page_templates = {
        str(path.relative_to(TEMPLATES))
        for path in TEMPLATES.rglob("*.html")
        if not path.name.startswith("_") and path.name != "base.html"
    }
    assert page_templates - rendered == set(), "page templates no one reached in this test"
    assert visited > 40
