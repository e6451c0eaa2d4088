"""Typed models of the catalogue: where produce comes from and what is on sale."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shop.db import Base, utcnow


class Category(StrEnum):
    TEA = "茶叶"
    FRUIT = "水果"
    VEGETABLE = "蔬菜"
    GRAIN_OIL = "粮油"
    MEAT_EGG = "肉禽蛋"
    PROCESSED = "加工食品"
    OTHER = "其他"

    @property
    def code(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Category | None:
        """Accept the Chinese name or the English code (`tea`, `grain_oil`, …)."""
        for category in cls:
            if value in (category.value, category.code):
                return category
        return None


class County(Base):
    """A county or county-level city of Qianxinan (GB/T 2260 code)."""

    __tablename__ = "counties"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(6), unique=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    name_en: Mapped[str] = mapped_column(String(64))
    cooperation: Mapped[bool] = mapped_column(default=False)


class District(Base):
    """A district, county or functional zone of Huizhou."""

    __tablename__ = "districts"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    name_en: Mapped[str] = mapped_column(String(64))
    functional_zone: Mapped[bool] = mapped_column(default=False)


class Pairing(Base):
    """A Huizhou district paired with a Qianxinan county."""

    __tablename__ = "pairings"
    __table_args__ = (UniqueConstraint("district_id", "county_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    district_id: Mapped[int] = mapped_column(ForeignKey("districts.id"))
    county_id: Mapped[int] = mapped_column(ForeignKey("counties.id"))
    demo: Mapped[bool] = mapped_column(default=False)

    district: Mapped[District] = relationship()
    county: Mapped[County] = relationship()


class Supplier(Base):
    __tablename__ = "suppliers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    credit_code: Mapped[str] = mapped_column(String(18), unique=True)
    county_id: Mapped[int] = mapped_column(ForeignKey("counties.id"))
    contact: Mapped[str | None] = mapped_column(String(128))
    households_lifted: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    county: Mapped[County] = relationship()
    certifications: Mapped[list[Certification]] = relationship(
        back_populates="supplier", order_by="Certification.valid_to.desc()"
    )

    def certification_on(self, day: date) -> Certification | None:
        return next((c for c in self.certifications if c.covers(day)), None)


class Certification(Base):
    """消费帮扶产品认定: a certificate with its validity window."""

    __tablename__ = "certifications"
    __table_args__ = (CheckConstraint("valid_from <= valid_to", name="valid_window"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    supplier_id: Mapped[int] = mapped_column(ForeignKey("suppliers.id"))
    number: Mapped[str] = mapped_column(String(64), unique=True)
    valid_from: Mapped[date]
    valid_to: Mapped[date]

    supplier: Mapped[Supplier] = relationship(back_populates="certifications")

    def covers(self, day: date) -> bool:
        return self.valid_from <= day <= self.valid_to


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("stock >= 0", name="stock_not_negative"),
        CheckConstraint("price_fen > 0", name="price_positive"),
        CheckConstraint("min_order_quantity >= 1", name="moq_positive"),
        CheckConstraint("quantity_increment >= 1", name="increment_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    name_en: Mapped[str] = mapped_column(String(128))
    category: Mapped[str] = mapped_column(String(16), index=True)
    supplier_id: Mapped[int] = mapped_column(ForeignKey("suppliers.id"), index=True)
    pack: Mapped[str] = mapped_column(String(32))
    price_fen: Mapped[int]
    stock: Mapped[int] = mapped_column(default=0)
    # Recurring yearly window as "MM-DD"; a window may wrap the new year. None: all year.
    season_from: Mapped[str | None] = mapped_column(String(5))
    season_to: Mapped[str | None] = mapped_column(String(5))
    # Listed in the 消费帮扶产品认定 catalogue; counts only while the supplier's certificate
    # is valid.
    certified: Mapped[bool] = mapped_column(default=False)
    cold_chain: Mapped[bool] = mapped_column(default=False)
    active: Mapped[bool] = mapped_column(default=True)
    min_order_quantity: Mapped[int] = mapped_column(default=1)
    quantity_increment: Mapped[int] = mapped_column(default=1)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    supplier: Mapped[Supplier] = relationship()
    tiers: Mapped[list[TierPrice]] = relationship(
        order_by="TierPrice.min_quantity", cascade="all, delete-orphan"
    )

    @property
    def county(self) -> County:
        return self.supplier.county

    def in_season(self, day: date) -> bool:
        if self.season_from is None or self.season_to is None:
            return True
        today = f"{day.month:02d}-{day.day:02d}"
        if self.season_from <= self.season_to:
            return self.season_from <= today <= self.season_to
        return today >= self.season_from or today <= self.season_to

    def certified_on(self, day: date) -> bool:
        return self.certified and self.supplier.certification_on(day) is not None


class TierPrice(Base):
    """A unit-procurement price from a quantity up (e.g. ≥ 50 boxes)."""

    __tablename__ = "tier_prices"
    __table_args__ = (
        UniqueConstraint("product_id", "min_quantity"),
        CheckConstraint("min_quantity >= 2", name="tier_above_one"),
        CheckConstraint("price_fen > 0", name="price_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    min_quantity: Mapped[int]
    price_fen: Mapped[int]
