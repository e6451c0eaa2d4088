"""Typed models of buying units, their members, approvals and offline bank transfers."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shop.accounts.models import User
from shop.catalog.models import District
from shop.db import Base, utcnow


class OrganisationType(StrEnum):
    PUBLIC_INSTITUTION = "机关事业单位"
    STATE_OWNED = "国有企业"
    TRADE_UNION = "工会"
    PRIVATE = "民营企业"
    SOCIAL = "社会组织"


class MemberRole(StrEnum):
    REQUESTER = "requester"
    APPROVER = "approver"
    FINANCE_VIEWER = "finance_viewer"


class Organisation(Base):
    """A buying unit (采购单位) with its yearly reserved-share target (预留份额)."""

    __tablename__ = "organisations"
    __table_args__ = (
        CheckConstraint("reserved_target_fen >= 0", name="target_not_negative"),
        CheckConstraint("payment_terms_days BETWEEN 1 AND 365", name="terms_in_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16))
    credit_code: Mapped[str] = mapped_column(String(18), unique=True)
    district_id: Mapped[int] = mapped_column(ForeignKey("districts.id"))
    reserved_target_fen: Mapped[int] = mapped_column(default=0)
    invoice_title: Mapped[str] = mapped_column(String(128))
    tax_id: Mapped[str] = mapped_column(String(32))
    default_funding: Mapped[str] = mapped_column(String(16))
    payment_terms_days: Mapped[int] = mapped_column(default=30)
    # Orders above this amount need two different approvers; None: one is enough.
    dual_approval_above_fen: Mapped[int | None]
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    district: Mapped[District] = relationship()
    members: Mapped[list[Membership]] = relationship(
        back_populates="organisation", cascade="all, delete-orphan"
    )


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("organisation_id", "user_id", "role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))

    organisation: Mapped[Organisation] = relationship(back_populates="members")
    user: Mapped[User] = relationship()


class Approval(Base):
    """One approver's decision on a unit order; each approver decides once."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("order_id", "approver_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    approver_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(16))  # approved | rejected
    reason: Mapped[str] = mapped_column(String(256), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    approver: Mapped[User] = relationship()


class BankTransfer(Base):
    """对公转账 recorded by finance: pays a unit order outside Stripe."""

    __tablename__ = "bank_transfers"
    __table_args__ = (CheckConstraint("amount_fen > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    payer_account: Mapped[str] = mapped_column(String(64))
    amount_fen: Mapped[int]
    paid_on: Mapped[date]
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    recorded_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
