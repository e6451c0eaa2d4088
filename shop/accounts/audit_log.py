"""Reading the audit trail: what it records, and finding entries by action, actor, target, day."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import joinedload

from shop.accounts.models import AuditEntry, Role, User
from shop.timezones import SHANGHAI

# Operations and finance each read the other's changes: refunds and prices are money finance
# reconciles, month closes and transfers are what operations answers buyers about. Nobody
# edits an entry (the database refuses).
READERS = (Role.ADMIN, Role.FINANCE)

# Every kind of change the shop records, in the order the audit page offers them.
ACTIONS = (
    "product.create",
    "product.update",
    "supplier.create",
    "certification.create",
    "order.ship",
    "order.cancel",
    "order.refund",
    "order.approve",
    "order.reject",
    "order.transfer",
    "order.cancel_overdue",
    "ledger.close_month",
    "ledger.import_offline",
    "discrepancy.resolve",
    "organisation.create",
    "organisation.member",
    "user.create",
)


def jsonable(value: Any) -> Any:
    """Dates as ISO text, enums as their values and tuples as lists, so details store alike on
    every database."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, date):  # a datetime is a date too
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


@dataclass(frozen=True)
class AuditFilter:
    """Empty fields match everything; `start` and `end` are Shanghai days, both included."""

    action: str = ""
    actor_email: str = ""
    target: str = ""
    start: date | None = None
    end: date | None = None


def _shanghai_midnight(day: date) -> datetime | None:
    """The UTC instant a Shanghai day starts; None past the calendar's ends (no bound)."""
    try:
        return datetime.combine(day, time(0), SHANGHAI).astimezone(UTC)
    except OverflowError:
        return None


def audit_query(filters: AuditFilter) -> Select[AuditEntry]:
    """The entries matching `filters`, newest first, each with its actor loaded."""
    query = (
        select(AuditEntry)
        .options(joinedload(AuditEntry.actor))
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    )
    if filters.action:
        query = query.where(AuditEntry.action == filters.action)
    if filters.actor_email:
        query = query.where(
            AuditEntry.actor_id.in_(
                select(User.id).where(
                    User.email.contains(filters.actor_email.strip().lower(), autoescape=True)
                )
            )
        )
    if filters.target:
        query = query.where(AuditEntry.target.contains(filters.target.strip(), autoescape=True))
    if filters.start is not None and (since := _shanghai_midnight(filters.start)) is not None:
        query = query.where(AuditEntry.at >= since)
    if filters.end is not None:
        try:
            until = _shanghai_midnight(filters.end + timedelta(days=1))
        except OverflowError:
            until = None
        if until is not None:
            query = query.where(AuditEntry.at < until)
    return query
