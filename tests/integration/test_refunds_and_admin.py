"""Admin work through the API: stock and prices, shipping, refunds through Stripe."""

from __future__ import annotations

from typing import Any

import requests
from sqlalchemy import select

from shop.accounts.models import AuditEntry
from shop.extensions import db
from shop.orders.models import Refund
from tests.conftest import HUIZHOU_ADDRESS, LiveShop


def paid_order(live: LiveShop, buyer: dict[str, str], lines: list[dict[str, Any]]) -> dict:
    order = requests.post(
        f"{live.url}/api/v1/orders",
        headers=buyer,
        timeout=30,
        json={"lines": lines, "address": HUIZHOU_ADDRESS},
    ).json()
    live.control(f"checkout/sessions/{order['checkout_url'].rsplit('/', 1)[-1]}/pay")
    live.wait_for_webhooks()
    return requests.get(
        f"{live.url}/api/v1/orders/{order['number']}", headers=buyer, timeout=10
    ).json()


def refund(live: LiveShop, headers: dict[str, str], number: str, **body: Any) -> requests.Response:
    return requests.post(
        f"{live.url}/api/v1/orders/{number}/refunds", headers=headers, json=body, timeout=30
    )


def charge_refunded(live: LiveShop, number: str) -> int:
    from shop.orders.models import Order

    with live.app.app_context():
        pi = db.session.scalar(select(Order.stripe_payment_intent_id).where(Order.number == number))
    intent = live.app.extensions["stripe"].v1.payment_intents.retrieve(pi)
    charge = live.app.extensions["stripe"].v1.charges.retrieve(intent["latest_charge"])
    return int(charge["amount_refunded"])


def test_refund_by_lines_then_amount_then_the_rest(live_shop: LiveShop) -> None:
    buyer, admin = live_shop.token("buyer@example.com"), live_shop.token("admin@example.com")
    order = paid_order(
        live_shop,
        buyer,
        [{"sku": "PA-TEA-001", "quantity": 3}, {"sku": "XR-YR-001", "quantity": 2}],
    )
    assert order["status"] == "paid" and order["total_fen"] == 3 * 12800 + 2 * 5900
    number = order["number"]

    by_line = refund(live_shop, admin, number, lines=[{"sku": "PA-TEA-001", "quantity": 1}])
    assert by_line.status_code == 201, by_line.text
    assert by_line.json()["status"] == "partially_refunded"
    assert by_line.json()["refunded_fen"] == 12800
    assert [line["refunded_quantity"] for line in by_line.json()["lines"]] == [1, 0]

    too_many = refund(live_shop, admin, number, lines=[{"sku": "PA-TEA-001", "quantity": 3}])
    assert too_many.status_code == 422
    assert "最多还能退 2 件" in too_many.json()["error"]["details"][0]["message"]

    by_amount = refund(live_shop, admin, number, amount_fen=1001)
    assert by_amount.status_code == 201
    assert by_amount.json()["refunded_fen"] == 13801

    too_much = refund(live_shop, admin, number, amount_fen=order["total_fen"])
    assert too_much.status_code == 422

    rest = refund(live_shop, admin, number)
    assert rest.status_code == 201
    assert rest.json()["status"] == "refunded"
    assert rest.json()["refunded_fen"] == order["total_fen"]

    live_shop.wait_for_webhooks()  # charge.refunded / refund.created arrive and change nothing
    after = requests.get(
        f"{live_shop.url}/api/v1/orders/{number}", headers=buyer, timeout=10
    ).json()
    assert after["refunded_fen"] == order["total_fen"]
    assert [r["amount_fen"] for r in after["refunds"]] == [12800, 1001, order["total_fen"] - 13801]
    assert charge_refunded(live_shop, number) == order["total_fen"]
    assert refund(live_shop, admin, number, amount_fen=1).status_code == 409


