"""The authorization matrix: every route of the URL map × every kind of person, on real objects.

The people: anonymous, buyer A, another buyer, the demo unit's requester, approver and
finance-viewer, a requester and an approver of another organisation, finance and admin. Each
request goes to a real object (buyer A's order, the demo unit's draft, pending and invoiced orders,
an export job, a discrepancy, …): API routes with a bearer token and with the session cookie
(CSRF header included), pages with a signed-in session (CSRF token included), so what is tested is
authorization, not CSRF. Who may do what is the table in `route_access.py`, whose module text says
what "allowed" and "refused" mean. A refused request that would change something must leave the
database exactly as it was, and no response may carry an order number or export the person may not
see.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Select, case, func, select
from werkzeug.test import TestResponse

from shop.accounts.models import Role, User
from shop.accounts.services import issue_token, live_tokens
from shop.catalog.credit_code import check_character
from shop.catalog.models import Product, Supplier
from shop.config import load_config
from shop.db import Base
from shop.demo import load_demo_data
from shop.extensions import db
from shop.ledger.models import Cursor
from shop.orders.models import Order
from shop.orders.services import Address, RequestedLine, ShippingRule, place_order
from shop.payments.services import recognise_payment
from shop.procurement.models import Organisation
from shop.procurement.services import add_member, create_organisation
from shop.reconciliation.models import Discrepancy
from shop.reconciliation.services import CURSOR_PREFIX, LISTS
from tests.conftest import PASSWORD, emulator_control, make_app, reset_database, signed
from tests.integration.route_access import (
    ACCESS,
    ADDRESS,
    ADMIN,
    ANONYMOUS,
    APPROVER,
    BUYER,
    CLOSABLE_MONTH,
    FINANCE,
    IDENTITIES,
    MAY_SEE,
    OFFICER,
    OTHER_APPROVER,
    OTHER_BUYER,
    OTHER_OFFICER,
    SPARE_EMAIL,
    UNIT_CSV,
    VIEWER,
    Call,
    Rule,
)

API_PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
EMAILS = {
    BUYER: "buyer@example.com",
    OTHER_BUYER: "other-buyer@example.com",
    OFFICER: "officer@example.com",
    APPROVER: "approver@example.com",
    VIEWER: "viewer@example.com",
    OTHER_OFFICER: "other-officer@example.com",
    OTHER_APPROVER: "other-approver@example.com",
    FINANCE: "finance@example.com",
    ADMIN: "admin@example.com",
}


NEW_PEOPLE = {
    EMAILS[OTHER_BUYER]: "赵另买",
    EMAILS[VIEWER]: "周查看",
    EMAILS[OTHER_OFFICER]: "吴采购",
    EMAILS[OTHER_APPROVER]: "郑审批",
    SPARE_EMAIL: "钱备用",
}


# The matrix signs in some fifty times; these accounts' argon2 hashes are cheap to verify, so the
# time goes to authorization (how passwords are hashed is test_accounts.py's business).
CHEAP_HASH = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)


def credit_code(prefix: str, serial: int) -> str:
    body = f"{prefix}{serial:07d}"
    return body + check_character(body)


@dataclass
class Browser:
    client: FlaskClient
    csrf: str


def sign_in(app: Flask, email: str | None) -> Browser:
    """A browser: it opens the login page (for its CSRF token) and, given an e-mail, signs in."""
    client = app.test_client()
    page = client.get("/login")
    match = CSRF_FIELD.search(page.get_data(as_text=True))
    assert match, "the login page has no CSRF token"
    browser = Browser(client, match.group(1))
    if email is not None:
        response = client.post(
            "/login", data={"email": email, "password": PASSWORD, "csrf_token": browser.csrf}
        )
        assert response.status_code == 302, f"{email} could not sign in"
    return browser


@functools.cache
def state_of_the_database() -> Select[Any]:
    """One statement: every table's row count, and sums over the columns a refused change could
    touch (statuses, refunds, shipments, invoices, prices, stock, employers, roles).
    """
    watched = (
        func.length(Order.status) * Order.id,
        Order.refunded_fen,
        func.length(func.coalesce(Order.tracking_number, "")) * Order.id,
        func.length(func.coalesce(Order.stripe_invoice_id, "")) * Order.id,
        Product.price_fen * Product.id,
        Product.stock * Product.id,
        case((Product.active, Product.id), else_=0),
        func.length(Discrepancy.status) * Discrepancy.id,
        func.length(Discrepancy.note),
        func.coalesce(User.employer_organisation_id, 0) * User.id,
        func.length(User.role) * User.id,
        case((User.active, User.id), else_=0),
    )
    return select(
        *(
            select(func.count()).select_from(t).scalar_subquery()
            for t in Base.metadata.tables.values()
        ),
        *(select(func.coalesce(func.sum(column), 0)).scalar_subquery() for column in watched),
    )


def fingerprint(app: Flask) -> tuple[Any, ...]:
    with app.app_context():
        state = tuple(db.session.execute(state_of_the_database()).one())
        db.session.remove()
    return state


def outcome(response: TestResponse) -> str:
    status = response.status_code
    if 300 <= status < 400 and urlsplit(response.location or "").path == "/login":
        return "login page"
    if status in (401, 403, 404):
        return str(status)
    if 200 <= status < 400 or status in (409, 422):
        return "allowed"
    return f"unexpected {status}"


def expected_outcome(rule: Rule, who: str, api: bool) -> str:
    if who in rule.allow:
        return "allowed"
    if who == ANONYMOUS:
        return "401" if api else "login page"
    return "404" if who in rule.hidden else "403"


class World:
    """The shop with its people and objects, made once for the whole matrix."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.serial = itertools.count(1)
        self.api = app.test_client(use_cookies=False)
        self.ids: dict[str, int] = {}
        self.bearer: dict[str, dict[str, str]] = {}
        self.browsers: dict[str, Browser] = {}
        self.targets: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, list[str]] = {}
        self.known_state: tuple[Any, ...] | None = None
        self.fresh: dict[str, Callable[[], dict[str, Any]]] = {
            "buyer_order": lambda: self.personal_order(BUYER),
            "buyer_paid": lambda: self.personal_order(BUYER, paid=True),
            "demo_draft": lambda: self.unit_order("draft"),
            "demo_pending": lambda: self.unit_order("pending"),
            "demo_awaiting": lambda: self.unit_order("awaiting"),
            "discrepancy": self.discrepancy,
            "buyer_token": self.buyer_token,
        }

    # --- people ---------------------------------------------------------------------------------

    def enrol(self) -> None:
        with self.app.app_context():
            session = db.session
            load_demo_data(session)
            admin = session.scalar(select(User).where(User.role == Role.ADMIN))
            assert admin is not None
            for email, name in NEW_PEOPLE.items():
                session.add(User(email=email, name=name, password_hash=CHEAP_HASH))
            demo_unit = session.scalar(select(Organisation))
            assert demo_unit is not None
            other_unit = create_organisation(
                session,
                admin,
                name="惠州市惠阳区某局",
                type="机关事业单位",
                credit_code=credit_code("12441303MB", 1),
                district="惠阳区",
                reserved_target_fen=1_000_000,
                invoice_title="惠州市惠阳区某局",
                tax_id="12441303MB",
            )
            for unit, who, role in (
                (demo_unit, VIEWER, "finance_viewer"),
                (other_unit, OTHER_OFFICER, "requester"),
                (other_unit, OTHER_APPROVER, "approver"),
            ):
                add_member(session, admin, unit, email=EMAILS[who], role=role)
            for who, email in EMAILS.items():
                user = session.scalar(select(User).where(User.email == email))
                assert user is not None
                user.password_hash = CHEAP_HASH
                self.ids[who] = user.id
                token = issue_token(session, user, days=1)
                self.bearer[who] = {"Authorization": f"Bearer {token}"}
            # Reconciliation asked for here reads only what Stripe got from now on, not what
            # the emulator keeps from earlier tests.
            started = int(time.time()) - 1
            session.add_all(Cursor(name=CURSOR_PREFIX + kind, position=started) for kind in LISTS)
            supplier = session.scalar(select(Supplier).order_by(Supplier.id))
            assert supplier is not None
            self.targets.update(
                demo_unit={"organisation_id": demo_unit.id},
                supplier={"supplier_id": supplier.id},
            )
            session.commit()
            session.remove()
        self.browsers = {who: sign_in(self.app, EMAILS.get(who)) for who in IDENTITIES}

    # --- objects ---------------------------------------------------------------------------------

    def personal_order(self, who: str, *, paid: bool = False) -> dict[str, Any]:
        """An online order awaiting payment (or paid), placed through the order service."""
        with self.app.app_context():
            user = db.session.get(User, self.ids[who])
            assert user is not None
            order = place_order(
                db.session,
                user,
                [RequestedLine("PA-TEA-005", 1)],
                Address(**ADDRESS),
                shipping=ShippingRule.from_config(self.app.config),
                payment_minutes=30,
                max_quantity=100,
            )
            if paid:
                recognise_payment(
                    db.session,
                    order,
                    payment_intent=None,
                    amount_fen=order.total_fen,
                    source="授权矩阵",
                )
            db.session.commit()
            number = order.number
            db.session.remove()
        return {"number": number}

    def unit_order(
        self, state: str, requester: str = OFFICER, approver: str = APPROVER
    ) -> dict[str, Any]:
        """A unit order taken through the API: drafted, then submitted, then approved."""
        drafted = self.api.post(
            f"{API_PREFIX}/procurement/orders",
            headers=self.bearer[requester],
            data={"file": (io.BytesIO(UNIT_CSV.encode()), "order.csv")},
        )
        assert drafted.status_code == 201, drafted.get_json()
        order = drafted.get_json()
        steps = {"draft": [], "pending": ["submit"], "awaiting": ["submit", "approve"]}[state]
        for step in steps:
            who = requester if step == "submit" else approver
            done = self.api.post(
                f"{API_PREFIX}/procurement/orders/{order['id']}/{step}", headers=self.bearer[who]
            )
            assert done.status_code == 200, done.get_json()
        return {"order_id": order["id"], "number": order["number"], "total_fen": order["total_fen"]}

    def buyer_token(self) -> dict[str, Any]:
        """A token of buyer A's besides the one the matrix uses."""
        with self.app.app_context():
            user = db.session.get(User, self.ids[BUYER])
            assert user is not None
            issue_token(db.session, user, days=1)
            db.session.commit()
            token_id = max(token.id for token in live_tokens(db.session, user))
            db.session.remove()
        return {"token_id": token_id}

    def discrepancy(self) -> dict[str, Any]:
        with self.app.app_context():
            found = Discrepancy(
                kind="amount_differs",
                stripe_object=f"pi_authz_{next(self.serial)}",
                shop_fen=1000,
                stripe_fen=900,
                currency="cny",
                detail="授权矩阵",
            )
            db.session.add(found)
            db.session.commit()
            discrepancy_id = found.id
            db.session.remove()
        return {"discrepancy_id": discrepancy_id}

    def export(self) -> dict[str, Any]:
        started = self.api.post(
            f"{API_PREFIX}/finance/exports",
            headers=self.bearer[FINANCE],
            json={"report": "detail", "format": "csv"},
        )
        assert started.status_code == 202, started.get_json()
        return {"job_id": started.get_json()["id"]}

    def build(self) -> None:
        self.enrol()
        targets = {
            "buyer_order": self.personal_order(BUYER),
            "buyer_paid": self.personal_order(BUYER, paid=True),
            "other_buyer_order": self.personal_order(OTHER_BUYER),
            "demo_draft": self.unit_order("draft"),
            "demo_pending": self.unit_order("pending"),
            "demo_awaiting": self.unit_order("awaiting"),
            "other_draft": self.unit_order("draft", OTHER_OFFICER, OTHER_APPROVER),
            "other_pending": self.unit_order("pending", OTHER_OFFICER, OTHER_APPROVER),
            "discrepancy": self.discrepancy(),
            "export": self.export(),
            "buyer_token": self.buyer_token(),
            "product": {"sku": "AL-BJ-001"},
            "month": {"month": CLOSABLE_MONTH},
            "bulk_sample": {"name": "bulk-order-template.csv"},
            "ledger_sample": {"name": "counter-sales-template.csv"},
        }
        self.targets.update(targets)
        self.secrets = {
            "buyer_orders": [targets["buyer_order"]["number"], targets["buyer_paid"]["number"]],
            "other_buyer_orders": [targets["other_buyer_order"]["number"]],
            "demo_unit_orders": [
                targets[kind]["number"] for kind in ("demo_draft", "demo_pending", "demo_awaiting")
            ],
            "other_unit_orders": [
                targets[kind]["number"] for kind in ("other_draft", "other_pending")
            ],
            "export_jobs": [targets["export"]["job_id"]],
        }

    def unseen(self, who: str) -> list[str]:
        """What `who` may not see anywhere."""
        return [
            secret
            for group, readers in MAY_SEE.items()
            if who not in readers
            for secret in self.secrets[group]
        ]

    # --- requests --------------------------------------------------------------------------------

    def second_browser(self, who: str) -> Browser:
        """A new browser holding the person's session cookie: signing out there spares theirs."""
        name = self.app.config["SESSION_COOKIE_NAME"]
        cookie = self.browsers[who].client.get_cookie(name)
        assert cookie is not None
        client = self.app.test_client()
        client.set_cookie(name, cookie.value)
        return Browser(client, self.browsers[who].csrf)

    def database_state(self) -> tuple[Any, ...]:
        """The fingerprint, remembered while only refused changes are made."""
        if self.known_state is None:
            self.known_state = fingerprint(self.app)
        return self.known_state

    def target(self, rule: Rule, allowed: bool) -> dict[str, Any]:
        if rule.target is None:
            return {}
        if rule.fresh and allowed:
            return self.fresh[rule.target]()
        return self.targets[rule.target]

    def browser(self, rule: Rule, who: str, transport: str) -> tuple[FlaskClient, Browser]:
        """The client the request goes through, and the browser whose CSRF token it carries.

        Pages always go through a browser (the anonymous one has no session); the API gets a
        cookie-less client for bearer tokens and for anonymous calls.
        """
        if rule.own_client == "signed in":
            browser = self.second_browser(who)
        elif rule.own_client == "blank":
            browser = sign_in(self.app, None)
        elif transport == "session":
            browser = self.browsers[who]
        else:
            return self.api, self.browsers[ANONYMOUS]
        return browser.client, browser

    def send(
        self, endpoint: str, method: str, rule: Rule, who: str, transport: str
    ) -> tuple[TestResponse, str]:
        """Make the request; return the response and what the request itself said."""
        allowed = who in rule.allow
        target = self.target(rule, allowed)
        url_rule = next(r for r in self.app.url_map.iter_rules(endpoint) if method in r.methods)
        path = self.app.url_map.bind("localhost").build(
            endpoint, {name: target[name] for name in url_rule.arguments}, method=method
        )
        if rule.query:
            path += "?" + rule.query
        api = path.startswith(API_PREFIX)
        unsafe = method not in SAFE_METHODS
        call = Call(target, who, EMAILS.get(who, ""), allowed, next(self.serial), credit_code)
        client, browser = self.browser(rule, who, transport if api else "session")
        headers = dict(self.bearer[who]) if transport == "bearer" else {}
        if unsafe and api and transport == "session":
            headers["X-CSRFToken"] = browser.csrf
        kwargs: dict[str, Any] = {}
        if rule.json is not None:
            body = dict(rule.json(call) if callable(rule.json) else rule.json)
            if rule.stripe_signed:
                kwargs.update(data=json.dumps(body).encode(), content_type="application/json")
                headers["Stripe-Signature"] = signed(kwargs["data"])
            else:
                kwargs["json"] = body
        else:
            body = dict(rule.form(call) if callable(rule.form) else rule.form or {})
            form = dict(body)
            if rule.upload is not None:
                name, content = rule.upload
                form["file"] = (io.BytesIO(content), name)
            if unsafe and not api:
                form["csrf_token"] = browser.csrf
            if form:
                kwargs["data"] = form
        response = client.open(path, method=method, headers=headers, **kwargs)
        return response, f"{path} {json.dumps(body, ensure_ascii=False) if body else ''}"


