"""Accounts JSON API: bearer tokens for scripts."""

from __future__ import annotations

from flask import current_app, request
from pydantic import BaseModel, Field

from shop.accounts.models import User
from shop.accounts.services import authenticate, issue_token
from shop.api import api_blueprint, endpoint
from shop.extensions import db

bp = api_blueprint("auth_api", __name__)


class TokenRequest(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class TokenOut(BaseModel):
    token: str
    expires_in_days: int


class MeOut(BaseModel):
    email: str
    name: str
    role: str


@endpoint(
    bp,
    "/auth/tokens",
    "POST",
    summary="Exchange e-mail and password for a bearer token",
    body=TokenRequest,
    response=TokenOut,
    status=201,
    roles=None,
    errors=(401, 429),
)
def create_token(body: TokenRequest) -> TokenOut:
    current_app.extensions["login_throttle"].hit(request.remote_addr or "")
    user = authenticate(db.session, body.email, body.password)
    days = current_app.config["API_TOKEN_DAYS"]
    token = issue_token(db.session, user, days=days)
    db.session.commit()
    return TokenOut(token=token, expires_in_days=days)


@endpoint(bp, "/me", "GET", summary="Who the token or session belongs to", response=MeOut)
def me(user: User) -> MeOut:
    return MeOut(email=user.email, name=user.name, role=user.role)