def test_only_admins_refund_and_only_paid_orders(live_shop: LiveShop) -> None:
    buyer, admin = live_shop.token("buyer@example.com"), live_shop.token("admin@example.com")
    unpaid = requests.post(
        f"{live_shop.url}/api/v1/orders",
        headers=buyer,
        timeout=30,
        json={"lines": [{"sku": "PA-TEA-001", "quantity": 1}], "address": HUIZHOU_ADDRESS},
    ).json()
    assert refund(live_shop, buyer, unpaid["number"]).status_code == 403
    assert refund(live_shop, {}, unpaid["number"]).status_code == 401
    refused = refund(live_shop, admin, unpaid["number"])
    assert refused.status_code == 409
    assert refund(live_shop, admin, "HQ000000000000").status_code == 404


def test_a_refund_stripe_could_not_take_is_retried_with_the_same_key(live_shop: LiveShop) -> None:
    buyer, admin = live_shop.token("buyer@example.com"), live_shop.token("admin@example.com")
    order = paid_order(live_shop, buyer, [{"sku": "PA-TEA-001", "quantity": 2}])
    live_shop.control("failures", mode="error", count=10)
    failed = refund(live_shop, admin, order["number"], amount_fen=3000)
    live_shop.control("failures", mode="none")
    assert failed.status_code == 503
    with live_shop.app.app_context():
        assert db.session.scalars(select(Refund.status)).all() == ["pending"]
    retried = refund(live_shop, admin, order["number"], amount_fen=3000)
    assert retried.status_code == 201
    assert retried.json()["refunded_fen"] == 3000
    assert charge_refunded(live_shop, order["number"]) == 3000
    with live_shop.app.app_context():
        assert db.session.scalars(select(Refund.status)).all() == ["succeeded"]


def test_admin_changes_stock_and_price_and_it_is_audited(client, admin, buyer, app) -> None:
    response = client.patch(
        "/api/v1/admin/products/PA-TEA-001", headers=admin, json={"stock": 42, "price_fen": 13900}
    )
    assert response.status_code == 200
    assert (response.get_json()["stock"], response.get_json()["price_fen"]) == (42, 13900)
    assert client.get("/api/v1/products/PA-TEA-001").get_json()["price_fen"] == 13900
    assert (
        client.patch(
            "/api/v1/admin/products/PA-TEA-001", headers=buyer, json={"stock": 1}
        ).status_code
        == 403
    )
    assert client.patch("/api/v1/admin/products/PA-TEA-001", json={"stock": 1}).status_code == 401
    bad = client.patch(
        "/api/v1/admin/products/PA-TEA-001",
        headers=admin,
        json={"stock": -1, "price_fen": 0, "season_from": "13-40"},
    )
    assert bad.status_code == 422
    assert {d["field"] for d in bad.get_json()["error"]["details"]} == {
        "stock",
        "price_fen",
        "season_from",
    }
    assert (
        client.patch("/api/v1/admin/products/NOPE", headers=admin, json={"stock": 1}).status_code
        == 404
    )
    assert client.get("/api/v1/products/PA-TEA-001").get_json()["stock"] == 42
    with app.app_context():
        entries = db.session.scalars(
            select(AuditEntry).where(AuditEntry.action == "product.update")
        ).all()
        assert len(entries) == 1
        assert entries[0].details["before"] == {"stock": 600, "price_fen": 12800}


def test_admin_takes_a_product_off_sale_and_still_edits_it(client, admin) -> None:
    url = "/api/v1/admin/products/WM-MG-001"
    off = client.patch(url, headers=admin, json={"active": False})
    assert off.status_code == 200 and off.get_json()["sku"] == "WM-MG-001"
    assert client.get("/api/v1/products/WM-MG-001").status_code == 404  # gone from the shop
    restocked = client.patch(url, headers=admin, json={"stock": 7})
    assert restocked.status_code == 200 and restocked.get_json()["stock"] == 7
    assert client.patch(url, headers=admin, json={"active": True}).status_code == 200
    assert client.get("/api/v1/products/WM-MG-001").get_json()["stock"] == 7


