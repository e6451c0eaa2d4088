"""Catalogue JSON API: products by county, category and search."""

from __future__ import annotations

from flask import current_app
from pydantic import BaseModel, Field

from shop.api import api_blueprint, endpoint
from shop.catalog.models import Product
from shop.catalog.services import ProductView, get_product, search_products
from shop.db import utcnow
from shop.extensions import db
from shop.timezones import shanghai_today

bp = api_blueprint("catalog_api", __name__)


class Season(BaseModel):
    from_: str | None = Field(None, alias="from", serialization_alias="from")
    to: str | None = None


class TierOut(BaseModel):
    min_quantity: int
    price_fen: int


class ProductOut(BaseModel):
    sku: str
    name: str
    name_en: str
    county: str
    county_code: str
    category: str
    pack: str
    price_fen: int
    stock: int
    certified: bool
    in_season: bool
    season: Season
    supplier: str
    min_order_quantity: int
    quantity_increment: int
    tiers: list[TierOut] | None = Field(None, description="unit tier prices; on one product only")

    @classmethod
    def of(cls, view: ProductView, today_in_season: bool) -> ProductOut:
        product: Product = view.product
        # Values straight from the database need no validating; a page builds twenty of these.
        return cls.model_construct(
            sku=product.sku,
            name=product.name,
            name_en=product.name_en,
            county=product.county.name,
            county_code=product.county.code,
            category=product.category,
            pack=product.pack,
            price_fen=product.price_fen,
            stock=product.stock,
            certified=view.certified,
            in_season=today_in_season,
            season=Season.model_construct(from_=product.season_from, to=product.season_to),
            supplier=product.supplier.name,
            min_order_quantity=product.min_order_quantity,
            quantity_increment=product.quantity_increment,
        )

    def with_tiers(self, product: Product) -> ProductOut:
        self.tiers = [
            TierOut(min_quantity=t.min_quantity, price_fen=t.price_fen) for t in product.tiers
        ]
        return self

    model_config = {"populate_by_name": True}


class ProductQuery(BaseModel):
    county: str | None = Field(None, description="county name (普安县) or GB/T 2260 code (522323)")
    category: str | None = Field(None, description="茶叶 … or tea, fruit, vegetable, grain_oil …")
    q: str | None = Field(None, max_length=64)
    page: int = Field(1, ge=1)


class ProductPageOut(BaseModel):
    items: list[ProductOut]
    page: int
    pages: int
    total: int


@endpoint(
    bp,
    "/products",
    "GET",
    summary="List products",
    query=ProductQuery,
    response=ProductPageOut,
    roles=None,
)
def list_products(query: ProductQuery) -> ProductPageOut:
    today = shanghai_today(utcnow())
    found = search_products(
        db.session,
        today,
        county=query.county,
        category=query.category,
        q=query.q,
        page=query.page,
        per_page=current_app.config["CATALOG_PAGE_SIZE"],
    )
    return ProductPageOut(
        items=[ProductOut.of(view, view.product.in_season(today)) for view in found.items],
        page=found.page,
        pages=found.pages,
        total=found.total,
    )


@endpoint(
    bp,
    "/products/<sku>",
    "GET",
    summary="One product",
    response=ProductOut,
    roles=None,
    errors=(404,),
)
def show_product(sku: str) -> ProductOut:
    today = shanghai_today(utcnow())
    view = get_product(db.session, sku, today)
    return ProductOut.of(view, view.product.in_season(today)).with_tiers(view.product)
