"""Creating users, checking passwords, issuing and resolving bearer tokens, auditing."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import secrets
import time
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from shop.accounts.audit_log import jsonable
from shop.accounts.models import ApiToken, AuditEntry, Role, User
from shop.db import DbSession, utcnow
from shop.errors import Conflict, InvalidInput, NotFound, ShopError, Unauthorized
from shop.procurement.models import Organisation

log = logging.getLogger(__name__)

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

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"登录尝试过于频繁，请 {retry_after} 秒后再试。",
            details=[{"retry_after": retry_after}],
        )
        self.retry_after = retry_after


class _FallbackLimiter:
    """A moving-window limiter on shared storage (Redis) that counts in this process's memory
    while that storage cannot be reached.

    Failing open would let a password storm through while Redis restarts; failing closed would
    keep everyone from signing in. Counting per process keeps a limit, only a less shared one.
    """

    def __init__(self, storage_uri: str) -> None:
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        if not storage_uri.startswith("memory://"):
            # Short timeouts: an unreachable Redis must not hold a sign-in for minutes.
            timeouts = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
            storage = storage_from_string(
                storage_uri,
                wrap_exceptions=True,
                **(timeouts if storage_uri.startswith("redis") else {}),
            )
            self._shared = MovingWindowRateLimiter(storage)

    def _limiter(self, call: str, *args: Any) -> Any:
        if self._shared is not None:
            try:
                return getattr(self._shared, call)(*args)
            except StorageError as exc:
                log.warning("rate-limit storage unreachable, counting in this process: %s", exc)
        return getattr(self._memory, call)(*args)

    def hit(self, limit: RateLimitItem, *identifiers: str) -> bool:
        return bool(self._limiter("hit", limit, *identifiers))

    def test(self, limit: RateLimitItem, *identifiers: str) -> bool:
        return bool(self._limiter("test", limit, *identifiers))

    def get_window_stats(self, limit: RateLimitItem, *identifiers: str) -> Any:
        return self._limiter("get_window_stats", limit, *identifiers)


class LoginThrottle:
    """Counts sign-in attempts in moving windows, in memory or in Redis (shared by every process).

    Every attempt counts against the client address; failed ones count against the account, so
    a password storm on one account from many addresses stops as well as one address trying many
    accounts. A spent account refuses even the right password until its window moves on.
    """

    def __init__(self, storage_uri: str, *, per_address: str, per_account: str) -> None:
        self._limiter = _FallbackLimiter(storage_uri)
        self._per_address = parse_many(per_address)
        self._per_account = parse_many(per_account)

    def check(self, address: str, email: str) -> None:
        """Count one attempt from `address`; TooManyAttempts if it or the account is spent."""
        where = ("login-address", _address_key(address))
        spent = [limit for limit in self._per_address if not self._limiter.hit(limit, *where)]
        if spent:
            raise TooManyAttempts(self._wait(spent, where))
        who = ("login-account", _account_key(email))
        spent = [limit for limit in self._per_account if not self._limiter.test(limit, *who)]
        if spent:
            raise TooManyAttempts(self._wait(spent, who))

    def failed(self, email: str) -> None:
        """Count a wrong password (or an unknown e-mail) against the account."""
        for limit in self._per_account:
            self._limiter.hit(limit, "login-account", _account_key(email))

    def _wait(self, spent: list[RateLimitItem], identifiers: tuple[str, str]) -> int:
        """Whole seconds until each spent window has room again."""
        now = time.time()
        resets = [self._limiter.get_window_stats(limit, *identifiers).reset_time for limit in spent]
        return max(1, math.ceil(max(resets) - now))


def _address_key(address: str) -> str:
    """An IPv6 client is counted by its /64, the block one subscriber usually holds."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _account_key(email: str) -> str:
    # Hashed: the rate-limit storage never holds anyone's e-mail address.
    return hashlib.sha256(normalise_email(email).encode()).hexdigest()[:32]


def sign_in(
    session: DbSession, throttle: LoginThrottle, *, address: str, email: str, password: str
) -> User:
    """The user behind e-mail and password, if neither the address nor the account is spent."""
    throttle.check(address, email)
    try:
        return authenticate(session, email, password)
    except Unauthorized:
        throttle.failed(email)
        raise


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


def live_tokens(session: DbSession, user: User) -> list[ApiToken]:
    """A person's tokens that have not expired, revoked ones included, newest first."""
    return list(
        session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.expires_at > utcnow())
            .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        )
    )


def revoke_token(session: DbSession, user: User, token_id: int) -> ApiToken:
    """Revoke one of the person's own tokens; revoking it again changes nothing."""
    token = session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id)
    )
    if token is None:
        raise NotFound("没有这个令牌。", details=[{"field": "token_id"}])
    token.revoked = True
    return token


def audit(
    session: DbSession,
    actor: User | None,
    action: str,
    target: str,
    *,
    after: dict[str, Any],
    before: dict[str, Any] | None = None,
    about: dict[str, Any] | None = None,
) -> None:
    """Record a staff change: who (`actor`; None for the command line), when (now, UTC), what
    (`action` on `target`) and the values `before` and `after` it; no `before` for what is
    created. `about` holds facts about the target that the change left as they were."""
    details: dict[str, Any] = {"after": after}
    if before is not None:
        details["before"] = before
    if about is not None:
        details["about"] = about
    session.add(
        AuditEntry(
            actor_id=actor.id if actor else None,
            action=action,
            target=target,
            details=jsonable(details),
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
