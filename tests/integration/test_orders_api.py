"""Placing, reading and cancelling orders through the JSON API, against the Stripe emulator."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from sqlalchemy import select, update

from shop.catalog.models import Product
from shop.db import utcnow
from shop.extensions import db
from shop.orders.models import Order
from tests.conftest import HUIZHOU_ADDRESS, bearer, emulator_control


def stock_of(client: Any, sku: str) -> int:
    return client.get(f"/api/v1/products/{sku}").get_json()["stock"]


def place(client: Any, headers: dict[str, str], lines: list[dict[str, Any]], **extra: Any) -> Any:
    return client.post(
        "/api/v1/orders",
        headers=headers,
        json={"lines": lines, "address": HUIZHOU_ADDRESS, **extra},
    )


def test_order_is_priced_by_the_server_reserves_stock_and_opens_checkout(client, buyer) -> None:
    tea, rice = stock_of(client, "PA-TEA-001"), stock_of(client, "XR-YR-001")
    response = place(
        client,
        buyer,
        [
            {"sku": "PA-TEA-001", "quantity": 2, "price_fen": 1, "unit_price_fen": 1},
            {"sku": "XR-YR-001", "quantity": 1},
        ],
        total_fen=1,
    )
    assert response.status_code == 201, response.get_json()
    order = response.get_json()
    assert order["status"] == "awaiting_payment"
    assert order["goods_fen"] == 2 * 12800 + 5900
    assert order["shipping_fen"] == 0  # above the free-shipping threshold, nothing cold
    assert order["total_fen"] == 31500
    assert [
        (line["sku"], line["unit_price_fen"], line["amount_fen"]) for line in order["lines"]
    ] == [("PA-TEA-001", 12800, 25600), ("XR-YR-001", 5900, 5900)]
    assert order["checkout_url"].startswith("http://127.0.0.1:")
    assert "/checkout/cs_" in order["checkout_url"]
    assert stock_of(client, "PA-TEA-001") == tea - 2
    assert stock_of(client, "XR-YR-001") == rice - 1
    assert order["number"].startswith("HQ")


def test_small_orders_pay_shipping_and_cold_chain_pays_its_surcharge(client, buyer) -> None:
    response = place(client, buyer, [{"sku": "CH-BN-001", "quantity": 1}])
    assert response.status_code == 201
    assert response.get_json()["shipping_fen"] == 1000 + 1500
    assert response.get_json()["total_fen"] == 5900 + 2500


def test_short_stock_is_409_and_reserves_nothing(client, buyer, app) -> None:
    with app.app_context():
        db.session.execute(update(Product).where(Product.sku == "PA-TEA-003").values(stock=1))
        db.session.commit()
    tea = stock_of(client, "PA-TEA-001")
    response = place(
        client, buyer, [{"sku": "PA-TEA-001", "quantity": 3}, {"sku": "PA-TEA-003", "quantity": 2}]
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "out_of_stock"
    assert response.get_json()["error"]["details"] == [{"sku": "PA-TEA-003", "requested": 2}]
    assert stock_of(client, "PA-TEA-001") == tea
    assert stock_of(client, "PA-TEA-003") == 1
    with app.app_context():
        assert db.session.scalar(select(Order.id)) is None


def test_bad_lines_are_422_with_every_problem_listed(client, buyer, app) -> None:
    today = date.today()
    with app.app_context():  # a window that ends yesterday: out of season whatever the date
        start, end = today + timedelta(days=2), today - timedelta(days=1)
        db.session.execute(
            update(Product)
            .where(Product.sku == "ZF-LI-001")
            .values(season_from=start.strftime("%m-%d"), season_to=end.strftime("%m-%d"))
        )
        db.session.commit()
    response = place(
        client,
        buyer,
        [
            {"sku": "PA-TEA-001", "quantity": 0},
            {"sku": "PA-TEA-002", "quantity": -3},
            {"sku": "NO-SUCH-SKU", "quantity": 1},
            {"sku": "ZF-LI-001", "quantity": 1},
            {"sku": "PA-TEA-001", "quantity": 1},
        ],
    )
    assert response.status_code == 422
    fields = [d["field"] for d in response.get_json()["error"]["details"]]
    assert fields == [
        "lines[0].quantity",
        "lines[1].quantity",
        "lines[2].sku",
        "lines[3].sku",
        "lines[4].sku",
    ]
    assert stock_of(client, "PA-TEA-001") == 600


def test_bad_address_and_malformed_body_are_422(client, buyer) -> None:
    bad = dict(HUIZHOU_ADDRESS, phone="12345", district="不存在区", detail="")
    response = client.post(
        "/api/v1/orders",
        headers=buyer,
        json={"lines": [{"sku": "PA-TEA-001", "quantity": 1}], "address": bad},
    )
    assert response.status_code == 422
    assert {d["field"] for d in response.get_json()["error"]["details"]} == {
        "address.phone",
        "address.district",
        "address.detail",
    }
    response = client.post("/api/v1/orders", headers=buyer, json={"lines": "many"})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_input"
    response = client.post(
        "/api/v1/orders", headers=buyer, data="not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert stock_of(client, "PA-TEA-001") == 600


def test_an_address_outside_huizhou_is_accepted(client, buyer) -> None:
    address = dict(HUIZHOU_ADDRESS, province="贵州省", city="贵阳市", district="南明区")
    response = client.post(
        "/api/v1/orders",
        headers=buyer,
        json={"lines": [{"sku": "PA-TEA-001", "quantity": 1}], "address": address},
    )
    assert response.status_code == 201
    assert response.get_json()["address"]["city"] == "贵阳市"


def test_orders_need_a_token_and_people_see_only_their_own(client, buyer, app) -> None:
    assert client.get("/api/v1/orders").status_code == 401
    assert client.get("/api/v1/orders", headers={"Authorization": "Bearer nope"}).status_code == 401
    number = place(client, buyer, [{"sku": "PA-TEA-001", "quantity": 1}]).get_json()["number"]
    with app.app_context():
        from shop.accounts.services import create_user

        create_user(db.session, email="other@example.com", password="another-password", name="别人")
        db.session.commit()
    other = bearer(client, "other@example.com", "another-password")
    assert client.get(f"/api/v1/orders/{number}", headers=other).status_code == 404
    assert client.post(f"/api/v1/orders/{number}/cancel", headers=other).status_code == 404
    assert client.get("/api/v1/orders", headers=other).get_json()["items"] == []
    mine = client.get("/api/v1/orders", headers=buyer).get_json()["items"]
    assert [o["number"] for o in mine] == [number]
    finance = bearer(client, "finance@example.com")
    assert client.get(f"/api/v1/orders/{number}", headers=finance).status_code == 200


def test_cancelling_an_unpaid_order_returns_its_stock_and_closes_checkout(
    client, buyer, app, emulator
) -> None:
    before = stock_of(client, "PA-TEA-001")
    order = place(client, buyer, [{"sku": "PA-TEA-001", "quantity": 4}]).get_json()
    assert stock_of(client, "PA-TEA-001") == before - 4
    response = client.post(f"/api/v1/orders/{order['number']}/cancel", headers=buyer)
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    assert stock_of(client, "PA-TEA-001") == before
    with app.app_context():
        session_id = db.session.scalar(select(Order.stripe_checkout_session_id))
        assert app.extensions["stripe"].v1.checkout.sessions.retrieve(session_id)["status"] == (
            "expired"
        )
    again = client.post(f"/api/v1/orders/{order['number']}/cancel", headers=buyer)
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "invalid_transition"
    assert stock_of(client, "PA-TEA-001") == before


def test_stripe_failing_gives_503_and_leaves_no_stock_reserved(
    client, buyer, app, emulator
) -> None:
    before = stock_of(client, "PA-TEA-001")
    emulator_control(emulator, "failures", mode="error", count=10)
    response = place(client, buyer, [{"sku": "PA-TEA-001", "quantity": 2}])
    emulator_control(emulator, "failures", mode="none")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "service_unavailable"
    assert "重试" in response.get_json()["error"]["message"]
    assert stock_of(client, "PA-TEA-001") == before
    with app.app_context():
        assert db.session.scalars(select(Order.status)).all() == ["cancelled"]


def test_stripe_timing_out_gives_503_and_leaves_no_stock_reserved(
    client, buyer, app, emulator
) -> None:
    before = stock_of(client, "XR-YR-001")
    emulator_control(emulator, "failures", mode="timeout", count=10, delay=3)
    response = place(client, buyer, [{"sku": "XR-YR-001", "quantity": 1}])
    emulator_control(emulator, "failures", mode="none")
    assert response.status_code == 503
    assert stock_of(client, "XR-YR-001") == before
    with app.app_context():
        assert db.session.scalars(select(Order.status)).all() == ["cancelled"]


def test_expired_unpaid_orders_return_their_stock_via_the_celery_task(
    client, buyer, app, run_task
) -> None:
    from workers.tasks import expire_unpaid_orders

    before = stock_of(client, "PA-TEA-002")
    stale = place(client, buyer, [{"sku": "PA-TEA-002", "quantity": 5}]).get_json()["number"]
    fresh = place(client, buyer, [{"sku": "PA-TEA-002", "quantity": 1}]).get_json()["number"]
    with app.app_context():
        db.session.execute(
            update(Order)
            .where(Order.number == stale)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
        db.session.commit()
        db.session.remove()
    assert run_task(expire_unpaid_orders) == 1
    assert client.get(f"/api/v1/orders/{stale}", headers=buyer).get_json()["status"] == "cancelled"
    assert client.get(f"/api/v1/orders/{fresh}", headers=buyer).get_json()["status"] == (
        "awaiting_payment"
    )
    assert stock_of(client, "PA-TEA-002") == before - 1
    assert run_task(expire_unpaid_orders) == 0


def test_openapi_describes_every_route_of_the_api(client, app) -> None:
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1") or rule.rule.endswith(("openapi.json", "health")):
            continue
        path = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, (path, method)
    order_post = document["paths"]["/api/v1/orders"]["post"]
    assert {"201", "401", "409", "422", "503"} <= set(order_post["responses"])
    assert "OrderIn" in document["components"]["schemas"]
