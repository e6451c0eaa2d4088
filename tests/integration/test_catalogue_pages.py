"""The catalogue and the admin order list page through long results, keeping the filters."""

from __future__ import annotations

import math
import re
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select

from shop.accounts.models import User
from shop.admin.views import ORDERS_PER_PAGE
from shop.demo import PRODUCTS
from shop.extensions import db
from shop.orders.models import Order
from tests.conftest import demo_shop

PAGE_SIZE = 5
PAGER = re.compile(r'<nav class="pagination"[^>]*>(.*?)</nav>', re.S)


def pager_of(html: str) -> dict[str, Any]:
    """The pager's previous and next links (their query arguments) and its 第 n / m 页 text."""
    found = PAGER.search(html)
    assert found is not None, "no pager on the page"
    nav = found.group(1)
    links = {
        rel: parse_qs(urlsplit(unescape(href)).query)
        for href, rel in re.findall(r'<a href="([^"]*)" rel="(prev|next)">', nav)
    }
    (position,) = re.findall(r"<span>(.*?)</span>", nav)
    return {"links": links, "position": position}


def test_the_catalogue_pages_through_every_product_keeping_the_filters(
    database_url: str, emulator: str
) -> None:
    pages = math.ceil(len(PRODUCTS) / PAGE_SIZE)
    with demo_shop(database_url, emulator, CATALOG_PAGE_SIZE=PAGE_SIZE) as app:
        client = app.test_client()
        first = pager_of(client.get("/?sort=price").get_data(as_text=True))
        assert first["position"] == f"第 1 / {pages} 页"
        assert set(first["links"]) == {"next"}
        assert first["links"]["next"] == {"sort": ["price"], "page": ["2"]}

        middle = pager_of(client.get("/?sort=price&page=2").get_data(as_text=True))
        assert middle["position"] == f"第 2 / {pages} 页"
        assert middle["links"]["prev"]["page"] == ["1"]
        assert middle["links"]["next"]["page"] == ["3"]

        last = pager_of(client.get(f"/?sort=price&page={pages}").get_data(as_text=True))
        assert set(last["links"]) == {"prev"}
        assert last["links"]["prev"] == {"sort": ["price"], "page": [str(pages - 1)]}

        # One page of results has no pager at all.
        assert PAGER.search(client.get("/?q=普安红茶（特级）").get_data(as_text=True)) is None


def test_the_admin_order_list_pages_through_paid_orders_keeping_the_status(
    database_url: str, emulator: str
) -> None:
    with demo_shop(database_url, emulator, sales=ORDERS_PER_PAGE + 15) as app:
        client = app.test_client()
        with app.app_context():
            admin = db.session.scalar(select(User.id).where(User.email == "admin@example.com"))
            paid = db.session.scalar(
                select(func.count()).select_from(Order).where(Order.status == "paid")
            )
        assert ORDERS_PER_PAGE < paid <= 2 * ORDERS_PER_PAGE
        with client.session_transaction() as session:
            session["_user_id"] = str(admin)
        first = client.get("/admin/orders?status=paid").get_data(as_text=True)
        assert first.count("data-order=") == ORDERS_PER_PAGE
        assert pager_of(first)["links"] == {"next": {"status": ["paid"], "page": ["2"]}}
        second = client.get("/admin/orders?status=paid&page=2").get_data(as_text=True)
        assert second.count("data-order=") == paid - ORDERS_PER_PAGE
        assert pager_of(second)["links"] == {"prev": {"status": ["paid"], "page": ["1"]}}
        assert pager_of(second)["position"] == "第 2 / 2 页"