@pytest.fixture(scope="module")
def world(
    database_url: str, emulator: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    emulator_control(emulator, "failures", mode="none")
    emulator_control(emulator, "webhooks", url=None, drop_next=0)
    reset_database(database_url)
    files: Path = tmp_path_factory.mktemp("authorization")
    # Tasks run in-process: an export or a reconciliation asked for here finishes in the request.
    celery = {
        **load_config()["CELERY"],
        "broker_url": "memory://",
        "result_backend": None,
        "task_always_eager": True,
    }
    app = make_app(
        database_url,
        emulator,
        CELERY=celery,
        RATELIMIT_STORAGE_URI="memory://",
        RECONCILE_OVERLAP_SECONDS=0,
        EXPORT_DIR=files / "exports",
        UPLOAD_DIR=files / "uploads",
    )
    shop = World(app)
    shop.build()
    yield shop
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def is_api(endpoint: str) -> bool:
    return endpoint.split(".")[0].endswith("_api")


def cells() -> Iterator[Any]:
    for (endpoint, method), rules in ACCESS.items():
        for rule in rules:
            for who in IDENTITIES:
                if who == ANONYMOUS:
                    transports: tuple[str, ...] = ("none",)
                else:
                    transports = ("bearer", "session") if is_api(endpoint) else ("session",)
                for transport in transports:
                    case = f" [{rule.case}]" if rule.case else ""
                    yield pytest.param(
                        endpoint,
                        method,
                        rule,
                        who,
                        transport,
                        id=f"{endpoint} {method}{case}-{who}-{transport}",
                    )


def test_every_route_has_an_entry_and_every_entry_a_route(world: World) -> None:
    routes = {
        (rule.endpoint, method): rule.rule
        for rule in world.app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    missing = sorted(f"{e} {m} ({routes[e, m]})" for e, m in routes.keys() - ACCESS.keys())
    assert not missing, "routes without an entry in route_access.ACCESS: " + ", ".join(missing)
    stale = sorted(f"{e} {m}" for e, m in ACCESS.keys() - routes.keys())
    assert not stale, "ACCESS entries for routes that no longer exist: " + ", ".join(stale)
    misfiled = sorted(e for e, _m in routes if is_api(e) != routes[e, _m].startswith(API_PREFIX))
    assert not misfiled, "API blueprints must be named *_api and live under /api/v1: " + str(
        misfiled
    )


def assert_it_was_done(world: World, who: str, response: TestResponse, said: str) -> None:
    """On an object made for the purpose the change must succeed, not just pass the checks."""
    assert response.status_code < 400, f"{said} as {who}: {response.status_code}"
    if response.status_code in (302, 303) and not said.startswith(API_PREFIX):
        page = world.browsers[who].client.get(response.location)
        assert "flash-error" not in page.get_data(as_text=True), f"{said} as {who} was refused"


@pytest.mark.parametrize(("endpoint", "method", "rule", "who", "transport"), list(cells()))
def test_each_person_may_use_each_route_only_as_the_table_says(
    world: World, endpoint: str, method: str, rule: Rule, who: str, transport: str
) -> None:
    expected = expected_outcome(rule, who, is_api(endpoint))
    refused_change = method not in SAFE_METHODS and expected != "allowed"
    if not refused_change:
        world.known_state = None  # this request may change the database
    before = world.database_state() if refused_change else None
    response, said = world.send(endpoint, method, rule, who, transport)
    body = response.get_data().decode("utf-8", "replace")
    response.close()
    got = outcome(response)
    assert got == expected, (
        f"{method} {said} as {who} ({transport}): expected {expected}, got {got} "
        f"— {response.status_code} {body[:300]}"
    )
    if before is not None:
        world.known_state = fingerprint(world.app)
        assert world.known_state == before, f"a refused {method} changed the database"
    if rule.fresh and got == "allowed":
        assert_it_was_done(world, who, response, said)
    leaked = [secret for secret in world.unseen(who) if secret in body and secret not in said]
    assert not leaked, f"{who} was shown {leaked}"
