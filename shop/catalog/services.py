"""Finding products: the catalogue filters, search and pages, in one SELECT."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import Any

from sqlalchemy import (
    Date,
    Integer,
    Label,
    Select,
    String,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.orm import contains_eager, joinedload

from shop.catalog.models import Category, Certification, County, Product, Supplier
from shop.db import DbSession
from shop.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class ProductView:
    product: Product
    certified: bool


@dataclass(frozen=True)
class ProductPage:
    items: list[ProductView]
    page: int
    pages: int
    total: int


def _certified_now() -> Label[bool]:
    today = bindparam("today", type_=Date)
    valid = exists().where(
        Certification.supplier_id == Product.supplier_id,
        Certification.valid_from <= today,
        Certification.valid_to >= today,
    )
    return and_(Product.certified, valid).label("certified_now")


def resolve_county(session: DbSession, value: str) -> County:
    county = session.scalar(select(County).where(or_(County.code == value, County.name == value)))
    if county is None:
        raise InvalidInput(f"没有名为或编码为「{value}」的产地县。", details=[{"field": "county"}])
    return county


@dataclass(frozen=True)
class CatalogueQuery:
    """The catalogue SELECT and the values for its parameters."""

    statement: Select[Product, bool, int]
    params: dict[str, Any]


def catalogue_query(
    today: date,
    *,
    county: str | None = None,
    category: Category | None = None,
    q: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> CatalogueQuery:
    """One SELECT for any filters; statements are built once per combination of filters."""
    params: dict[str, Any] = {"today": today, "county": county, "limit": limit, "offset": offset}
    if q:
        params["pattern"] = f"%{q.strip()}%"
    statement = _catalogue_statement(county is not None, category, bool(q), limit is not None)
    return CatalogueQuery(statement, params)


@cache
def _catalogue_statement(
    by_county: bool, category: Category | None, by_text: bool, paged: bool
) -> Select[Product, bool, int]:
    query = (
        select(Product, _certified_now(), func.count().over().label("total"))
        .join(Product.supplier)
        .join(Supplier.county)
        .options(contains_eager(Product.supplier).contains_eager(Supplier.county))
        .where(Product.active)
    )
    if by_county:
        county = bindparam("county", type_=String)
        query = query.where(or_(County.code == county, County.name == county))
    if category is not None:
        query = query.where(Product.category == category.value)
    if by_text:
        pattern = bindparam("pattern", type_=String)
        query = query.where(
            or_(
                Product.name.ilike(pattern),
                Product.name_en.ilike(pattern),
                Product.sku.ilike(pattern),
                Supplier.name.ilike(pattern),
            )
        )
    query = query.order_by(Product.category, Product.sku)
    if paged:
        query = query.limit(bindparam("limit", type_=Integer)).offset(
            bindparam("offset", type_=Integer)
        )
    return query


def search_products(
    session: DbSession,
    today: date,
    *,
    county: str | None = None,
    category: str | None = None,
    q: str | None = None,
    page: int = 1,
    per_page: int = 20,
) -> ProductPage:
    parsed_category = None
    if category:
        parsed_category = Category.parse(category)
        if parsed_category is None:
            raise InvalidInput(
                f"没有「{category}」这个品类。",
                details=[{"field": "category", "allowed": [c.value for c in Category]}],
            )
    page = max(page, 1)
    query = catalogue_query(
        today,
        county=county or None,
        category=parsed_category,
        q=q,
        limit=per_page,
        offset=(page - 1) * per_page,
    )
    rows = session.execute(query.statement, query.params).all()
    total = rows[0].total if rows else 0
    if not rows and county:
        resolve_county(session, county)  # an unknown county is a mistake to report, not "none"
    return ProductPage(
        items=[ProductView(row.Product, bool(row.certified_now)) for row in rows],
        page=page,
        pages=max(1, math.ceil(total / per_page)),
        total=total,
    )


def get_product(
    session: DbSession, sku: str, today: date, *, include_inactive: bool = False
) -> ProductView:
    """One product as the catalogue shows it; operations also see the ones taken off sale."""
    query = catalogue_query(today)
    row: Any
    if include_inactive:
        any_product = select(Product, _certified_now()).options(
            joinedload(Product.supplier).joinedload(Supplier.county)
        )
        row = session.execute(any_product.where(Product.sku == sku), query.params).first()
    else:
        row = session.execute(query.statement.where(Product.sku == sku), query.params).first()
    if row is None:
        raise NotFound(f"没有编码为 {sku} 的商品。")
    return ProductView(row.Product, bool(row.certified_now))
