"""Users, API tokens and the audit trail of staff changes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shop.db import Base, utcnow


class Role(StrEnum):
    BUYER = "buyer"
    ADMIN = "admin"
    FINANCE = "finance"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default=Role.BUYER)
    active: Mapped[bool] = mapped_column(default=True)
    # The unit a buyer works for: their personal purchases also show in its progress.
    employer_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # Flask-Login protocol
    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(self.id)

    def has_role(self, *roles: Role) -> bool:
        return self.role in roles


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked: Mapped[bool] = mapped_column(default=False)

    user: Mapped[User] = relationship()


class AuditEntry(Base):
    """Who changed what, when, from what to what: every admin and finance change.

    `details` is {"before": {...}, "after": {...}}, without "before" for what was created, and
    with "about" for facts about the target that the change left as they were. Append-only: the
    database refuses UPDATE and DELETE (shop/accounts/audit_sql.py).
    """

    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    # None: the command line or the shop itself, not a signed-in person.
    actor: Mapped[User | None] = relationship()

    @property
    def before(self) -> dict[str, Any] | None:
        return self.details.get("before")

    @property
    def after(self) -> dict[str, Any]:
        """What the change left; entries written before the shape was fixed keep theirs here."""
        if "after" in self.details:
            return dict(self.details["after"])
        return {k: v for k, v in self.details.items() if k not in ("before", "about")}

    @property
    def about(self) -> dict[str, Any] | None:
        return self.details.get("about")

    @property
    def fields(self) -> list[str]:
        """The fields named before or after the change, each once, in the order recorded."""
        return list(dict.fromkeys([*(self.before or {}), *self.after]))
