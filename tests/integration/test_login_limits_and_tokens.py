"""Sign-in limits per account and per client address (in memory and shared through Redis), the
client address behind a proxy, and bearer tokens a person lists and revokes."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
import redis
from argon2 import PasswordHasher
from flask import Flask
from sqlalchemy import select, update

from shop.accounts.models import ApiToken, User
from shop.accounts.services import issue_token
from shop.db import utcnow
from shop.extensions import db
from tests.conftest import HUIZHOU_ADDRESS, PASSWORD, make_app

# Redis database 3 is this file's own; CI's PostgreSQL run names its database in the environment.
REDIS_URL = "redis://127.0.0.1:6379/3"
TOO_MANY = re.compile(r"登录尝试过于频繁，请 \d+ 秒后再试。")


@pytest.fixture(scope="module")
def password_hash() -> str:
    """PASSWORD hashed once: every person made here shares it (a hash costs a fair fraction of
    a second, by design)."""
    return PasswordHasher().hash(PASSWORD)


def new_account(app: Flask, password_hash: str) -> str:
    """A person of their own, so that counts kept in Redis by other runs never meet this one."""
    email = f"limit-{uuid4().hex[:12]}@example.com"
    with app.app_context():
        db.session.add(User(email=email, name="限流测试", password_hash=password_hash))
        db.session.commit()
    return email


def token_for(app: Flask, email: str) -> dict[str, str]:
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        assert user is not None
        token = issue_token(db.session, user, days=1)
        db.session.commit()
    return {"Authorization": f"Bearer {token}"}


def address() -> str:
    """A client in a /64 of its own in the documentation range (never contacted, only named)."""
    block = uuid4().int
    return f"2001:db8:{block & 0xFFFF:x}:{(block >> 16) & 0xFFFF:x}::{(block >> 32) & 0xFFFF:x}"


def api_login(client: Any, email: str, password: str, client_address: str) -> Any:
    return client.post(
        "/api/v1/auth/tokens",
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": client_address},
    )


def page_login(client: Any, email: str, password: str, client_address: str) -> Any:
    form = client.get("/login", environ_base={"REMOTE_ADDR": client_address})
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.get_data(as_text=True))
    assert token
    return client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token.group(1)},
        environ_base={"REMOTE_ADDR": client_address},
    )


def assert_told_to_wait(response: Any) -> None:
    assert response.status_code == 429
    wait = int(response.headers["Retry-After"])
    assert 1 <= wait <= 60
    if response.is_json:
        error = response.get_json()["error"]
        assert error["code"] == "too_many_requests"
        assert TOO_MANY.fullmatch(error["message"]), error["message"]
    else:
        assert TOO_MANY.search(response.get_data(as_text=True))


def test_a_password_storm_on_one_account_from_many_addresses_is_stopped(
    database_url, emulator, password_hash
) -> None:
    app = make_app(
        database_url,
        emulator,
        LOGIN_RATE_LIMIT="100 per minute",
        LOGIN_ACCOUNT_RATE_LIMIT="2 per minute",
    )
    client = app.test_client()
    victim = new_account(app, password_hash)
    # Page and API count against the same account; each guess comes from another address.
    assert api_login(client, victim, "guess-one", address()).status_code == 401
    assert page_login(client, victim, "guess-two", address()).status_code == 401
    spelt_otherwise = " Limit" + victim.removeprefix("limit")
    assert_told_to_wait(api_login(client, spelt_otherwise, "guess-three", address()))
    assert_told_to_wait(page_login(client, victim.upper(), "guess-four", address()))
    # Until the window moves on, not even the right password gets in…
    assert_told_to_wait(api_login(client, victim, PASSWORD, address()))
    # …while another person signs in as usual.
    other = new_account(app, password_hash)
    assert page_login(client, other, PASSWORD, address()).status_code == 302


def test_many_accounts_tried_from_one_address_are_stopped(
    database_url, emulator, password_hash
) -> None:
    app = make_app(
        database_url,
        emulator,
        LOGIN_RATE_LIMIT="2 per minute",
        LOGIN_ACCOUNT_RATE_LIMIT="100 per minute",
    )
    client = app.test_client()
    attacker = address()
    statuses = [
        api_login(client, f"nobody-{n}-{uuid4().hex[:8]}@example.com", "guess", attacker)
        for n in range(2)
    ]
    assert {r.status_code for r in statuses} == {401}
    person = new_account(app, password_hash)
    assert_told_to_wait(api_login(client, person, PASSWORD, attacker))
    assert_told_to_wait(page_login(client, person, PASSWORD, attacker))
    assert api_login(client, person, PASSWORD, address()).status_code == 201


def test_behind_a_proxy_the_client_address_is_taken_from_it_only_when_configured(
    database_url, emulator
) -> None:
    proxy = address()

    def attempts(hops: int) -> list[int]:
        app = make_app(
            database_url,
            emulator,
            LOGIN_RATE_LIMIT="1 per minute",
            LOGIN_ACCOUNT_RATE_LIMIT="100 per minute",
            PROXY_FIX_HOPS=hops,
        )
        client = app.test_client()
        return [
            client.post(
                "/api/v1/auth/tokens",
                json={"email": f"nobody-{uuid4().hex[:8]}@example.com", "password": "guess"},
                headers={"X-Forwarded-For": address()},
                environ_base={"REMOTE_ADDR": proxy},
            ).status_code
            for _ in range(2)
        ]

    # Trusting no proxy, a forged X-Forwarded-For changes nothing: one address, limited.
    assert attempts(0) == [401, 429]
    # Behind one nginx, each client behind it has its own count.
    assert attempts(1) == [401, 401]


@pytest.fixture
def shared_redis() -> str:
    url = os.environ.get("RATELIMIT_STORAGE_URI", "")
    url = url if url.startswith("redis://") else REDIS_URL
    connection = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        connection.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis at {url} is not reachable: {exc}")
    finally:
        connection.close()
    return url


def test_two_web_processes_share_the_counts_through_redis(
    database_url, emulator, shared_redis, password_hash
) -> None:
    limits = {
        "RATELIMIT_STORAGE_URI": shared_redis,
        "LOGIN_RATE_LIMIT": "2 per minute",
        "LOGIN_ACCOUNT_RATE_LIMIT": "2 per minute",
    }
    first = make_app(database_url, emulator, **limits).test_client()
    second = make_app(database_url, emulator, **limits).test_client()
    victim = new_account(first.application, password_hash)
    # Per account: one wrong password through each process spends it for both.
    assert api_login(first, victim, "guess-one", address()).status_code == 401
    assert api_login(second, victim, "guess-two", address()).status_code == 401
    assert_told_to_wait(api_login(first, victim, "guess-three", address()))

    # Per address: one sign-in through each process spends it for both.
    one_address = address()
    person = new_account(first.application, password_hash)
    assert api_login(second, person, PASSWORD, one_address).status_code == 201
    assert api_login(first, person, PASSWORD, one_address).status_code == 201
    assert_told_to_wait(api_login(second, person, PASSWORD, one_address))


def token_ids(client: Any, headers: dict[str, str]) -> dict[int, bool]:
    listed = client.get("/api/v1/auth/tokens", headers=headers)
    assert listed.status_code == 200, listed.get_json()
    items = listed.get_json()["items"]
    for item in items:
        assert set(item) == {"id", "created_at", "expires_at", "revoked"}
    return {item["id"]: item["revoked"] for item in items}


def test_a_person_lists_and_revokes_their_own_tokens_and_no_one_elses(
    database_url, emulator, password_hash
) -> None:
    app = make_app(database_url, emulator)
    client = app.test_client()
    me, someone = new_account(app, password_hash), new_account(app, password_hash)
    issued = client.post("/api/v1/auth/tokens", json={"email": me, "password": PASSWORD})
    assert issued.status_code == 201
    assert set(issued.get_json()) == {"token", "expires_in_days"}
    first = {"Authorization": f"Bearer {issued.get_json()['token']}"}
    second = token_for(app, me)
    theirs = token_for(app, someone)

    mine = token_ids(client, first)
    assert len(mine) == 2 and not any(mine.values())
    first_id, second_id = sorted(mine)
    their_id = next(iter(token_ids(client, theirs)))
    assert their_id not in mine
    listing = client.get("/api/v1/auth/tokens", headers=first).get_data(as_text=True)
    assert issued.get_json()["token"] not in listing

    # Someone else's token: not found, and it keeps working.
    refused = client.delete(f"/api/v1/auth/tokens/{their_id}", headers=first)
    assert refused.status_code == 404
    assert refused.get_json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/me", headers=theirs).status_code == 200

    # My second token, revoked: refused from then on, listed as revoked; the first still works.
    assert client.delete(f"/api/v1/auth/tokens/{second_id}", headers=first).status_code == 204
    assert client.delete(f"/api/v1/auth/tokens/{second_id}", headers=first).status_code == 204
    revoked = client.get("/api/v1/me", headers=second)
    assert revoked.status_code == 401
    assert revoked.get_json()["error"]["code"] == "unauthorized"
    assert token_ids(client, first) == {first_id: False, second_id: True}

    # An expired token is refused and no longer listed.
    with app.app_context():
        db.session.execute(
            update(ApiToken)
            .where(ApiToken.id == first_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    assert client.get("/api/v1/me", headers=first).status_code == 401
    assert first_id not in token_ids(client, token_for(app, me))
    assert client.get("/api/v1/auth/tokens").status_code == 401


def test_the_openapi_document_describes_listing_and_revoking_tokens(database_url, emulator) -> None:
    client = make_app(database_url, emulator).test_client()
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    assert set(paths["/api/v1/auth/tokens"]) == {"get", "post"}
    revoke = paths["/api/v1/auth/tokens/{token_id}"]["delete"]
    assert {"204", "401", "404"} <= set(revoke["responses"])
    assert "429" in paths["/api/v1/auth/tokens"]["post"]["responses"]


def test_the_account_page_lists_my_tokens_and_revokes_one_with_a_csrf_token(
    database_url, emulator, password_hash
) -> None:
    app = make_app(database_url, emulator)
    client = app.test_client()
    me, someone = new_account(app, password_hash), new_account(app, password_hash)
    token, theirs = token_for(app, me), token_for(app, someone)
    with app.app_context():
        my_id = db.session.scalar(select(User.id).where(User.email == me))
        token_id = db.session.scalar(select(ApiToken.id).where(ApiToken.user_id == my_id))
        their_token = db.session.scalar(select(ApiToken.id).join(User).where(User.email == someone))
    with client.session_transaction() as session:
        session["_user_id"] = str(my_id)
        session["_fresh"] = True

    page = client.get("/account").get_data(as_text=True)
    row = re.search(rf'<tr data-token="{token_id}">(.*?)</tr>', page, re.DOTALL)
    assert row and "有效" in row.group(1)
    assert f'data-token="{their_token}"' not in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf

    assert client.post(f"/account/tokens/{token_id}/revoke").status_code == 400
    assert client.get("/api/v1/me", headers=token).status_code == 200
    elsewhere = client.post(
        f"/account/tokens/{their_token}/revoke", data={"csrf_token": csrf.group(1)}
    )
    assert elsewhere.status_code == 404
    assert client.get("/api/v1/me", headers=theirs).status_code == 200

    done = client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf.group(1)})
    assert done.status_code == 303
    # Refused although this client also holds my session cookie: a token speaks for itself.
    assert client.get("/api/v1/me", headers=token).status_code == 401
    page = client.get("/account").get_data(as_text=True)
    assert "令牌已撤销" in page
    row = re.search(rf'<tr data-token="{token_id}">(.*?)</tr>', page, re.DOTALL)
    assert row and "已撤销" in row.group(1) and "<form" not in row.group(1)


def test_a_made_up_authorization_header_does_not_borrow_the_session_cookie(
    database_url, emulator, password_hash
) -> None:
    app = make_app(database_url, emulator)
    client = app.test_client()
    me = new_account(app, password_hash)
    with app.app_context():
        my_id = db.session.scalar(select(User.id).where(User.email == me))
    with client.session_transaction() as session:
        session["_user_id"] = str(my_id)
        session["_fresh"] = True
    assert client.get("/api/v1/me").status_code == 200
    order = {"lines": [{"sku": "PA-TEA-005", "quantity": 1}], "address": HUIZHOU_ADDRESS}
    # The API skips its CSRF check for requests with a token; a cookie must not pass as one.
    for header in ("Bearer made-up", "Basic bWU6cGFzc3dvcmQ="):
        refused = client.post("/api/v1/orders", json=order, headers={"Authorization": header})
        assert refused.status_code == 401
    assert client.get("/api/v1/orders").get_json()["items"] == []
