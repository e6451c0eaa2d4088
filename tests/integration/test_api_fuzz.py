"""Fuzz the JSON API against its own OpenAPI document, once per role.

The shop is served over real HTTP (werkzeug, threaded) on the test database with the demo data, a
few paid demo orders, an order awaiting payment and unit orders in draft and awaiting approval,
with the Stripe emulator process behind it. Schemathesis loads `/api/v1/openapi.json` from that
server and, for each of anonymous, buyer, officer, approver, finance and admin (a bearer token
from `POST /api/v1/auth/tokens`), sends every operation generated requests, valid and invalid,
with a fixed seed so CI is reproducible, and checks every answer:

* never a 5xx (`not_a_server_error`);
* its status is one the document declares for that operation (`status_code_conformance`);
* its content type and body match the document (`content_type_conformance`,
  `response_schema_conformance`), error bodies included;
* the headers the document declares are there (`response_headers_conformance`).

An operation first gets one valid request; if the role is refused outright (401/403, decided
before the input is read) that is checked and enough, otherwise it gets a bounded number more.
Path parameters are drawn now and then from what the database holds (order numbers, SKUs, ids),
so requests get past the 404s into the services. Nothing is left out: refunds, cancellations,
month closes and imports run for real on this test's database, token revocation last; the Stripe
webhook is fuzzed too and answers 400 to every unsigned body. Each role prints how many requests
it sent.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from sqlalchemy import select

from shop.accounts.models import ApiToken
from shop.catalog.models import Product, Supplier
from shop.db import utcnow
from shop.extensions import db
from shop.finance.models import ExportJob
from shop.orders.models import Order
from shop.procurement.models import Organisation
from shop.reconciliation.models import Discrepancy
from shop.timezones import shanghai_today
from tests.conftest import (
    HUIZHOU_ADDRESS,
    LiveShop,
    served_demo_shop,
)

ROLES = {
    "anonymous": None,
    "buyer": "buyer@example.com",
    "officer": "officer@example.com",
    "approver": "approver@example.com",
    "finance": "finance@example.com",
    "admin": "admin@example.com",
}
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
DELIVERY = {
    "recipient": "陈采购",
    "phone": "13800138000",
    "address": "江北街道文昌一路 8 号",
    "district": "惠城区",
}
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
EXAMPLES_PER_OPERATION = 5
SEED = 20260705
LIMIT = 10


@pytest.fixture(scope="module")
def fuzzed_shop(
    database_url: str,
    emulator: str,
    celery_worker: str | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveShop]:
    files = tmp_path_factory.mktemp("fuzz")
    with served_demo_shop(
        database_url,
        emulator,
        sales=8,
        LOGIN_RATE_LIMIT="100000 per minute",
        LOGIN_ACCOUNT_RATE_LIMIT="100000 per minute",
        EXPORT_DIR=files / "exports",
        UPLOAD_DIR=files / "uploads",
    ) as shop:
        open_orders(shop)
        yield shop


def open_orders(shop: LiveShop) -> None:
    """Orders still open to change: one awaiting payment, a unit draft and a submitted one."""
    buyer, officer = shop.token("buyer@example.com"), shop.token("officer@example.com")
    order = {"lines": [{"sku": "PA-TEA-001", "quantity": 1}], "address": HUIZHOU_ADDRESS}
    placed = requests.post(f"{shop.url}/api/v1/orders", json=order, headers=buyer, timeout=30)
    assert placed.status_code == 201, placed.text
    drafts = []
    for text in ("PA-TEA-001 20\nXR-YR-001 50", "ZF-NM-001 10"):
        draft = requests.post(
            f"{shop.url}/api/v1/procurement/orders/quick",
            json={"text": text, "delivery": DELIVERY},
            headers=officer,
            timeout=30,
        )
        assert draft.status_code == 201, draft.text
        drafts.append(draft.json()["id"])
    submitted = requests.post(
        f"{shop.url}/api/v1/procurement/orders/{drafts[0]}/submit", headers=officer, timeout=30
    )
    assert submitted.status_code == 200, submitted.text


@pytest.fixture(scope="module")
def tokens(fuzzed_shop: LiveShop) -> dict[str, dict[str, str]]:
    return {role: fuzzed_shop.token(email) if email else {} for role, email in ROLES.items()}


def known_path_values(app: Flask) -> dict[str, list[str]]:
    """What the database holds, by path parameter name, so requests can get past the 404s."""
    with app.app_context():
        values = {
            "sku": db.session.scalars(select(Product.sku).limit(LIMIT)).all(),
            "number": db.session.scalars(
                select(Order.number).order_by(Order.id.desc()).limit(LIMIT)
            ).all(),
            "order_id": db.session.scalars(
                select(Order.id).where(Order.organisation_id.is_not(None)).limit(LIMIT)
            ).all(),
            "supplier_id": db.session.scalars(select(Supplier.id).limit(LIMIT)).all(),
            "organisation_id": db.session.scalars(select(Organisation.id).limit(LIMIT)).all(),
            "discrepancy_id": db.session.scalars(select(Discrepancy.id).limit(LIMIT)).all(),
            "job_id": db.session.scalars(select(ExportJob.id).limit(LIMIT)).all(),
            "token_id": db.session.scalars(select(ApiToken.id).limit(LIMIT)).all(),
            "month": [f"{shanghai_today(utcnow()).year - 1}-{month:02}" for month in (1, 12)],
        }
        db.session.remove()
    return {name: [str(v) for v in found] for name, found in values.items() if found}


def aimed_at(case: Any, path: dict[str, str]) -> Any:
    case.path_parameters.update(path)
    return case


@dataclass
class Fuzzer:
    """Each operation's strategies, built once and shared by every role."""

    schema: Any
    built: dict[tuple[str, GenerationMode], st.SearchStrategy[Any]] = field(default_factory=dict)

    def operations(self) -> list[Any]:
        found = [result.ok() for result in self.schema.get_all_operations()]
        # Revoking a token goes last: it may be the caller's own.
        return sorted(found, key=lambda operation: operation.method.upper() == "DELETE")

    def first(self, operation: Any, known: dict[str, list[str]]) -> st.SearchStrategy[Any]:
        """A valid request, at a row that exists when the path names one."""
        aimed = self._aimed(operation, known)
        return aimed if aimed is not None else self._strategy(operation, POSITIVE)

    def cases(self, operation: Any, known: dict[str, list[str]]) -> st.SearchStrategy[Any]:
        """Valid and invalid requests, and valid ones aimed at rows that exist."""
        strategies = [self._strategy(operation, mode) for mode in (POSITIVE, NEGATIVE)]
        aimed = self._aimed(operation, known)
        return st.one_of(strategies if aimed is None else [*strategies, aimed])

    def _aimed(self, operation: Any, known: dict[str, list[str]]) -> st.SearchStrategy[Any] | None:
        names = [p.name for p in operation.path_parameters]
        if not names or not all(name in known for name in names):
            return None
        existing = st.fixed_dictionaries({n: st.sampled_from(known[n]) for n in names})
        positive = self._strategy(operation, POSITIVE)
        return st.tuples(positive, existing).map(lambda pair: aimed_at(*pair))

    def _strategy(self, operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
        key = (operation.label, mode)
        if key not in self.built:
            self.built[key] = operation.as_strategy(mode)
        return self.built[key]


def send(
    operation: Any,
    cases: st.SearchStrategy[Any],
    examples: int,
    headers: dict[str, str],
    statuses: list[int],
    salt: str,
) -> None:
    """Send `examples` requests drawn from `cases` and check every answer."""

    @seed(zlib.crc32(f"{SEED} {salt} {operation.label}".encode()))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        # No shrinking: every attempt is a request to the live shop, and a report has its curl.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: Any) -> None:
        response = case.call(headers=headers)
        statuses.append(response.status_code)
        case.validate_response(response, headers=headers)

    fuzz()


@pytest.fixture(scope="module")
def fuzzer(fuzzed_shop: LiveShop) -> Fuzzer:
    config = schemathesis.Config.from_dict(
        {
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            # Each role sends its own token; made-up credentials would only be refused.
            "generation": {"with-security-parameters": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{fuzzed_shop.url}/api/v1/openapi.json", config=config)
    return Fuzzer(schema)


@pytest.fixture(scope="module")
def requests_sent() -> Counter[str]:
    return Counter()


@pytest.mark.parametrize("role", list(ROLES))
def test_every_answer_is_declared_and_none_is_a_server_error(
    fuzzed_shop: LiveShop,
    fuzzer: Fuzzer,
    tokens: dict[str, dict[str, str]],
    requests_sent: Counter[str],
    role: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    known = known_path_values(fuzzed_shop.app)
    headers = tokens[role]
    failures: list[str] = []
    answered = 0
    operations = fuzzer.operations()
    for operation in operations:
        statuses: list[int] = []
        try:
            send(operation, fuzzer.first(operation, known), 1, headers, statuses, f"{role} 1")
            # Refused before the input is read: more examples would be refused the same way.
            if statuses not in ([401], [403]):
                cases = fuzzer.cases(operation, known)
                send(operation, cases, EXAMPLES_PER_OPERATION, headers, statuses, role)
        except (Exception, BaseExceptionGroup) as exc:  # a failed check is a group
            failures.append(f"{operation.label}: {exc}")
        requests_sent[role] += len(statuses)
        answered += any(200 <= status < 300 for status in statuses)
    with capsys.disabled():
        print(
            f" [{role}: {requests_sent[role]} requests to {len(operations)} operations,"
            f" {answered} answered 2xx; {requests_sent.total()} in all]",
            end=" ",
        )
    if failures:
        pytest.fail(f"{len(failures)} operations failed for {role}:\n\n" + "\n\n".join(failures))
    assert len(operations) >= 40
    assert answered > 0, f"no operation answered {role} with a success"


def test_input_the_database_could_not_hold_is_refused_and_changes_nothing(
    client: Any, admin: dict[str, str]
) -> None:
    product = "/api/v1/admin/products/PA-TEA-001"
    before = client.get("/api/v1/products/PA-TEA-001").get_json()
    wide = client.patch(product, json={"stock": 2**31, "name": "普安\x00红茶"}, headers=admin)
    assert wide.status_code == 422
    assert {d["field"] for d in wide.get_json()["error"]["details"]} == {"stock", "name"}
    assert client.get("/api/v1/products/PA-TEA-001").get_json() == before
    assert client.get("/api/v1/products", query_string={"q": "茶\x00"}).status_code == 422
    # In a path, such a value names nothing.
    assert client.get("/api/v1/orders/HQ%00", headers=admin).status_code == 404
    members = "/api/v1/admin/organisations/2147483648/members"
    member = {"email": "new@example.com", "role": "requester"}
    assert client.post(members, json=member, headers=admin).status_code == 404
