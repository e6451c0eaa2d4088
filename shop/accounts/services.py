"""Creating users, checking passwords, issuing and resolving bearer tokens, auditing."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from shop.accounts.models import ApiToken, AuditEntry, Role, User
from shop.db import DbSession, utcnow
from shop.errors import Conflict, InvalidInput, ShopError, Unauthorized
from shop.procurement.models import Organisation

_hasher = PasswordHasher()
# Verifying against this keeps unknown e-mails as slow as wrong passwords.
_DUMMY_HASH = _hasher.hash("not-a-password")
MIN_PASSWORD_LENGTH = 8


def normalise_email(email: str) -> str:
    return email.strip().lower()


def create_user(
    session: DbSession, *, email: str, password: str, name: str, role: Role = Role.BUYER
) -> User:
    email = normalise_email(email)
    if "@" not in email or len(email) > 254:
        raise InvalidInput("请输入有效的电子邮箱。", details=[{"field": "email"}])
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"密码至少需要 {MIN_PASSWORD_LENGTH} 个字符。", details=[{"field": "password"}]
        )
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("该邮箱已注册。", code="email_taken")
    user = User(email=email, name=name, role=role, password_hash=_hasher.hash(password))
    session.add(user)
    session.flush()
    return user


class TooManyAttempts(ShopError):
    code = "too_many_requests"
    status = 429


class LoginThrottle:
    """Counts login attempts per client address in a moving window (memory or Redis)."""

    def __init__(self, storage_uri: str, limit: str) -> None:
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))
        self._limit = parse(limit)

    def hit(self, client: str) -> None:
        if not self._limiter.hit(self._limit, "login", client):
            raise TooManyAttempts("登录尝试过于频繁，请稍后再试。")


def authenticate(session: DbSession, email: str, password: str) -> User:
    user = session.scalar(select(User).where(User.email == normalise_email(email)))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        raise Unauthorized("邮箱或密码不正确。") from None
    if user is None or not user.active:
        raise Unauthorized("邮箱或密码不正确。")
    return user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: DbSession, user: User, *, days: int) -> str:
    token = "hq_" + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            user_id=user.id, token_hash=_digest(token), expires_at=utcnow() + timedelta(days=days)
        )
    )
    session.flush()
    return token


def user_for_token(session: DbSession, token: str) -> User | None:
    row = session.scalar(
        select(ApiToken)
        .options(joinedload(ApiToken.user))
        .where(ApiToken.token_hash == _digest(token))
    )
    if row is None or row.revoked or row.expires_at <= utcnow() or not row.user.active:
        return None
    return row.user


def audit(session: DbSession, actor: User | None, action: str, target: str, **details: Any) -> None:
    session.add(
        AuditEntry(
            actor_id=actor.id if actor else None, action=action, target=target, details=details
        )
    )


def employer_choices(session: DbSession) -> list[Organisation]:
    """The units a person may name as the one they work for."""
    return list(
        session.scalars(
            select(Organisation)
            .options(joinedload(Organisation.district))
            .order_by(Organisation.name)
        )
    )


def set_employer(session: DbSession, user: User, organisation_id: int | None) -> None:
    """Name the unit a person works for, or none.

    Their own purchases show in its progress from their next payment on; ledger entries
    already written keep the attribution they were written with.
    """
    if organisation_id is not None and session.get(Organisation, organisation_id) is None:
        raise InvalidInput(
            "没有这个采购单位。",
            details=[
                {"field": "organisation_id", "message": f"没有编号为 {organisation_id} 的单位。"}
            ],
        )
    user.employer_organisation_id = organisation_id
