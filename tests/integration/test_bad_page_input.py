"""Input the database cannot hold, sent to the HTML pages: a NUL character (PostgreSQL text has no
room for it) and page numbers beyond any integer column. Each gets a clear 4xx page or the last
page, never a 500, and changes nothing."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import func, select

from shop.accounts.models import User
from shop.extensions import db
from tests.integration.test_security_headers import csrf_token_of, sign_in_as

HUGE = "99999999999999999999"


def test_nul_in_a_page_request_is_refused_with_a_page_not_a_database_error(client: Any) -> None:
    for url in ("/?q=%00", "/?county=%00", "/?category=tea%00", "/?a%00=1"):
        response = client.get(url)
        assert response.status_code == 400, url
        assert "NUL" in response.get_data(as_text=True), url
    assert client.get("/products/PA-TEA%00-001").status_code == 404


def test_a_form_with_nul_is_refused_and_signs_nobody_in(client: Any, app: Flask) -> None:
    token = csrf_token_of(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login",
        data={"email": "buyer@example.com\x00", "password": "demo-password", "csrf_token": token},
    )
    assert response.status_code == 400
    assert client.get("/account").status_code == 302  # still signed out: sent to the login page
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 5


def test_page_numbers_beyond_any_integer_show_an_empty_last_page(client: Any, app: Flask) -> None:
    catalogue = client.get(f"/?page={HUGE}")
    assert catalogue.status_code == 200
    assert 'href="/products/' not in catalogue.get_data(as_text=True)  # past the end: none
    assert 'href="/products/' in client.get("/?page=-3").get_data(as_text=True)  # the first

    sign_in_as(client, app, "admin@example.com")
    for url in (f"/admin/orders?page={HUGE}", f"/admin/audit?page={HUGE}"):
        assert client.get(url).status_code == 200, url
