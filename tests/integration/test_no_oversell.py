"""No oversell under real concurrency: threads on the service and clients over HTTP."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select, update

from shop.accounts.models import User
from shop.catalog.models import Product
from shop.extensions import db
from shop.orders.models import Order, Status
from shop.orders.services import Address, OutOfStock, RequestedLine, ShippingRule, place_order
from tests.conftest import HUIZHOU_ADDRESS, LiveShop

RULE = ShippingRule(fee_fen=1000, free_above_fen=9900, cold_chain_surcharge_fen=1500)


def set_stock(app, sku: str, stock: int) -> None:
    with app.app_context():
        db.session.execute(update(Product).where(Product.sku == sku).values(stock=stock))
        db.session.commit()
        db.session.remove()


def test_concurrent_reservations_take_exactly_the_stock_there_is(app) -> None:
    set_stock(app, "PA-TEA-001", 7)
    attempts, start = 24, threading.Barrier(24)
    with app.app_context():
        buyer_id = db.session.scalar(select(User.id).where(User.email == "buyer@example.com"))

    def reserve(_: int) -> str:
        # No database work before the barrier: on SQLite a thread holding the write lock there
        # would keep the others from ever reaching it.
        start.wait()
        with app.app_context():
            buyer = db.session.get(User, buyer_id)
            assert buyer is not None
            try:
                place_order(
                    db.session,
                    buyer,
                    [RequestedLine("PA-TEA-001", 1)],
                    Address(**HUIZHOU_ADDRESS),
                    shipping=RULE,
                    payment_minutes=30,
                    max_quantity=100,
                )
                db.session.commit()
                return "reserved"
            except OutOfStock:
                db.session.rollback()
                return "out_of_stock"
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=attempts) as pool:
        outcomes = list(pool.map(reserve, range(attempts)))
    assert outcomes.count("reserved") == 7
    assert outcomes.count("out_of_stock") == attempts - 7
    with app.app_context():
        assert db.session.scalar(select(Product.stock).where(Product.sku == "PA-TEA-001")) == 0
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(Order)
                .where(Order.status == Status.AWAITING_PAYMENT)
            )
            == 7
        )


def test_concurrent_checkouts_over_http_never_oversell(live_shop: LiveShop) -> None:
    set_stock(live_shop.app, "XR-YR-001", 5)
    set_stock(live_shop.app, "PA-TEA-002", 5)
    token = live_shop.token("buyer@example.com")
    start = threading.Barrier(16)

    def checkout(i: int) -> int:
        # Half the orders take the two SKUs in the opposite order: locks must not deadlock.
        lines = [{"sku": "XR-YR-001", "quantity": 1}, {"sku": "PA-TEA-002", "quantity": 1}]
        start.wait()
        response = requests.post(
            f"{live_shop.url}/api/v1/orders",
            headers=token,
            timeout=60,
            json={"lines": lines[:: 1 if i % 2 else -1], "address": HUIZHOU_ADDRESS},
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(checkout, range(16)))
    assert sorted(statuses) == [201] * 5 + [409] * 11
    with live_shop.app.app_context():
        stocks = db.session.scalars(
            select(Product.stock).where(Product.sku.in_(["XR-YR-001", "PA-TEA-002"]))
        ).all()
        assert stocks == [0, 0]
