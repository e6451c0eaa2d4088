"""Typed models of the ledger: entries, daily totals, cursors, closed months, counter sales."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shop.db import Base, utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")

OUTSIDE_HUIZHOU = "市外"
INDIVIDUAL = "个人"


class Source(StrEnum):
    """What caused an entry: each source event writes its entries once (SPEC §5 rule 5)."""

    PAYMENT = "payment"  # source_id: the order
    REFUND = "refund"  # source_id: the refund
    OFFLINE = "offline"  # source_id: the imported counter sale


class Kind(StrEnum):
    PURCHASE = "采购"  # the buyer is in Huizhou
    SALES_HELP = "帮助销售"  # the buyer is elsewhere


class NotCounted(StrEnum):
    """Why an entry is written but not counted (SPEC §5 rule 3)."""

    UNCERTIFIED = "下单时商品未获消费帮扶认定"
    NOT_COOPERATION = "产地不是协作县"
    NOT_DECLARED = "柜台销售未注明为认定产品"


class LedgerEntry(Base):
    """One line's share of one source event. Append-only: never updated, never deleted."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("source", "source_id", "line_no", name="uq_ledger_entries_source_event"),
        Index("ix_ledger_entries_day", "day"),
        Index("ix_ledger_entries_order_id", "order_id"),
        Index("ix_ledger_entries_organisation_id", "organisation_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(8))
    source_id: Mapped[int] = mapped_column(BigInteger)
    # The order line for payments and refunds; 0 for a counter sale.
    line_no: Mapped[int] = mapped_column(BigInteger)
    # The booking day (Shanghai): the event's day, or today's if that month is closed.
    day: Mapped[date]
    occurred_at: Mapped[datetime]
    reference: Mapped[str] = mapped_column(String(40))  # order number or counter-sale reference
    # No foreign keys on the ids below: every one is copied from a row that holds the same key
    # (an order line, an order, a counter sale), nothing in the shop deletes those rows, and the
    # entry keeps its own copy of every name it is reported by. Checking them cost more than
    # writing the entries themselves when a sweep recognises a year of orders (bench/reconcile.py).
    order_id: Mapped[int | None]
    order_line_id: Mapped[int | None]
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int]
    county_id: Mapped[int]
    county: Mapped[str] = mapped_column(String(32))
    district: Mapped[str] = mapped_column(String(32))
    buyer_type: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    channel: Mapped[str] = mapped_column(String(8))
    funding: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(16))
    sku: Mapped[str | None] = mapped_column(String(32))
    supplier_id: Mapped[int | None]
    # The buying unit, or the employer a buyer named (their personal spending shows there too).
    organisation_id: Mapped[int | None]
    counted: Mapped[bool]
    reason: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# The dimensions a daily total is kept by, in key order.
DIMENSIONS = ("county", "district", "buyer_type", "kind", "channel", "funding", "category")


class DailyTotal(Base):
    """The ledger summed by Shanghai day and every dimension; kept up to date by `rollup`."""

    __tablename__ = "ledger_daily_totals"

    day: Mapped[date] = mapped_column(primary_key=True)
    county: Mapped[str] = mapped_column(String(32), primary_key=True)
    district: Mapped[str] = mapped_column(String(32), primary_key=True)
    buyer_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    channel: Mapped[str] = mapped_column(String(8), primary_key=True)
    funding: Mapped[str] = mapped_column(String(16), primary_key=True)
    category: Mapped[str] = mapped_column(String(16), primary_key=True)
    counted: Mapped[bool] = mapped_column(primary_key=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    # Recognised order lines (refunds add none), and orders counted so that a total grouped
    # with or without county and category counts each order once per row: `orders` when both
    # are grouped by, `orders_in_county` / `orders_in_category` for one, `orders_overall` for
    # neither (see ledger.services._cells).
    lines: Mapped[int] = mapped_column(BigInteger)
    orders: Mapped[int] = mapped_column(BigInteger)
    orders_in_county: Mapped[int] = mapped_column(BigInteger)
    orders_in_category: Mapped[int] = mapped_column(BigInteger)
    orders_overall: Mapped[int] = mapped_column(BigInteger)


class Cursor(Base):
    """How far a job has got: the last ledger entry rolled up, the last Stripe object seen…"""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ClosedMonth(Base):
    """A month finance has closed: nothing dated inside it changes afterwards (rule 6)."""

    __tablename__ = "closed_months"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM, Shanghai
    closed_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # The month's counted total and entry count when it was closed, to check it never moves.
    total_fen: Mapped[int] = mapped_column(BigInteger)
    entries: Mapped[int] = mapped_column(BigInteger)


class OfflineImport(Base):
    """A file of counter sales (消费帮扶专柜); the same file is imported once."""

    __tablename__ = "offline_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str] = mapped_column(String(255))
    rows: Mapped[int]
    total_fen: Mapped[int] = mapped_column(BigInteger)
    imported_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)


class OfflineSale(Base):
    """One row of an imported file: a counter's sale of one SKU, or of a county's category."""

    __tablename__ = "offline_sales"
    __table_args__ = (UniqueConstraint("import_id", "row_no"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("offline_imports.id"))
    row_no: Mapped[int]
    sold_on: Mapped[date]
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"))
    county_id: Mapped[int] = mapped_column(ForeignKey("counties.id"))
    category: Mapped[str] = mapped_column(String(16))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int]
    counter: Mapped[str] = mapped_column(String(64))
    district_id: Mapped[int] = mapped_column(ForeignKey("districts.id"))
    certified: Mapped[bool]
