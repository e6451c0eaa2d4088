"""Typed models of reconciliation with Stripe: the disagreements it finds."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shop.db import Base, utcnow


class DiscrepancyKind(StrEnum):
    PAID_AT_STRIPE_ONLY = "paid_at_stripe_not_in_shop"
    PAID_IN_SHOP_ONLY = "paid_in_shop_not_at_stripe"
    AMOUNT_DIFFERS = "amount_differs"
    REFUND_DIFFERS = "refund_differs"
    CURRENCY_DIFFERS = "currency_differs"


class DiscrepancyStatus(StrEnum):
    OPEN = "open"
    REPAIRED = "repaired"  # reconciliation put the shop right (a missed webhook)
    RESOLVED = "resolved"  # finance looked into it and wrote a note


class Discrepancy(Base):
    """A disagreement between the shop and Stripe; found once per kind and Stripe object."""

    __tablename__ = "discrepancies"
    __table_args__ = (
        UniqueConstraint("kind", "stripe_object", name="uq_discrepancies_found_once"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=DiscrepancyStatus.OPEN, index=True)
    stripe_object: Mapped[str] = mapped_column(String(255))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    order_number: Mapped[str | None] = mapped_column(String(24))
    shop_fen: Mapped[int | None] = mapped_column(BigInteger)
    stripe_fen: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    detail: Mapped[str] = mapped_column(String(512), default="")
    found_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    note: Mapped[str] = mapped_column(Text, default="")
