"""The floor of the bench scripts: the shop's database work for a request, with nothing around it.

`POST /orders` takes stock for the first line of an order body with the shop's conditional
UPDATE and answers 201 (409 when there is not enough); `GET /products` runs the catalogue's one
SELECT, compiled from `shop.catalog.services.catalogue_query` for page 1, and answers its rows as
JSON. Served by gunicorn like the shop: `gunicorn --pythonpath bench floor_app:app`, with
DATABASE_URL naming the database and FLOOR_POOL_SIZE the gunicorn threads per worker.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import create_engine, select, text

from shop.catalog.models import County
from shop.catalog.services import catalogue_query
from shop.config import load_config
from shop.db import utcnow
from shop.timezones import shanghai_today

TAKE_STOCK = text("UPDATE products SET stock = stock - :q WHERE sku = :sku AND stock >= :q")

# One connection per gunicorn thread, kept: a smaller pool would reconnect under load.
engine = create_engine(
    os.environ["DATABASE_URL"], pool_size=int(os.environ.get("FLOOR_POOL_SIZE", "8"))
)
app = Flask(__name__)


def _catalogue_statements() -> dict[str | None, tuple[str, dict[str, Any]]]:
    """The catalogue SELECT of page 1 as SQL text and parameters, for all and for each county."""
    today = shanghai_today(utcnow())
    page_size = load_config()["CATALOG_PAGE_SIZE"]
    with engine.connect() as connection:
        counties: list[str | None] = [None, *connection.scalars(select(County.name))]
    statements = {}
    for county in counties:
        query = catalogue_query(today, county=county, limit=page_size, offset=0)
        compiled = query.statement.compile(dialect=engine.dialect)
        statements[county] = (str(compiled), compiled.construct_params(query.params))
    return statements


CATALOGUE = _catalogue_statements()
engine.dispose()  # gunicorn forks after import: each worker opens its own connections


@app.post("/orders")
def take_stock() -> Any:
    line = request.get_json()["lines"][0]
    with engine.begin() as connection:
        taken = connection.execute(TAKE_STOCK, {"sku": line["sku"], "q": line["quantity"]}).rowcount
    if taken != 1:
        return jsonify({"sku": line["sku"], "taken": 0}), 409
    return jsonify({"sku": line["sku"], "taken": line["quantity"]}), 201


@app.get("/products")
def catalogue_page() -> Any:
    county = request.args.get("county")
    sql, params = CATALOGUE[county or None]
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(sql, params).mappings().all()
    return jsonify([dict(row) for row in rows])
