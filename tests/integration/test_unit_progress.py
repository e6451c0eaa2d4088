"""A unit's reserved-share progress read from the ledger, with its employees' own purchases."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import requests
from sqlalchemy import select

from shop.accounts.models import User
from shop.extensions import db
from shop.ledger.models import LedgerEntry
from shop.orders.models import Order
from tests.conftest import HUIZHOU_ADDRESS, LiveShop, signed

DEMO_UNIT = "惠州市惠城区机关事务服务中心"
UNIT_FILE = "SKU/商品编码,数量/quantity\nPA-TEA-001,60\nXR-YR-001,30\n"


def api(live: LiveShop, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    return requests.request(method, f"{live.url}/api/v1{path}", headers=headers, timeout=60, **kw)


def demo_unit_id(live: LiveShop, headers: dict[str, str]) -> int:
    units = api(live, "GET", "/account/employers", headers).json()["items"]
    return next(unit["id"] for unit in units if unit["name"] == DEMO_UNIT)


def paid_online_order(live: LiveShop, buyer: dict[str, str], lines: list[dict[str, Any]]) -> Any:
    order = api(live, "POST", "/orders", buyer, json={"lines": lines, "address": HUIZHOU_ADDRESS})
    assert order.status_code == 201, order.text
    live.control(f"checkout/sessions/{order.json()['checkout_url'].rsplit('/', 1)[-1]}/pay")
    live.wait_for_webhooks()
    paid = api(live, "GET", f"/orders/{order.json()['number']}", buyer).json()
    assert paid["status"] == "paid"
    return paid


def progress(live: LiveShop, approver: dict[str, str]) -> dict[str, Any]:
    response = api(live, "GET", "/procurement/summary", approver)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_buyer_names_their_employer_and_the_account_api_says_so(live_shop: LiveShop) -> None:
    buyer = live_shop.token("buyer@example.com")
    assert api(live_shop, "GET", "/me", buyer).json()["employer_organisation_id"] is None
    unit = demo_unit_id(live_shop, buyer)

    named = api(live_shop, "PUT", "/account/employer", buyer, json={"organisation_id": unit})
    assert named.status_code == 200, named.text
    assert named.json()["employer_organisation_id"] == unit
    assert named.json()["employer_organisation"] == DEMO_UNIT
    assert api(live_shop, "GET", "/me", buyer).json()["employer_organisation"] == DEMO_UNIT

    unknown = api(live_shop, "PUT", "/account/employer", buyer, json={"organisation_id": 99999})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["details"][0]["field"] == "organisation_id"
    assert api(live_shop, "GET", "/me", buyer).json()["employer_organisation_id"] == unit

    cleared = api(live_shop, "PUT", "/account/employer", buyer, json={"organisation_id": None})
    assert cleared.json()["employer_organisation_id"] is None
    with live_shop.app.app_context():
        user = db.session.scalar(select(User).where(User.email == "buyer@example.com"))
        assert user is not None and user.employer_organisation_id is None


def test_an_employees_paid_order_shows_as_personal_spending_of_the_unit(
    live_shop: LiveShop,
) -> None:
    buyer = live_shop.token("buyer@example.com")
    approver = live_shop.token("approver@example.com")
    admin = live_shop.token("admin@example.com")
    before = paid_online_order(live_shop, buyer, [{"sku": "PA-TEA-002", "quantity": 1}])
    unit = demo_unit_id(live_shop, buyer)
    api(live_shop, "PUT", "/account/employer", buyer, json={"organisation_id": unit})

    order = paid_online_order(
        live_shop,
        buyer,
        [{"sku": "PA-TEA-001", "quantity": 2}, {"sku": "XR-YR-001", "quantity": 1}],
    )
    goods = 2 * 12800 + 5900
    summary = progress(live_shop, approver)
    assert summary["personal_fen"] == goods
    # Personal spending is shown beside the unit's own progress, not in it.
    assert summary["spent_fen"] == 0 and summary["percent"] == 0
    assert summary["by_county"] == [] and summary["by_month"] == []

    refunded = api(
        live_shop, "POST", f"/orders/{order['number']}/refunds", admin, json={"amount_fen": 1000}
    )
    assert refunded.status_code == 201, refunded.text
    assert progress(live_shop, approver)["personal_fen"] == goods - 1000
    with live_shop.app.app_context():
        earlier = db.session.scalars(
            select(LedgerEntry.organisation_id)
            .join(Order, Order.id == LedgerEntry.order_id)
            .where(Order.number == before["number"])
        ).all()
        assert earlier == [None]  # paid before the buyer named the unit


def test_a_unit_order_counts_in_spent_and_an_amount_refund_takes_it_back(
    live_shop: LiveShop,
) -> None:
    officer = live_shop.token("officer@example.com")
    approver = live_shop.token("approver@example.com")
    drafted = api(
        live_shop,
        "POST",
        "/procurement/orders",
        officer,
        files={"file": ("order.csv", UNIT_FILE.encode("utf-8-sig"), "text/csv")},
        data={
            "recipient": "食堂甲",
            "phone": "13800138001",
            "address": "江北街道文昌一路 8 号",
            "district": "惠城区",
        },
    )
    assert drafted.status_code == 201, drafted.text
    order = drafted.json()
    api(live_shop, "POST", f"/procurement/orders/{order['id']}/submit", officer)
    approved = api(live_shop, "POST", f"/procurement/orders/{order['id']}/approve", approver)
    assert approved.status_code == 200, approved.text
    with live_shop.app.app_context():
        invoice = db.session.scalar(select(Order.stripe_invoice_id).where(Order.id == order["id"]))
    live_shop.control(f"invoices/{invoice}/pay")
    live_shop.wait_for_webhooks()

    goods = 60 * 11800 + 30 * 5900
    assert order["goods_fen"] == goods
    summary = progress(live_shop, approver)
    assert (summary["spent_fen"], summary["personal_fen"]) == (goods, 0)
    assert summary["remaining_fen"] == 50_000_000 - goods
    assert {c["county"]: c["amount_fen"] for c in summary["by_county"]} == {
        "普安县": 60 * 11800,
        "兴仁市": 30 * 5900,
    }

    # A refund made at Stripe by amount: spread over both lines, dated today.
    event = {
        "id": "evt_unit_refund_1",
        "object": "event",
        "type": "refund.created",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": "re_unit_refund_1",
                "object": "refund",
                "amount": 88_501,
                "status": "succeeded",
                "metadata": {"order_number": order["number"]},
            }
        },
    }
    payload = json.dumps(event).encode()
    delivered = requests.post(
        f"{live_shop.url}/api/v1/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": signed(payload), "Content-Type": "application/json"},
        timeout=10,
    )
    assert delivered.status_code == 200, delivered.text
    after = progress(live_shop, approver)
    assert after["spent_fen"] == goods - 88_501
    assert sum(c["amount_fen"] for c in after["by_county"]) == goods - 88_501
    assert sum(m["amount_fen"] for m in after["by_month"]) == goods - 88_501
    assert after["percent"] == round((goods - 88_501) * 100 / 50_000_000, 2)


def test_the_account_page_sets_the_employer_with_a_select(client, app) -> None:
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == "buyer@example.com"))
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True
    page = client.get("/account").get_data(as_text=True)
    assert DEMO_UNIT in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    option = re.search(r'<option value="(\d+)"[^>]*>' + DEMO_UNIT, page)
    assert token is not None and option is not None
    saved = client.post(
        "/account/employer",
        data={"csrf_token": token.group(1), "organisation_id": option.group(1)},
        follow_redirects=True,
    )
    assert saved.status_code == 200
    assert re.search(r'<option value="\d+" selected>' + DEMO_UNIT, saved.get_data(as_text=True))
    with app.app_context():
        user = db.session.get(User, user_id)
        assert user is not None and user.employer_organisation_id == int(option.group(1))
    with client.session_transaction() as session:
        session.clear()
    assert client.get("/account").status_code in (302, 401)
