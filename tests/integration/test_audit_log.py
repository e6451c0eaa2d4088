"""The audit trail: every staff change records who, when and the values before and after it,
through the real API and pages; admin and finance read it; the database refuses to change it.

The shop is set up three times only (each set-up is a reset and the demo load): the changes are
grouped by the fixture they need, each group asserted step by step.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from alembic import command
from flask import Flask
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import joinedload

from shop import create_app
from shop.accounts.models import AuditEntry, User
from shop.accounts.services import audit, issue_token
from shop.catalog.credit_code import check_character
from shop.db import utcnow
from shop.extensions import db
from shop.migrate import alembic_config
from shop.orders.models import Order
from shop.reconciliation.models import Discrepancy
from shop.timezones import shanghai_today
from tests.conftest import HUIZHOU_ADDRESS, LiveShop

ONE_CANTEEN = (
    "SKU,数量,收货人,电话,收货地址,区县\nPA-TEA-001,20,机关食堂,13800138001,文昌一路 8 号,惠城区\n"
)
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


# --- helpers -------------------------------------------------------------------------------------


def token(app: Flask, email: str) -> dict[str, str]:
    """A real bearer token, issued without a password check (Argon2 is slow on a busy machine)."""
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        assert user is not None
        issued = issue_token(db.session, user, days=1)
        db.session.commit()
    return {"Authorization": f"Bearer {issued}"}


def signed_in(app: Flask, email: str) -> Any:
    """A browser-like client holding a signed-in session cookie."""
    client = app.test_client()
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == email))
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True
    return client


def csrf_of(client: Any, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def recorded(app: Flask, action: str) -> list[AuditEntry]:
    """The entries of one action, oldest first, detached with their actors."""
    with app.app_context():
        entries = db.session.scalars(
            select(AuditEntry)
            .options(joinedload(AuditEntry.actor))
            .where(AuditEntry.action == action)
            .order_by(AuditEntry.id)
        ).all()
        db.session.expunge_all()
    return list(entries)


def only(app: Flask, action: str) -> AuditEntry:
    entries = recorded(app, action)
    assert len(entries) == 1, [(e.action, e.target, e.details) for e in entries]
    return entries[0]


def by(entry: AuditEntry) -> str | None:
    return entry.actor.email if entry.actor else None


def credit_code(first17: str) -> str:
    return first17 + check_character(first17)


def api(live: LiveShop, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    return requests.request(method, f"{live.url}/api/v1{path}", headers=headers, timeout=60, **kw)


# --- catalogue, units and accounts (operations) --------------------------------------------------


def price_stock_and_certification_changes(client: Any, app: Flask, admin: dict[str, str]) -> None:
    start = utcnow()
    changed = client.patch(
        "/api/v1/admin/products/PA-TEA-001",
        headers=admin,
        json={"price_fen": 13800, "stock": 550, "certified": False},
    )
    assert changed.status_code == 200, changed.get_json()
    entry = only(app, "product.update")
    assert (by(entry), entry.target) == ("admin@example.com", "product:PA-TEA-001")
    assert entry.before == {"price_fen": 12800, "stock": 600, "certified": True}
    assert entry.after == {"price_fen": 13800, "stock": 550, "certified": False}
    assert start <= entry.at <= utcnow() and entry.at.utcoffset() == timedelta(0)

    # The same kind of change made on the operations page is recorded alike.
    page = signed_in(app, "admin@example.com")
    saved = page.post(
        "/admin/products/PA-TEA-001",
        data={
            "price": "139.00",
            "stock": "540",
            "active": "on",
            "csrf_token": csrf_of(page, "/admin/products"),
        },
    )
    assert saved.status_code == 302
    page_change = recorded(app, "product.update")[-1]
    assert by(page_change) == "admin@example.com"
    assert page_change.before == {"price_fen": 13800, "stock": 550}
    assert page_change.after == {"price_fen": 13900, "stock": 540}

    refused = client.patch("/api/v1/admin/products/PA-TEA-001", headers=admin, json={"stock": -1})
    assert refused.status_code == 422
    assert len(recorded(app, "product.update")) == 2, "a refused change leaves no entry"

    suppliers = client.get("/api/v1/admin/suppliers", headers=admin).get_json()["items"]
    supplier = next(s for s in suppliers if s["certifications"])
    certified = client.post(
        f"/api/v1/admin/suppliers/{supplier['id']}/certifications",
        headers=admin,
        json={"number": "QXN-XFBF-2027-0001", "valid_from": "2027-01-01", "valid_to": "2027-12-31"},
    )
    assert certified.status_code == 201, certified.get_json()
    certificate = only(app, "certification.create")
    assert by(certificate) == "admin@example.com"
    assert certificate.target == f"supplier:{supplier['id']}"
    assert certificate.before is None
    assert certificate.after == {
        "number": "QXN-XFBF-2027-0001",
        "valid_from": "2027-01-01",
        "valid_to": "2027-12-31",
    }
    assert certificate.about == {"supplier": supplier["name"]}

    created = client.post(
        "/api/v1/admin/suppliers",
        headers=admin,
        json={"name": EVIL, "credit_code": credit_code("91522323MA6DNQ4X1"), "county": "普安县"},
    )
    assert created.status_code == 201, created.get_json()
    registered = only(app, "supplier.create")
    assert (by(registered), registered.before) == ("admin@example.com", None)
    assert (registered.after["name"], registered.after["county"]) == (EVIL, "普安县")


def unit_member_and_account_creations(client: Any, app: Flask, admin: dict[str, str]) -> None:
    created = client.post(
        "/api/v1/admin/organisations",
        headers=admin,
        json={
            "name": "惠州市惠阳区机关事务中心",
            "type": "机关事业单位",
            "credit_code": credit_code("11441300007196522"),
            "district": "惠阳区",
            "reserved_target_fen": 50_000_00,
            "invoice_title": "惠州市惠阳区机关事务中心",
            "tax_id": "11441300007196522A",
        },
    )
    assert created.status_code == 201, created.get_json()
    unit = created.get_json()
    entry = only(app, "organisation.create")
    assert (by(entry), entry.target, entry.before) == (
        "admin@example.com",
        f"organisation:{unit['id']}",
        None,
    )
    assert (entry.after["name"], entry.after["reserved_target_fen"]) == (unit["name"], 50_000_00)

    added = client.post(
        f"/api/v1/admin/organisations/{unit['id']}/members",
        headers=admin,
        json={"email": "buyer@example.com", "role": "approver"},
    )
    assert added.status_code == 201, added.get_json()
    member = only(app, "organisation.member")
    assert by(member) == "admin@example.com"
    assert member.before == {"email": "buyer@example.com", "roles": []}
    assert member.after == {
        "email": "buyer@example.com",
        "roles": ["approver"],
        "account_created": False,
    }

    command_line = ["users", "create", "--email", "ops2@example.com", "--name", "运营二"]
    result = app.test_cli_runner().invoke(
        args=[*command_line, "--role", "admin", "--password", "another-password"]
    )
    assert result.exit_code == 0, result.output
    account = only(app, "user.create")
    assert (by(account), account.about) == (None, {"via": "shop users create"})
    assert account.after == {"email": "ops2@example.com", "name": "运营二", "role": "admin"}


def test_catalogue_unit_and_account_changes_are_audited_and_shown_escaped(client, app) -> None:
    admin = token(app, "admin@example.com")
    price_stock_and_certification_changes(client, app, admin)
    unit_member_and_account_creations(client, app, admin)

    html = signed_in(app, "admin@example.com").get("/admin/audit").get_data(as_text=True)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    )
    assert "¥128.00" in html and "¥138.00" in html, "prices in 元 on both sides of the change"
    newest_first = [m.group(1) for m in re.finditer(r'data-action="([^"]+)"', html)]
    assert newest_first[0] == "user.create" and newest_first[-1] == "product.update"


# --- orders and money (operations, approvers, finance) -------------------------------------------


def paid_order(live: LiveShop, buyer: dict[str, str]) -> dict[str, Any]:
    order = api(
        live,
        "POST",
        "/orders",
        buyer,
        json={"lines": [{"sku": "PA-TEA-001", "quantity": 2}], "address": HUIZHOU_ADDRESS},
    ).json()
    live.control(f"checkout/sessions/{order['checkout_url'].rsplit('/', 1)[-1]}/pay")
    live.wait_for_webhooks()
    return dict(api(live, "GET", f"/orders/{order['number']}", buyer).json())


def shipping_refunds_and_cancels(live: LiveShop, people: dict[str, dict[str, str]]) -> None:
    buyer, admin = people["buyer"], people["admin"]
    order = paid_order(live, buyer)
    assert order["status"] == "paid"
    number = order["number"]

    shipment = {"carrier": "顺丰速运", "tracking_number": "SF1234567890"}
    shipped = api(live, "POST", f"/admin/orders/{number}/shipment", admin, json=shipment)
    assert shipped.status_code == 200, shipped.text
    entry = only(live.app, "order.ship")
    assert (by(entry), entry.target) == ("admin@example.com", number)
    assert (entry.before, entry.after) == ({"status": "paid"}, {"status": "shipped", **shipment})

    refund = {"amount_fen": 1000, "reason": "包装破损"}
    refunded = api(live, "POST", f"/orders/{number}/refunds", admin, json=refund)
    assert refunded.status_code == 201, refunded.text
    entry = only(live.app, "order.refund")
    assert (by(entry), entry.target) == ("admin@example.com", number)
    assert entry.before == {"status": "shipped", "refunded_fen": 0}
    assert (entry.after["kind"], entry.after["amount_fen"], entry.after["reason"]) == (
        "amount",
        1000,
        "包装破损",
    )

    unpaid = api(
        live,
        "POST",
        "/orders",
        buyer,
        json={"lines": [{"sku": "XR-YR-001", "quantity": 1}], "address": HUIZHOU_ADDRESS},
    ).json()
    assert api(live, "POST", f"/orders/{unpaid['number']}/cancel", admin).status_code == 200
    entry = only(live.app, "order.cancel")
    assert (by(entry), entry.target) == ("admin@example.com", unpaid["number"])
    assert (entry.before, entry.after) == (
        {"status": "awaiting_payment"},
        {"status": "cancelled", "reason": "运营取消"},
    )


def unit_order(live: LiveShop, officer: dict[str, str]) -> dict[str, Any]:
    drafted = api(
        live,
        "POST",
        "/procurement/orders",
        officer,
        files={"file": ("order.csv", ONE_CANTEEN.encode(), "text/csv")},
    )
    assert drafted.status_code == 201, drafted.text
    order = drafted.json()
    submitted = api(live, "POST", f"/procurement/orders/{order['id']}/submit", officer)
    assert submitted.status_code == 200, submitted.text
    return dict(submitted.json())


def approvals_rejections_transfers_and_overdue_cancels(
    live: LiveShop, people: dict[str, dict[str, str]]
) -> None:
    officer, approver, finance = people["officer"], people["approver"], people["finance"]
    first = unit_order(live, officer)
    approved = api(live, "POST", f"/procurement/orders/{first['id']}/approve", approver)
    assert approved.status_code == 200, approved.text
    entry = only(live.app, "order.approve")
    assert (by(entry), entry.target) == ("approver@example.com", first["number"])
    assert entry.before == {"status": "pending_approval", "approvals": 0}
    assert (entry.after["status"], entry.after["approvals"]) == ("awaiting_payment", 1)
    assert entry.after["stripe_invoice_id"]

    paid_on = shanghai_today(utcnow())
    transfer = {
        "order": first["number"],
        "amount_fen": first["total_fen"],
        "paid_at": paid_on.isoformat(),
        "reference": "ICBC-2026-0099",
        "payer_account": "6222 0000 1111",
    }
    recorded_transfer = api(live, "POST", "/finance/transfers", finance, json=transfer)
    assert recorded_transfer.status_code == 201, recorded_transfer.text
    entry = only(live.app, "order.transfer")
    assert (by(entry), entry.target) == ("finance@example.com", first["number"])
    assert entry.before == {"status": "awaiting_payment", "paid_at": None}
    assert (entry.after["status"], entry.after["amount_fen"], entry.after["reference"]) == (
        "paid",
        first["total_fen"],
        "ICBC-2026-0099",
    )
    assert entry.after["paid_on"] == paid_on.isoformat() and entry.after["paid_at"]

    second = unit_order(live, officer)
    reason = {"reason": "预算不足"}
    rejected = api(
        live, "POST", f"/procurement/orders/{second['id']}/reject", approver, json=reason
    )
    assert rejected.status_code == 200, rejected.text
    entry = only(live.app, "order.reject")
    assert (by(entry), entry.target) == ("approver@example.com", second["number"])
    assert (entry.before, entry.after) == (
        {"status": "pending_approval"},
        {"status": "cancelled", "reason": "预算不足"},
    )

    third = unit_order(live, officer)
    assert api(live, "POST", f"/procurement/orders/{third['id']}/approve", approver).ok
    with live.app.app_context():
        db.session.execute(
            update(Order)
            .where(Order.number == third["number"])
            .values(invoice_due_at=utcnow() - timedelta(days=1))
        )
        db.session.commit()
    reason = {"reason": "逾期未付"}
    cancelled = api(live, "POST", f"/finance/orders/{third['number']}/cancel", finance, json=reason)
    assert cancelled.status_code == 200, cancelled.text
    entry = only(live.app, "order.cancel_overdue")
    assert (by(entry), entry.target) == ("finance@example.com", third["number"])
    assert (entry.before, entry.after) == (
        {"status": "awaiting_payment"},
        {"status": "cancelled", "reason": "逾期未付", "invoice_voided": True},
    )


def month_close_counter_sales_and_discrepancy_resolution(
    live: LiveShop, people: dict[str, dict[str, str]]
) -> None:
    finance = people["finance"]
    today = shanghai_today(utcnow())
    month = f"{today.replace(day=1) - timedelta(days=1):%Y-%m}"
    closed = api(live, "POST", f"/finance/months/{month}/close", finance)
    assert closed.status_code == 201, closed.text
    entry = only(live.app, "ledger.close_month")
    assert (by(entry), entry.target) == ("finance@example.com", month)
    assert entry.before == {"closed": False}
    assert entry.after == {
        "closed": True,
        "total_fen": closed.json()["total_fen"],
        "entries": closed.json()["entries"],
    }

    sales = (
        "日期,SKU,产地县,品类,金额（元）,数量,柜台,区县,认定产品\n"
        f"{today},PA-TEA-001,,,256.00,2,普安县专柜,惠城区,\n"
    ).encode("gbk")
    imported = api(
        live,
        "POST",
        "/finance/offline-sales",
        finance,
        files={"file": ("counter.csv", io.BytesIO(sales), "text/csv")},
    )
    assert imported.status_code == 201, imported.text
    entry = only(live.app, "ledger.import_offline")
    assert (by(entry), entry.target) == (
        "finance@example.com",
        f"offline_import:{imported.json()['import_id']}",
    )
    assert (entry.after["filename"], entry.after["rows"], entry.after["total_fen"]) == (
        "counter.csv",
        1,
        25600,
    )

    with live.app.app_context():
        found = Discrepancy(kind="amount_differs", stripe_object="pi_audit_1", shop_fen=1)
        db.session.add(found)
        db.session.commit()
        found_id = found.id
    note = {"note": "已与 Stripe 核对"}
    resolved = api(live, "POST", f"/finance/discrepancies/{found_id}/resolve", finance, json=note)
    assert resolved.status_code == 200, resolved.text
    entry = only(live.app, "discrepancy.resolve")
    assert (by(entry), entry.target) == ("finance@example.com", f"discrepancy:{found_id}")
    assert (entry.before, entry.after) == (
        {"status": "open", "note": ""},
        {"status": "resolved", "note": "已与 Stripe 核对"},
    )
    assert entry.about == {
        "kind": "amount_differs",
        "stripe_object": "pi_audit_1",
        "order_number": None,
    }


def test_order_and_finance_changes_record_who_and_before_and_after(
    live_shop: LiveShop, celery_worker: str | None
) -> None:
    people = {
        who: token(live_shop.app, f"{who}@example.com")
        for who in ("buyer", "admin", "officer", "approver", "finance")
    }
    shipping_refunds_and_cancels(live_shop, people)
    approvals_rejections_transfers_and_overdue_cancels(live_shop, people)
    month_close_counter_sales_and_discrepancy_resolution(live_shop, people)


# --- never editable ------------------------------------------------------------------------------


def test_the_database_refuses_to_change_or_delete_an_audit_entry(database_url: str) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        audit(
            db.session, None, "product.update", "product:X", before={"stock": 1}, after={"stock": 2}
        )
        db.session.commit()
        entry_id = db.session.scalar(select(AuditEntry.id).order_by(AuditEntry.id.desc()))
    engine = create_engine(database_url)
    attempts = [
        f"UPDATE audit_entries SET target = 'product:Y' WHERE id = {entry_id}",
        f"UPDATE audit_entries SET details = '{{}}' WHERE id = {entry_id}",
        f"DELETE FROM audit_entries WHERE id = {entry_id}",
        "DELETE FROM audit_entries",
    ]
    if engine.dialect.name == "postgresql":
        attempts.append("TRUNCATE audit_entries")
    try:
        for statement in attempts:
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))
        with app.app_context():  # through the ORM as well
            entry = db.session.get(AuditEntry, entry_id)
            assert entry is not None
            entry.target = "product:Y"
            with pytest.raises(DBAPIError, match="append-only"):
                db.session.commit()
            db.session.rollback()
            db.session.delete(db.session.get(AuditEntry, entry_id))
            with pytest.raises(DBAPIError, match="append-only"):
                db.session.commit()
            db.session.rollback()
            db.engine.dispose()
        with engine.connect() as conn:
            row = conn.execute(
                text(f"SELECT target, details FROM audit_entries WHERE id = {entry_id}")
            ).one()
        assert row.target == "product:X" and "before" in str(row.details)
    finally:
        engine.dispose()


def test_migration_0004_installs_the_triggers_and_its_downgrade_removes_them(
    database_url: str,
) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    config = alembic_config(app)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        entry_id = conn.execute(
            text(
                "INSERT INTO audit_entries (action, target, details, at)"
                " VALUES ('product.update', 'product:X', '{}', CURRENT_TIMESTAMP) RETURNING id"
            )
        ).scalar_one()

    def update_allowed() -> bool:
        try:
            with engine.begin() as conn:
                conn.execute(
                    text(f"UPDATE audit_entries SET target = 'changed' WHERE id = {entry_id}")
                )
        except DBAPIError:
            return False
        return True

    try:
        assert update_allowed() is False
        command.downgrade(config, "0003")
        assert update_allowed() is True
        command.upgrade(config, "head")
        assert update_allowed() is False
        command.check(config)  # the models and the migrations still agree
    finally:
        command.upgrade(config, "head")  # whatever happened, later tests get the whole schema
        engine.dispose()
        with app.app_context():
            db.engine.dispose()


# --- who reads it, and how -----------------------------------------------------------------------


def insert_shipments(app: Flask, moments: list[tuple[str, str, datetime]]) -> None:
    with app.app_context():
        actors = {u.email: u.id for u in db.session.scalars(select(User))}
        db.session.add_all(
            AuditEntry(
                actor_id=actors[email],
                action="order.ship",
                target=target,
                details={"before": {"status": "paid"}, "after": {"status": "shipped"}},
                at=at,
            )
            for email, target, at in moments
        )
        db.session.commit()


def only_admin_and_finance_read(client: Any, app: Flask) -> None:
    for email, status in (
        ("admin@example.com", 200),
        ("finance@example.com", 200),
        ("buyer@example.com", 403),
        ("officer@example.com", 403),
        ("approver@example.com", 403),
    ):
        answer = client.get("/api/v1/admin/audit", headers=token(app, email))
        assert answer.status_code == status, email
        page = signed_in(app, email).get("/admin/audit")
        assert page.status_code == status, email
        if status == 403:
            assert answer.get_json()["error"]["code"] == "forbidden"
        else:
            assert answer.get_json()["total"] == 56
            assert 'data-action="order.ship"' in page.get_data(as_text=True)
    assert client.get("/api/v1/admin/audit").status_code == 401
    anonymous = client.get("/admin/audit")
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
    # Finance reads the trail, not the rest of operations.
    assert signed_in(app, "finance@example.com").get("/admin/products").status_code == 403


def nothing_writes_to_the_trail(client: Any, app: Flask, admin: dict[str, str]) -> None:
    rules = [rule for rule in app.url_map.iter_rules() if "audit" in rule.rule]
    assert {rule.rule for rule in rules} == {"/admin/audit", "/api/v1/admin/audit"}
    for rule in rules:
        assert rule.methods is not None and rule.methods <= {"GET", "HEAD", "OPTIONS"}, rule
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert client.open("/api/v1/admin/audit", method=method, headers=admin).status_code == 405
    document = client.get("/api/v1/openapi.json").get_json()
    assert set(document["paths"]["/api/v1/admin/audit"]) == {"get"}
    operation = document["paths"]["/api/v1/admin/audit"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"action", "actor", "target", "from"}
    assert set(operation["responses"]) >= {"200", "401", "403", "422"}
    schema = document["components"]["schemas"]["AuditEntryOut"]
    assert {"at", "actor_email", "action", "target", "before", "after"} <= set(schema["properties"])


def test_admin_and_finance_read_the_trail_by_shanghai_day_newest_first_and_nobody_else(
    client, app
) -> None:
    # 23:30 UTC on 1 March is 07:30 on 2 March in Shanghai; the others a day apart before it.
    late = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    insert_shipments(
        app,
        [("admin@example.com", f"HQ2603010000{i:04d}", late - timedelta(days=i)) for i in range(55)]
        + [("finance@example.com", "HQ260302FINANCE", late + timedelta(minutes=5))],
    )
    admin = token(app, "admin@example.com")
    only_admin_and_finance_read(client, app)
    nothing_writes_to_the_trail(client, app, admin)

    def read(**params: Any) -> Any:
        answer = client.get("/api/v1/admin/audit", headers=admin, query_string=params)
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    first = read(per_page=20)
    assert first["total"] == 56 and len(first["items"]) == 20
    assert first["items"][0]["target"] == "HQ260302FINANCE"
    assert first["items"][0]["actor_email"] == "finance@example.com"
    assert first["items"][0]["before"] == {"status": "paid"}
    times = [item["at"] for item in read(per_page=200)["items"]]
    assert times == sorted(times, reverse=True)
    assert len(read(per_page=20, page=3)["items"]) == 16
    assert read(per_page=20, page=9)["items"] == []

    on_2_march = read(**{"from": "2026-03-02", "to": "2026-03-02"})["items"]
    assert {item["target"] for item in on_2_march} == {"HQ260302FINANCE", "HQ26030100000000"}
    assert read(**{"to": "2026-03-01"})["total"] == 54
    assert read(**{"from": "2026-02-28", "to": "2026-03-01"})["total"] == 2
    assert [i["actor_email"] for i in read(actor="FINANCE@")["items"]] == ["finance@example.com"]
    assert read(target="00000054")["total"] == 1
    assert read(action="order.ship")["total"] == 56 and read(action="order.refund")["total"] == 0
    assert read(**{"from": "0001-01-01", "to": "9999-12-31"})["total"] == 56
    for bad in ({"from": "2026-02-30"}, {"page": "0"}, {"per_page": "1000"}, {"actor": "a\x00"}):
        answer = client.get("/api/v1/admin/audit", headers=admin, query_string=bad)
        assert answer.status_code == 422, bad

    page = signed_in(app, "admin@example.com")
    html = page.get("/admin/audit?from=2026-03-02&to=2026-03-02").get_data(as_text=True)
    assert "2026-03-02 07:30:00" in html and "2026-03-02 07:35:00" in html
    assert "2026-03-01 23:30" not in html, "times are shown in Shanghai"
    assert page.get("/admin/audit?page=2").get_data(as_text=True).count("data-audit-id=") == 6
    # The pager keeps the filter: the next page of order.ship entries, and back.
    shipped = page.get("/admin/audit?action=order.ship").get_data(as_text=True)
    assert 'href="/admin/audit?action=order.ship&amp;page=2" rel="next"' in shipped
    assert 'rel="prev"' not in shipped
    second = page.get("/admin/audit?action=order.ship&page=2").get_data(as_text=True)
    assert 'href="/admin/audit?action=order.ship&amp;page=1" rel="prev"' in second
    assert page.get("/admin/audit?from=2026-13-01").status_code == 422
    # A page number past any database integer is the last page, not a server error.
    for listing in ("/admin/audit", "/admin/orders"):
        assert page.get(f"{listing}?page=99999999999999999999").status_code == 200, listing
