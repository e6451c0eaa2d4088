"""Unit procurement over real HTTP: bulk draft, approval, Stripe invoice, transfer, progress."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, update

from shop.accounts.models import User
from shop.catalog.credit_code import check_character
from shop.catalog.models import Product
from shop.config import EMULATOR_SECRET_KEY
from shop.db import utcnow
from shop.extensions import db
from shop.ledger.models import LedgerEntry
from shop.orders.models import Order
from shop.procurement.models import BankTransfer, Organisation
from shop.procurement.services import add_member, create_organisation
from tests.conftest import LiveShop, signed

HEADER = "SKU/商品编码,数量/quantity,收货人,电话,收货地址,区县\n"
TWO_CANTEENS = (
    HEADER
    + "PA-TEA-001,60,食堂甲,13800138001,江北街道文昌一路 8 号,惠城区\n"
    + "XR-YR-001,30,食堂乙,13800138002,河南岸街道演达一路 2 号,惠城区\n"
    + "PA-TEA-001,20,食堂乙,13800138002,河南岸街道演达一路 2 号,惠城区\n"
)


def api(live: LiveShop, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    return requests.request(method, f"{live.url}/api/v1{path}", headers=headers, timeout=60, **kw)


def upload(live: LiveShop, headers: dict[str, str], text: str, **form: str) -> Any:
    data = text.encode("utf-8-sig")
    return api(
        live,
        "POST",
        "/procurement/orders",
        headers,
        files={"file": ("order.csv", data, "text/csv")},
        data=form,
    )


def stock(live: LiveShop, sku: str) -> int:
    return requests.get(f"{live.url}/api/v1/products/{sku}", timeout=10).json()["stock"]


@pytest.fixture
def people(live_shop: LiveShop) -> dict[str, dict[str, str]]:
    return {
        who: live_shop.token(f"{who}@example.com")
        for who in ("officer", "approver", "finance", "admin", "buyer")
    }


def draft(live: LiveShop, people: dict[str, dict[str, str]], text: str = TWO_CANTEENS) -> Any:
    response = upload(live, people["officer"], text)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_bulk_file_becomes_a_priced_draft_with_its_deliveries(live_shop, people) -> None:
    order = draft(live_shop, people)
    assert order["status"] == "draft"
    assert order["channel"] == "unit"
    assert order["funding"] == "财政资金"
    # 80 boxes of tea in the file in all: the ≥ 50 tier (118.00) on both tea lines
    assert [(line["sku"], line["quantity"], line["unit_price_fen"]) for line in order["lines"]] == [
        ("PA-TEA-001", 60, 11800),
        ("XR-YR-001", 30, 5900),
        ("PA-TEA-001", 20, 11800),
    ]
    assert order["goods_fen"] == 80 * 11800 + 30 * 5900
    assert order["total_fen"] == order["goods_fen"] + order["shipping_fen"]
    assert stock(live_shop, "PA-TEA-001") == 600  # a draft holds nothing


def test_any_bad_row_creates_nothing_and_every_problem_is_listed(live_shop, people) -> None:
    bad = (
        HEADER
        + "PA-TEA-001,5,食堂甲,13800138001,文昌一路 8 号,惠城区\n"
        + "NO-SUCH,10,食堂甲,13800138001,文昌一路 8 号,惠城区\n"
        + "XR-YR-001,12,食堂甲,12345,文昌一路 8 号,惠城区\n"
    )
    response = upload(live_shop, people["officer"], bad)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_rows"
    rows = {(d["row"], d["column"]) for d in error["details"]}
    assert {r for r, _ in rows} == {2, 3, 4}
    with live_shop.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Order)) == 0


def test_submit_reserves_approval_invoices_and_the_invoice_pays_once(live_shop, people) -> None:
    order = draft(live_shop, people)
    oid = order["id"]
    submitted = api(live_shop, "POST", f"/procurement/orders/{oid}/submit", people["officer"])
    assert submitted.json()["status"] == "pending_approval"
    assert stock(live_shop, "PA-TEA-001") == 600 - 80
    own = api(live_shop, "POST", f"/procurement/orders/{oid}/approve", people["officer"])
    assert own.status_code == 403
    approved = api(live_shop, "POST", f"/procurement/orders/{oid}/approve", people["approver"])
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "awaiting_payment"
    assert approved.json()["invoice_due_at"] is not None
    again = api(live_shop, "POST", f"/procurement/orders/{oid}/approve", people["approver"])
    assert again.status_code == 409

    with live_shop.app.app_context():
        invoice_id = db.session.scalar(select(Order.stripe_invoice_id))
    invoice = live_shop.app.extensions["stripe"].v1.invoices.retrieve(invoice_id)
    assert invoice["collection_method"] == "send_invoice"
    assert invoice["currency"] == "cny"
    assert invoice["amount_due"] == order["total_fen"]
    assert invoice["metadata"]["order_number"] == order["number"]
    assert len(invoice["lines"]["data"]) == len(order["lines"]) + (
        1 if order["shipping_fen"] else 0
    )

    live_shop.control(f"invoices/{invoice_id}/pay")
    live_shop.wait_for_webhooks()
    paid = api(live_shop, "GET", f"/procurement/orders/{oid}", people["officer"]).json()
    assert paid["status"] == "paid"
    paid_event = next(
        e
        for e in live_shop.app.extensions["stripe"]
        .v1.events.list({"type": "invoice.paid", "limit": 100})
        .auto_paging_iter()
        if e["data"]["object"]["id"] == invoice_id
    )
    payload = requests.get(
        f"{live_shop.emulator_url}/v1/events/{paid_event['id']}",
        timeout=10,
        headers={"Authorization": f"Bearer {EMULATOR_SECRET_KEY}"},
    ).content
    for _ in range(3):
        replay = requests.post(
            f"{live_shop.url}/api/v1/stripe/webhook",
            data=payload,
            timeout=10,
            headers={"Stripe-Signature": signed(payload)},
        )
        assert replay.json()["changed"] is False

    late = api(
        live_shop,
        "POST",
        "/finance/transfers",
        people["finance"],
        json={
            "order": order["number"],
            "amount_fen": order["total_fen"],
            "paid_at": date.today().isoformat(),
            "reference": "ICBC-20261130-0001",
        },
    )
    assert late.status_code == 409
    with live_shop.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(BankTransfer)) == 0
    summary = api(live_shop, "GET", "/procurement/summary", people["approver"]).json()
    assert summary["spent_fen"] == order["goods_fen"]
    assert summary["percent"] == round(order["goods_fen"] * 100 / 50_000_000, 2)
    assert {c["county"]: c["amount_fen"] for c in summary["by_county"]} == {
        "普安县": 80 * 11800,
        "兴仁市": 30 * 5900,
    }
    assert sum(m["amount_fen"] for m in summary["by_month"]) == order["goods_fen"]


def submitted_and_approved(live: LiveShop, people: dict[str, dict[str, str]]) -> dict:
    order = draft(live, people)
    api(live, "POST", f"/procurement/orders/{order['id']}/submit", people["officer"])
    response = api(live, "POST", f"/procurement/orders/{order['id']}/approve", people["approver"])
    assert response.status_code == 200, response.text
    return response.json()


def test_a_bank_transfer_pays_the_order_and_the_invoice_out_of_band(live_shop, people) -> None:
    order = submitted_and_approved(live_shop, people)
    body = {
        "order": order["number"],
        "amount_fen": order["total_fen"] - 1,
        "paid_at": date.today().isoformat(),
        "reference": "ICBC-0002",
        "payer_account": "6222 0000 1111",
    }
    assert (
        api(live_shop, "POST", "/finance/transfers", people["officer"], json=body).status_code
        == 403
    )
    wrong = api(live_shop, "POST", "/finance/transfers", people["finance"], json=body)
    assert wrong.status_code == 422
    body["amount_fen"] = order["total_fen"]
    recorded = api(live_shop, "POST", "/finance/transfers", people["finance"], json=body)
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["status"] == "paid"
    live_shop.wait_for_webhooks()
    with live_shop.app.app_context():
        invoice_id = db.session.scalar(select(Order.stripe_invoice_id))
    invoice = live_shop.app.extensions["stripe"].v1.invoices.retrieve(invoice_id)
    assert invoice["status"] == "paid" and invoice["attempted"] is False  # paid outside Stripe
    twice = api(live_shop, "POST", "/finance/transfers", people["finance"], json=body)
    assert twice.status_code == 409
    with live_shop.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(BankTransfer)) == 1


def test_rejection_returns_the_stock(live_shop, people) -> None:
    order = draft(live_shop, people)
    api(live_shop, "POST", f"/procurement/orders/{order['id']}/submit", people["officer"])
    assert stock(live_shop, "XR-YR-001") == 1500 - 30
    no_reason = api(
        live_shop,
        "POST",
        f"/procurement/orders/{order['id']}/reject",
        people["approver"],
        json={"reason": " "},
    )
    assert no_reason.status_code == 422
    rejected = api(
        live_shop,
        "POST",
        f"/procurement/orders/{order['id']}/reject",
        people["approver"],
        json={"reason": "预算本月已用完"},
    )
    assert rejected.json()["status"] == "cancelled"
    assert "预算本月已用完" in rejected.json()["history"][-1]["reason"]
    assert stock(live_shop, "XR-YR-001") == 1500
    assert stock(live_shop, "PA-TEA-001") == 600


def test_large_orders_need_two_different_approvers(live_shop, people) -> None:
    with live_shop.app.app_context():
        unit = db.session.scalar(select(Organisation))
        db.session.execute(update(Organisation).values(dual_approval_above_fen=100_00))
        add_member(
            db.session,
            None,
            unit,
            email="approver2@example.com",
            role="approver",
            name="第二审批",
            password="second-password",
        )
        db.session.commit()
    second = live_shop.token("approver2@example.com", "second-password")
    order = draft(live_shop, people)
    api(live_shop, "POST", f"/procurement/orders/{order['id']}/submit", people["officer"])
    first = api(live_shop, "POST", f"/procurement/orders/{order['id']}/approve", people["approver"])
    assert first.json()["status"] == "pending_approval"
    repeat = api(
        live_shop, "POST", f"/procurement/orders/{order['id']}/approve", people["approver"]
    )
    assert repeat.status_code == 409
    final = api(live_shop, "POST", f"/procurement/orders/{order['id']}/approve", second)
    assert final.json()["status"] == "awaiting_payment"


def test_overdue_invoices_are_listed_and_only_finance_cancelling_returns_stock(
    live_shop, people
) -> None:
    order = submitted_and_approved(live_shop, people)
    assert api(live_shop, "GET", "/finance/overdue", people["finance"]).json()["items"] == []
    with live_shop.app.app_context():
        db.session.execute(update(Order).values(invoice_due_at=utcnow() - timedelta(days=1)))
        db.session.commit()
    overdue = api(live_shop, "GET", "/finance/overdue", people["finance"]).json()["items"]
    assert [o["number"] for o in overdue] == [order["number"]]
    assert stock(live_shop, "PA-TEA-001") == 600 - 80  # still held: only finance gives it back
    cancelled = api(
        live_shop,
        "POST",
        f"/finance/orders/{order['number']}/cancel",
        people["finance"],
        json={"reason": "逾期 30 天未付款"},
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert stock(live_shop, "PA-TEA-001") == 600
    with live_shop.app.app_context():
        invoice_id = db.session.scalar(select(Order.stripe_invoice_id))
    assert live_shop.app.extensions["stripe"].v1.invoices.retrieve(invoice_id)["status"] == "void"


def test_short_stock_on_submit_is_409_and_holds_nothing(live_shop, people) -> None:
    order = draft(live_shop, people)
    with live_shop.app.app_context():
        db.session.execute(update(Product).where(Product.sku == "XR-YR-001").values(stock=10))
        db.session.commit()
    refused = api(live_shop, "POST", f"/procurement/orders/{order['id']}/submit", people["officer"])
    assert refused.status_code == 409
    assert stock(live_shop, "PA-TEA-001") == 600 and stock(live_shop, "XR-YR-001") == 10


# --- who may do what ---------------------------------------------------------------------------

ROLES = ["anonymous", "buyer", "requester", "approver", "other_viewer", "finance", "admin"]
# endpoint → (the state its order must be in, expected status per role in the order of ROLES)
EXPECTED = {
    "upload": (None, [401, 403, 201, 403, 403, 403, 403]),
    "preview": (None, [401, 403, 200, 403, 403, 403, 403]),
    "quick": (None, [401, 403, 201, 403, 403, 403, 403]),
    "list": (None, [401, 403, 200, 200, 200, 403, 403]),
    "summary": (None, [401, 403, 200, 200, 200, 403, 403]),
    "show": ("draft", [401, 404, 200, 200, 404, 404, 404]),
    "reorder": ("draft", [401, 404, 201, 403, 404, 404, 404]),
    "submit": ("draft", [401, 404, 200, 403, 404, 404, 404]),
    "approve": ("pending_approval", [401, 404, 403, 200, 404, 404, 404]),
    "reject": ("pending_approval", [401, 404, 403, 200, 404, 404, 404]),
    "transfer": ("awaiting_payment", [401, 403, 403, 403, 403, 201, 403]),
    "overdue": (None, [401, 403, 403, 403, 403, 200, 403]),
    "cancel": ("overdue", [401, 403, 403, 403, 403, 200, 403]),
}
QUICK = {
    "text": "PA-TEA-001 10",
    "delivery": {
        "recipient": "食堂",
        "phone": "13800138000",
        "address": "文昌一路 8 号",
        "district": "惠城区",
    },
}


def order_in_state(live: LiveShop, people: dict[str, dict[str, str]], state: str) -> dict:
    order = draft(live, people)
    steps = {
        "pending_approval": ["submit"],
        "awaiting_payment": ["submit", "approve"],
        "overdue": ["submit", "approve"],
    }.get(state, [])
    for step in steps:
        who = people["officer"] if step == "submit" else people["approver"]
        assert api(live, "POST", f"/procurement/orders/{order['id']}/{step}", who).ok
    if state == "overdue":
        with live.app.app_context():
            db.session.execute(
                update(Order)
                .where(Order.id == order["id"])
                .values(invoice_due_at=utcnow() - timedelta(days=1))
            )
            db.session.commit()
    return order


def call(
    live: LiveShop, action: str, headers: dict[str, str], order: dict | None, role: str
) -> int:
    oid = order["id"] if order else None
    requests_by_action = {
        "upload": lambda: upload(live, headers, TWO_CANTEENS),
        "preview": lambda: api(
            live,
            "POST",
            "/procurement/orders/preview",
            headers,
            files={"file": ("o.csv", TWO_CANTEENS.encode(), "text/csv")},
        ),
        "quick": lambda: api(live, "POST", "/procurement/orders/quick", headers, json=QUICK),
        "list": lambda: api(live, "GET", "/procurement/orders", headers),
        "summary": lambda: api(live, "GET", "/procurement/summary", headers),
        "show": lambda: api(live, "GET", f"/procurement/orders/{oid}", headers),
        "reorder": lambda: api(live, "POST", f"/procurement/orders/{oid}/reorder", headers),
        "submit": lambda: api(live, "POST", f"/procurement/orders/{oid}/submit", headers),
        "approve": lambda: api(live, "POST", f"/procurement/orders/{oid}/approve", headers),
        "reject": lambda: api(
            live, "POST", f"/procurement/orders/{oid}/reject", headers, json={"reason": "不需要"}
        ),
        "transfer": lambda: api(
            live,
            "POST",
            "/finance/transfers",
            headers,
            json={
                "order": order["number"],
                "amount_fen": order["total_fen"],
                "paid_at": date.today().isoformat(),
                "reference": f"REF-{role}",
            },
        ),
        "overdue": lambda: api(live, "GET", "/finance/overdue", headers),
        "cancel": lambda: api(
            live,
            "POST",
            f"/finance/orders/{order['number']}/cancel",
            headers,
            json={"reason": "逾期"},
        ),
    }
    return requests_by_action[action]().status_code


@pytest.fixture
def everyone(live_shop: LiveShop, people) -> dict[str, dict[str, str]]:
    """One person per role, including a finance-viewer of another unit."""
    with live_shop.app.app_context():
        admin = db.session.scalar(select(User).where(User.email == "admin@example.com"))
        code = "12441303MB0000001"
        other = create_organisation(
            db.session,
            admin,
            name="惠阳区某局",
            type="机关事业单位",
            credit_code=code + check_character(code),
            district="惠阳区",
            reserved_target_fen=1_000_000,
            invoice_title="惠阳区某局",
            tax_id="X",
        )
        add_member(
            db.session,
            admin,
            other,
            email="viewer@example.com",
            role="finance_viewer",
            name="他单位",
            password="viewer-password",
        )
        db.session.commit()
    return {
        "anonymous": {},
        "buyer": people["buyer"],
        "requester": people["officer"],
        "approver": people["approver"],
        "other_viewer": live_shop.token("viewer@example.com", "viewer-password"),
        "finance": people["finance"],
        "admin": people["admin"],
    }


@pytest.mark.parametrize("action", list(EXPECTED))
def test_authorisation_matrix(live_shop, people, everyone, action) -> None:
    state, statuses = EXPECTED[action]
    expected = dict(zip(ROLES, statuses, strict=True))
    seen = {}
    for role, headers in everyone.items():
        order = order_in_state(live_shop, people, state) if state else None
        seen[role] = call(live_shop, action, headers, order, role)
    assert seen == expected


def test_a_file_without_deliveries_needs_a_valid_default_delivery(live_shop, people) -> None:
    bare = "商品编码,数量\nPA-TEA-001,10\n"
    missing = upload(live_shop, people["officer"], bare)
    assert missing.status_code == 422
    assert missing.json()["error"]["details"][0]["row"] == 2
    bad = upload(
        live_shop,
        people["officer"],
        bare,
        recipient="食堂",
        phone="123",
        address="文昌一路",
        district="火星区",
    )
    assert bad.status_code == 422
    assert {d["column"] for d in bad.json()["error"]["details"]} == {"phone", "district"}
    good = upload(
        live_shop,
        people["officer"],
        bare,
        recipient="食堂",
        phone="0752-2281234",
        address="文昌一路 8 号",
        district="惠城区",
    )
    assert good.status_code == 201, good.text
    assert good.json()["address"]["district"] == "惠城区"
    with live_shop.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Order)) == 1


def test_reorder_makes_a_new_draft_at_todays_prices(live_shop, people) -> None:
    first = draft(live_shop, people)
    with live_shop.app.app_context():
        db.session.execute(update(Product).where(Product.sku == "XR-YR-001").values(price_fen=6100))
        db.session.commit()
    again = api(live_shop, "POST", f"/procurement/orders/{first['id']}/reorder", people["officer"])
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first["id"] and again.json()["status"] == "draft"
    assert [
        (line["sku"], line["quantity"], line["unit_price_fen"]) for line in again.json()["lines"]
    ] == [("PA-TEA-001", 60, 11800), ("XR-YR-001", 30, 6100), ("PA-TEA-001", 20, 11800)]
    assert len(again.json()["lines"]) == 3
    assert (
        api(
            live_shop, "POST", f"/procurement/orders/{first['id']}/reorder", people["approver"]
        ).status_code
        == 403
    )


def test_finance_cannot_cancel_an_invoice_that_is_not_yet_due(live_shop, people) -> None:
    order = submitted_and_approved(live_shop, people)
    refused = api(
        live_shop,
        "POST",
        f"/finance/orders/{order['number']}/cancel",
        people["finance"],
        json={"reason": "太早"},
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "not_overdue"
    assert stock(live_shop, "PA-TEA-001") == 600 - 80


def test_submitting_twice_is_an_illegal_transition(live_shop, people) -> None:
    order = draft(live_shop, people)
    url = f"/procurement/orders/{order['id']}/submit"
    assert api(live_shop, "POST", url, people["officer"]).status_code == 200
    again = api(live_shop, "POST", url, people["officer"])
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_transition"
    assert stock(live_shop, "PA-TEA-001") == 600 - 80  # reserved once


def test_an_invoice_paid_at_stripe_can_be_refunded_by_amount_and_the_ledger_follows(
    live_shop, people
) -> None:
    order = submitted_and_approved(live_shop, people)
    with live_shop.app.app_context():
        invoice_id = db.session.scalar(select(Order.stripe_invoice_id))
    live_shop.control(f"invoices/{invoice_id}/pay")
    live_shop.wait_for_webhooks()
    refunded = api(
        live_shop,
        "POST",
        f"/orders/{order['number']}/refunds",
        people["admin"],
        json={"amount_fen": 12345},
    )
    assert refunded.status_code == 201, refunded.text
    live_shop.wait_for_webhooks()
    with live_shop.app.app_context():
        entries = db.session.execute(
            select(LedgerEntry.source, func.sum(LedgerEntry.amount_fen)).group_by(
                LedgerEntry.source
            )
        ).all()
    assert {source: int(total) for source, total in entries} == {
        "payment": order["goods_fen"],
        "refund": -12345,
    }
    summary = api(live_shop, "GET", "/procurement/summary", people["approver"]).json()
    assert summary["spent_fen"] == order["goods_fen"] - 12345


def test_an_order_paid_by_bank_transfer_is_not_refunded_through_stripe(live_shop, people) -> None:
    order = submitted_and_approved(live_shop, people)
    body = {
        "order": order["number"],
        "amount_fen": order["total_fen"],
        "paid_at": date.today().isoformat(),
        "reference": "ICBC-0003",
        "payer_account": "6222 0000 2222",
    }
    assert api(live_shop, "POST", "/finance/transfers", people["finance"], json=body).ok
    refused = api(
        live_shop,
        "POST",
        f"/orders/{order['number']}/refunds",
        people["admin"],
        json={"amount_fen": 100},
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "not_paid_through_stripe"
    assert "线下退款" in refused.json()["error"]["message"]
    with live_shop.app.app_context():
        assert (
            db.session.scalar(select(func.count(LedgerEntry.id)).where(LedgerEntry.amount_fen < 0))
            == 0
        )
