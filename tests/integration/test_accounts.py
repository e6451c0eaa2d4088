"""Logging in for a token: hashed passwords and tokens, rate limits, CSRF for cookie sessions."""

from __future__ import annotations

from sqlalchemy import select

from shop.accounts.models import ApiToken, User
from shop.extensions import db
from tests.conftest import make_app


def test_a_token_is_issued_for_the_right_password_only(client, app) -> None:
    wrong = client.post(
        "/api/v1/auth/tokens", json={"email": "buyer@example.com", "password": "wrong-password"}
    )
    assert wrong.status_code == 401
    assert wrong.get_json()["error"]["code"] == "unauthorized"
    unknown = client.post(
        "/api/v1/auth/tokens", json={"email": "nobody@example.com", "password": "demo-password"}
    )
    assert unknown.status_code == 401
    assert unknown.get_json()["error"]["message"] == wrong.get_json()["error"]["message"]
    ok = client.post(
        "/api/v1/auth/tokens", json={"email": " Buyer@Example.com ", "password": "demo-password"}
    )
    assert ok.status_code == 201
    token = ok.get_json()["token"]
    with app.app_context():
        stored = db.session.scalars(select(ApiToken.token_hash)).all()
        hashes = db.session.scalars(select(User.password_hash)).all()
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64
    assert all(h.startswith("$argon2id$") for h in hashes)
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.get_json()["email"] == "buyer@example.com"


def test_a_deactivated_user_loses_their_token(client, app, buyer) -> None:
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "buyer@example.com"))
        user.active = False
        db.session.commit()
    assert client.get("/api/v1/me", headers=buyer).status_code == 401


def test_login_attempts_are_rate_limited(database_url, emulator) -> None:
    app = make_app(database_url, emulator, LOGIN_RATE_LIMIT="3 per minute")
    client = app.test_client()
    attempt = {"email": "buyer@example.com", "password": "guess-guess"}
    statuses = [client.post("/api/v1/auth/tokens", json=attempt).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    limited = client.post(
        "/api/v1/auth/tokens", json={"email": "buyer@example.com", "password": "demo-password"}
    )
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "too_many_requests"


def test_cookie_sessions_need_a_csrf_token_for_api_writes(client, app) -> None:
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == "buyer@example.com"))
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True
    assert client.get("/api/v1/me").status_code == 200
    refused = client.post("/api/v1/orders", json={"lines": [], "address": {}})
    assert refused.status_code == 400
    assert "CSRF" in refused.get_json()["error"]["message"]


def test_unknown_api_paths_and_methods_answer_in_json(client) -> None:
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    wrong_method = client.delete("/api/v1/products")
    assert wrong_method.status_code == 405
    assert wrong_method.get_json()["error"]["code"] == "method_not_allowed"
