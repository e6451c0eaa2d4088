"""Catalogue pages: products by county, category and search, and one product."""

from __future__ import annotations

from flask import abort, current_app, flash, render_template, request
from sqlalchemy import select

from shop.catalog.models import Category, County
from shop.catalog.services import ProductPage, get_product, search_products
from shop.db import utcnow
from shop.errors import InvalidInput, NotFound
from shop.extensions import db
from shop.timezones import shanghai_today
from shop.views import html_blueprint, page_number

bp = html_blueprint("catalog", __name__)


@bp.get("/")
def index() -> str:
    today = shanghai_today(utcnow())
    county = request.args.get("county", "").strip() or None
    category = request.args.get("category", "").strip() or None
    q = request.args.get("q", "").strip()[:64] or None
    page = page_number()
    try:
        found = search_products(
            db.session,
            today,
            county=county,
            category=category,
            q=q,
            page=page,
            per_page=current_app.config["CATALOG_PAGE_SIZE"],
        )
    except InvalidInput as exc:
        flash(exc.message, "error")
        found = ProductPage(items=[], page=1, pages=1, total=0)
    counties = db.session.scalars(select(County).order_by(County.code)).all()
    chosen_county = next((c for c in counties if county in (c.code, c.name)), None)
    chosen_category = Category.parse(category) if category else None
    return render_template(
        "catalog/index.html",
        found=found,
        today=today,
        counties=counties,
        categories=list(Category),
        chosen_county=chosen_county,
        chosen_category=chosen_category,
        q=q or "",
    )


@bp.get("/products/<sku>")
def product(sku: str) -> str:
    today = shanghai_today(utcnow())
    try:
        view = get_product(db.session, sku, today)
    except NotFound:
        abort(404)
    return render_template(
        "catalog/product.html",
        view=view,
        product=view.product,
        in_season=view.product.in_season(today),
    )