def test_admin_registers_a_supplier_with_a_valid_credit_code_only(client, admin) -> None:
    body = {
        "name": "普安县新茶合作社",
        "credit_code": "93522323MA000099X" + "0",
        "county": "522323",
    }
    from shop.catalog.credit_code import check_character

    body["credit_code"] = body["credit_code"][:17] + check_character(body["credit_code"][:17])
    created = client.post("/api/v1/admin/suppliers", headers=admin, json=body)
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["county"] == "普安县"
    assert client.post("/api/v1/admin/suppliers", headers=admin, json=body).status_code == 409
    wrong = dict(
        body,
        credit_code=body["credit_code"][:17] + ("0" if body["credit_code"][17] != "0" else "1"),
    )
    refused = client.post("/api/v1/admin/suppliers", headers=admin, json=wrong)
    assert refused.status_code == 422
    supplier_id = created.get_json()["id"]
    cert = client.post(
        f"/api/v1/admin/suppliers/{supplier_id}/certifications",
        headers=admin,
        json={"number": "QXN-NEW-1", "valid_from": "2026-01-01", "valid_to": "2026-12-31"},
    )
    assert cert.status_code == 201
    assert cert.get_json()["certifications"][0]["number"] == "QXN-NEW-1"
    backwards = client.post(
        f"/api/v1/admin/suppliers/{supplier_id}/certifications",
        headers=admin,
        json={"number": "QXN-NEW-2", "valid_from": "2026-12-31", "valid_to": "2026-01-01"},
    )
    assert backwards.status_code == 422


def test_admin_ships_paid_orders_only(live_shop: LiveShop) -> None:
    buyer, admin = live_shop.token("buyer@example.com"), live_shop.token("admin@example.com")
    order = paid_order(live_shop, buyer, [{"sku": "PA-TEA-001", "quantity": 1}])
    url = f"{live_shop.url}/api/v1/admin/orders/{order['number']}/shipment"
    assert (
        requests.post(
            url, headers=admin, timeout=10, json={"carrier": "", "tracking_number": ""}
        ).status_code
        == 422
    )
    shipped = requests.post(
        url,
        headers=admin,
        timeout=10,
        json={"carrier": "顺丰速运", "tracking_number": "SF1234567890"},
    )
    assert shipped.status_code == 200
    assert shipped.json()["status"] == "shipped"
    assert shipped.json()["tracking_number"] == "SF1234567890"
    assert (
        requests.post(
            url, headers=admin, timeout=10, json={"carrier": "顺丰速运", "tracking_number": "X"}
        ).status_code
        == 409
    )


def test_admin_sets_unit_rules_and_tier_prices(client, admin) -> None:
    url = "/api/v1/admin/products/AL-MS-001"
    response = client.patch(
        url,
        headers=admin,
        json={
            "min_order_quantity": 10,
            "quantity_increment": 5,
            "tiers": [
                {"min_quantity": 200, "price_fen": 4800},
                {"min_quantity": 50, "price_fen": 5200},
            ],
        },
    )
    assert response.status_code == 200, response.get_json()
    shown = client.get("/api/v1/products/AL-MS-001").get_json()
    assert (shown["min_order_quantity"], shown["quantity_increment"]) == (10, 5)
    assert shown["tiers"] == [
        {"min_quantity": 50, "price_fen": 5200},
        {"min_quantity": 200, "price_fen": 4800},
    ]
    bad = client.patch(
        url,
        headers=admin,
        json={
            "tiers": [
                {"min_quantity": 50, "price_fen": 5000},
                {"min_quantity": 50, "price_fen": 4000},
                {"min_quantity": 1, "price_fen": 0},
            ]
        },
    )
    assert bad.status_code == 422
    assert len(bad.get_json()["error"]["details"]) == 3
    assert client.get("/api/v1/products/AL-MS-001").get_json()["tiers"][0]["price_fen"] == 5200
    cleared = client.patch(url, headers=admin, json={"tiers": []})
    assert cleared.status_code == 200 and cleared.get_json()["tiers"] == []
