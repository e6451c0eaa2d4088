"""Typed models of orders, their lines, addresses, status history and refunds."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shop.accounts.models import User
from shop.catalog.models import County, Product
from shop.db import Base, utcnow


class Status(StrEnum):
    DRAFT = "draft"
    PENDING_APPROVAL = "pending_approval"
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    SHIPPED = "shipped"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


# The order life cycle (SPEC §4). Anything not listed here is refused.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.DRAFT: frozenset({Status.PENDING_APPROVAL, Status.AWAITING_PAYMENT, Status.CANCELLED}),
    Status.PENDING_APPROVAL: frozenset({Status.AWAITING_PAYMENT, Status.CANCELLED}),
    Status.AWAITING_PAYMENT: frozenset({Status.PAID, Status.CANCELLED}),
    Status.PAID: frozenset({Status.SHIPPED, Status.PARTIALLY_REFUNDED, Status.REFUNDED}),
    Status.SHIPPED: frozenset({Status.COMPLETED, Status.PARTIALLY_REFUNDED, Status.REFUNDED}),
    Status.COMPLETED: frozenset({Status.PARTIALLY_REFUNDED, Status.REFUNDED}),
    Status.PARTIALLY_REFUNDED: frozenset(
        {Status.SHIPPED, Status.COMPLETED, Status.PARTIALLY_REFUNDED, Status.REFUNDED}
    ),
    Status.REFUNDED: frozenset(),
    Status.CANCELLED: frozenset(),
}

# Stock is held by orders in these states; leaving them for `cancelled` gives it back.
RESERVING = frozenset({Status.PENDING_APPROVAL, Status.AWAITING_PAYMENT})


class Channel(StrEnum):
    ONLINE = "online"
    UNIT = "unit"
    OFFLINE = "offline"


class Funding(StrEnum):
    BUDGET = "财政资金"
    UNION = "工会经费"
    OWN = "自有资金"
    PERSONAL = "个人"


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("total_fen = goods_fen + shipping_fen", name="total_adds_up"),
        CheckConstraint("refunded_fen >= 0 AND refunded_fen <= total_fen", name="refund_bounded"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(24), unique=True)
    channel: Mapped[str] = mapped_column(String(16), default=Channel.ONLINE)
    status: Mapped[str] = mapped_column(String(24), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    funding: Mapped[str] = mapped_column(String(16), default=Funding.PERSONAL)
    goods_fen: Mapped[int]
    shipping_fen: Mapped[int]
    total_fen: Mapped[int]
    refunded_fen: Mapped[int] = mapped_column(default=0)
    currency: Mapped[str] = mapped_column(String(3), default="cny")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    paid_at: Mapped[datetime | None]
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    checkout_url: Mapped[str | None] = mapped_column(Text)
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), index=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    invoice_due_at: Mapped[datetime | None]
    carrier: Mapped[str | None] = mapped_column(String(64))
    tracking_number: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship()
    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", order_by="OrderLine.id", cascade="all, delete-orphan"
    )
    addresses: Mapped[list[OrderAddress]] = relationship(
        back_populates="order", order_by="OrderAddress.id", cascade="all, delete-orphan"
    )
    history: Mapped[list[StatusChange]] = relationship(
        back_populates="order", order_by="StatusChange.id", cascade="all, delete-orphan"
    )
    refunds: Mapped[list[Refund]] = relationship(
        back_populates="order", order_by="Refund.id", cascade="all, delete-orphan"
    )

    @property
    def refundable_fen(self) -> int:
        return self.total_fen - self.refunded_fen


class OrderAddress(Base):
    """Where (part of) an order is delivered; `district_id` is set for Huizhou addresses."""

    __tablename__ = "order_addresses"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    phone: Mapped[str] = mapped_column(String(32))
    province: Mapped[str] = mapped_column(String(32))
    city: Mapped[str] = mapped_column(String(32))
    district: Mapped[str] = mapped_column(String(32))
    district_id: Mapped[int | None] = mapped_column(ForeignKey("districts.id"))
    detail: Mapped[str] = mapped_column(String(256))

    order: Mapped[Order] = relationship(back_populates="addresses")


class OrderLine(Base):
    """One SKU of an order, with what it cost and where it came from at order time."""

    __tablename__ = "order_lines"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("amount_fen = unit_price_fen * quantity", name="amount_adds_up"),
        CheckConstraint(
            "refunded_quantity >= 0 AND refunded_quantity <= quantity", name="refund_bounded"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    address_id: Mapped[int | None] = mapped_column(ForeignKey("order_addresses.id"))
    sku: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128))
    pack: Mapped[str] = mapped_column(String(32))
    category: Mapped[str] = mapped_column(String(16))
    county_id: Mapped[int] = mapped_column(ForeignKey("counties.id"))
    supplier_id: Mapped[int] = mapped_column(ForeignKey("suppliers.id"))
    certified: Mapped[bool]
    cooperation_county: Mapped[bool]
    unit_price_fen: Mapped[int]
    quantity: Mapped[int]
    amount_fen: Mapped[int]
    refunded_quantity: Mapped[int] = mapped_column(default=0)

    order: Mapped[Order] = relationship(back_populates="lines")
    product: Mapped[Product] = relationship()
    county: Mapped[County] = relationship()
    address: Mapped[OrderAddress | None] = relationship()


class StatusChange(Base):
    """Every transition of an order: who, when, why."""

    __tablename__ = "order_status_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str] = mapped_column(String(24))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(String(256), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    order: Mapped[Order] = relationship(back_populates="history")


class Refund(Base):
    """Money given back through Stripe: the whole order, chosen lines, or an amount."""

    __tablename__ = "refunds"
    __table_args__ = (CheckConstraint("amount_fen > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # full | lines | amount | external
    amount_fen: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|succeeded|failed
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    reason: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    succeeded_at: Mapped[datetime | None]
    # When its ledger entries were written: a refund of shipping only writes none, and the
    # recognition sweep must still know it is done.
    recognised_at: Mapped[datetime | None]

    order: Mapped[Order] = relationship(back_populates="refunds")
    lines: Mapped[list[RefundLine]] = relationship(
        back_populates="refund", cascade="all, delete-orphan"
    )


class RefundLine(Base):
    __tablename__ = "refund_lines"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    refund_id: Mapped[int] = mapped_column(ForeignKey("refunds.id"), index=True)
    order_line_id: Mapped[int] = mapped_column(ForeignKey("order_lines.id"))
    quantity: Mapped[int]
    amount_fen: Mapped[int]

    refund: Mapped[Refund] = relationship(back_populates="lines")
    order_line: Mapped[OrderLine] = relationship()
