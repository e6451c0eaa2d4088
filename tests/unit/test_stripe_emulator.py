"""The Stripe emulator over real HTTP, driven by the official stripe SDK."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
import stripe
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from shop.payments.emulator import EmulatorConfigError, create_emulator_app, main, serve_in_thread

API_KEY = "sk_test_unit_emulator"
WEBHOOK_SECRET = "whsec_unit_emulator"
FAST_RETRIES = (0.05, 0.1, 0.2)
# Stripe's own example objects (its public OpenAPI repository's fixtures3.json), kept outside this
# repository in shared/ beside the project folder, or wherever STRIPE_FIXTURES says.
FIXTURES_PATH = Path(
    os.environ.get(
        "STRIPE_FIXTURES",
        Path(__file__).resolve().parents[3] / "shared" / "stripe" / "fixtures3.json",
    )
)
SUCCESS_URL = "https://shop.test/orders/HQ-42/confirmation?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "https://shop.test/orders/HQ-42"
METADATA = {"order_number": "HQ-42", "order_id": "42"}
SESSION_TOTAL = 2 * 1250 + 990


class WebhookReceiver:
    """A webhook endpoint that records what it receives and can be told to refuse."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        self.refuse_next = 0
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        with self._lock:
            if self.refuse_next > 0:
                self.refuse_next -= 1
                response = Response("try later", status=503)
            else:
                signature = request.headers.get("Stripe-Signature", "")
                self.received.append((request.get_data(as_text=True), signature))
                response = Response("ok")
        return response(environ, start_response)

    def events(self) -> list[stripe.Event]:
        """Every received event, each verified the way the shop verifies it."""
        with self._lock:
            received = list(self.received)
        return [
            stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)
            for payload, header in received
        ]


@dataclass
class Harness:
    base_url: str
    client: stripe.StripeClient
    receiver: WebhookReceiver

    def control(self, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        return requests.post(f"{self.base_url}/_emulator/{path}", json=body or {}, timeout=10)

    def settle(self) -> None:
        """Wait until every queued webhook has been delivered or given up on."""
        assert self.control("deliveries/wait", {"timeout": 10}).json()["idle"] is True

    def deliveries(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.base_url}/_emulator/deliveries", timeout=10)
        deliveries: list[dict[str, Any]] = response.json()
        return deliveries

    def raw(self, path: str) -> dict[str, Any]:
        response = requests.get(
            f"{self.base_url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def pay(self, session_id: str) -> dict[str, Any]:
        response = self.control(f"checkout/sessions/{session_id}/pay")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def make_client(base_url: str, *, timeout: float = 5.0) -> stripe.StripeClient:
    return stripe.StripeClient(
        API_KEY,
        base_addresses={"api": base_url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


@pytest.fixture
def harness() -> Iterator[Harness]:
    receiver = WebhookReceiver()
    hook_server = make_server("127.0.0.1", 0, receiver, threaded=True)
    threading.Thread(
        target=hook_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    app = create_emulator_app(
        api_key=API_KEY,
        webhook_secret=WEBHOOK_SECRET,
        webhook_url=f"http://127.0.0.1:{hook_server.port}/stripe/webhook",
        retry_delays=FAST_RETRIES,
    )
    server, base_url = serve_in_thread(app)
    try:
        yield Harness(base_url, make_client(base_url), receiver)
    finally:
        server.shutdown()
        hook_server.shutdown()


@pytest.fixture(scope="module")
def fixtures() -> dict[str, Any]:
    if not FIXTURES_PATH.exists():
        pytest.skip(f"Stripe's fixtures3.json is not at {FIXTURES_PATH}: set STRIPE_FIXTURES")
    resources: dict[str, Any] = json.loads(FIXTURES_PATH.read_text())["resources"]
    return resources


def session_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "mode": "payment",
        "currency": "cny",
        "line_items": [
            {
                "price_data": {
                    "currency": "cny",
                    "unit_amount": 1250,
                    "product_data": {"name": "刺梨原汁（500 ml）"},
                },
                "quantity": 2,
            },
            {
                "price_data": {
                    "currency": "cny",
                    "unit_amount": 990,
                    "product_data": {"name": "运费"},
                },
                "quantity": 1,
            },
        ],
        "payment_method_types": ["card", "wechat_pay"],
        "payment_method_options": {"wechat_pay": {"client": "web"}},
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        "client_reference_id": "HQ-42",
        "customer_email": "buyer@example.com",
        "metadata": METADATA,
        "payment_intent_data": {"metadata": METADATA},
        "expires_at": int(time.time()) + 3600,
    }
    params.update(overrides)
    return params


def create_session(client: stripe.StripeClient, **overrides: Any) -> stripe.checkout.Session:
    return client.v1.checkout.sessions.create(params=session_params(**overrides))  # type: ignore[arg-type]


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def shape_problems(actual: Any, expected: Any, path: str = "") -> list[str]:
    """Keys of `expected` missing from `actual`, and type clashes where both are non-null."""
    if actual is None or expected is None:
        return []
    if json_type(actual) != json_type(expected):
        return [f"{path or '<root>'}: {json_type(actual)} instead of {json_type(expected)}"]
    if isinstance(expected, dict):
        problems: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}{key}: missing")
            else:
                problems += shape_problems(actual[key], value, f"{path}{key}.")
        return problems
    if isinstance(expected, list) and expected and actual:
        return shape_problems(actual[0], expected[0], f"{path}0.")
    return []


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[str] = field(default_factory=list)


class FormParser(HTMLParser):
    """Collects forms with the values a browser would submit and their button labels."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._in_button = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = Form(values.get("action", ""), values.get("method", "get").lower())
            self.forms.append(self._form)
        elif self._form is not None and tag == "input" and self._submits(values):
            self._form.fields[values["name"]] = values.get("value", "")
        elif self._form is not None and tag == "button":
            self._in_button = True
            self._form.buttons.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "button":
            self._in_button = False

    def handle_data(self, data: str) -> None:
        if self._in_button and self._form is not None:
            self._form.buttons[-1] += data.strip()

    @staticmethod
    def _submits(values: dict[str, str]) -> bool:
        kind = values.get("type", "text")
        return kind == "hidden" or (kind == "radio" and "checked" in values)


def form_with_button(page: str, label: str) -> Form | None:
    parser = FormParser()
    parser.feed(page)
    return next((form for form in parser.forms if label in form.buttons), None)


def submit(page_url: str, form: Form) -> requests.Response:
    assert form.method == "post"
    return requests.post(
        urljoin(page_url, form.action), data=form.fields, allow_redirects=False, timeout=10
    )


def test_objects_have_the_keys_and_types_of_stripe_fixtures(
    harness: Harness, fixtures: dict[str, Any]
) -> None:
    client = harness.client
    customer = client.v1.customers.create(params={"email": "li@example.com", "name": "李雷"})
    session = create_session(client)
    harness.pay(session.id)
    intent = client.v1.payment_intents.retrieve(str(session.payment_intent))
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    refund = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 100})
    invoice = client.v1.invoices.create(
        params={"customer": customer.id, "collection_method": "send_invoice", "days_until_due": 7}
    )
    item = client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "amount": 5000, "currency": "cny"}
    )
    client.v1.invoices.finalize_invoice(invoice.id)
    event = client.v1.events.list(params={"type": "checkout.session.completed"}).data[0]
    produced = {
        "checkout.session": f"/v1/checkout/sessions/{session.id}",
        "payment_intent": f"/v1/payment_intents/{intent.id}",
        "charge": f"/v1/charges/{charge.id}",
        "refund": f"/v1/refunds/{refund.id}",
        "balance_transaction": f"/v1/balance_transactions/{charge.balance_transaction}",
        "invoice": f"/v1/invoices/{invoice.id}",
        "invoiceitem": f"/v1/invoiceitems/{item.id}",
        "customer": f"/v1/customers/{customer.id}",
        "event": f"/v1/events/{event.id}",
    }
    problems: dict[str, list[str]] = {}
    for kind, path in produced.items():
        obj = harness.raw(path)
        assert obj["object"] == kind
        expected = fixtures[kind]
        if kind == "event":
            # Stripe's example event wraps a plan; ours wraps the session it reports on.
            expected = {**expected, "data": {"object": fixtures["checkout.session"]}}
        if found := shape_problems(obj, expected):
            problems[kind] = found
    assert not problems, json.dumps(problems, indent=2, ensure_ascii=False)


def test_payment_chain_is_linked_and_in_fen(harness: Harness) -> None:
    client = harness.client
    session = create_session(client)
    assert session.payment_intent is not None and session.amount_total == SESSION_TOTAL
    harness.pay(session.id)
    intent = client.v1.payment_intents.retrieve(str(session.payment_intent))
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    transaction = client.v1.balance_transactions.retrieve(str(charge.balance_transaction))
    assert (intent.status, intent.amount_received, intent.currency) == ("succeeded", 3490, "cny")
    assert (charge.payment_intent, charge.amount, charge.paid) == (intent.id, 3490, True)
    assert charge.metadata.to_dict() == METADATA
    assert (transaction.source, transaction.type, transaction.amount) == (charge.id, "charge", 3490)
    assert (transaction.fee, transaction.net) == (21, 3469)
    assert session.id.startswith("cs_test_") and intent.id.startswith("pi_")
    assert charge.id.startswith("ch_") and transaction.id.startswith("txn_")


def test_hosted_page_pay_redirects_and_sends_signed_webhooks(harness: Harness) -> None:
    session = create_session(harness.client)
    assert session.url == f"{harness.base_url}/checkout/{session.id}"
    page = requests.get(session.url, timeout=10)
    assert page.status_code == 200
    assert "34.90 元" in page.text and "刺梨原汁（500 ml）" in page.text
    pay = form_with_button(page.text, "Pay")
    assert pay is not None and form_with_button(page.text, "Decline") is not None

    answer = submit(session.url, pay)

    assert answer.status_code == 303
    assert answer.headers["Location"] == SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session.id)
    harness.settle()
    events = harness.receiver.events()
    types = [event.type for event in events]
    assert {"checkout.session.completed", "payment_intent.succeeded", "charge.succeeded"} <= set(
        types
    )
    completed = next(event for event in events if event.type == "checkout.session.completed")
    paid_session = completed.data.object
    assert paid_session.id == session.id and paid_session.payment_status == "paid"
    assert paid_session.metadata.to_dict() == METADATA
    again = requests.get(session.url, timeout=10)
    assert form_with_button(again.text, "Pay") is None and "complete" in again.text


def test_webhook_signatures_are_stripes_scheme(harness: Harness) -> None:
    harness.client.v1.customers.create(params={"email": "sig@example.com"})
    harness.settle()
    payload, header = harness.receiver.received[0]
    event = stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)
    assert event.type == "customer.created"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_someone_else")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.replace("sig@", "forged@"), header, WEBHOOK_SECRET)


def test_hosted_page_decline_keeps_the_intent_payable(harness: Harness) -> None:
    session = create_session(harness.client)
    url = str(session.url)
    decline = form_with_button(requests.get(url, timeout=10).text, "Decline")
    assert decline is not None

    answer = submit(url, decline)

    assert answer.status_code == 200 and "declined" in answer.text
    assert f'href="{CANCEL_URL}"' in answer.text
    intent = harness.client.v1.payment_intents.retrieve(str(session.payment_intent))
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error is not None
    assert intent.last_payment_error.code == "card_declined"
    harness.pay(session.id)
    harness.settle()
    types = [event.type for event in harness.receiver.events()]
    assert types.index("payment_intent.payment_failed") < types.index("payment_intent.succeeded")


def test_refunds_partial_then_the_rest_and_never_more(harness: Harness) -> None:
    client = harness.client
    session = create_session(client)
    charge_id = harness.pay(session.id)["charge"]["id"]
    intent_id = str(session.payment_intent)
    first = client.v1.refunds.create(
        params={"payment_intent": intent_id, "amount": 490, "metadata": {"refund_id": "7"}}
    )
    assert (first.status, first.amount, first.charge) == ("succeeded", 490, charge_id)

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 3001})
    assert (too_much.value.http_status, too_much.value.code) == (400, "amount_too_large")

    rest = client.v1.refunds.create(params={"charge": charge_id})
    assert rest.amount == 3000
    charge = client.v1.charges.retrieve(charge_id)
    assert (charge.amount_refunded, charge.refunded) == (3490, True)
    assert charge.refunds is not None
    assert [refund.id for refund in charge.refunds.data] == [rest.id, first.id]
    with pytest.raises(stripe.InvalidRequestError) as exhausted:
        client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 1})
    assert exhausted.value.code == "charge_already_refunded"
    reversal = client.v1.balance_transactions.retrieve(str(first.balance_transaction))
    assert (reversal.amount, reversal.type, reversal.source) == (-490, "refund", first.id)
    listed = client.v1.refunds.list(params={"payment_intent": intent_id})
    assert [refund.id for refund in listed.data] == [rest.id, first.id]
    harness.settle()
    types = [event.type for event in harness.receiver.events()]
    assert (types.count("refund.created"), types.count("charge.refunded")) == (2, 2)


def test_idempotency_key_replays_instead_of_creating_again(harness: Harness) -> None:
    client = harness.client
    params = session_params()
    options: Any = {"idempotency_key": "checkout-session-HQ-42"}
    first = client.v1.checkout.sessions.create(params=params, options=options)  # type: ignore[arg-type]

    second = client.v1.checkout.sessions.create(params=params, options=options)  # type: ignore[arg-type]

    assert (second.id, second.payment_intent) == (first.id, first.payment_intent)
    assert [session.id for session in client.v1.checkout.sessions.list().data] == [first.id]
    assert len(client.v1.payment_intents.list().data) == 1
    changed = {**params, "client_reference_id": "HQ-43"}
    with pytest.raises(stripe.IdempotencyError):
        client.v1.checkout.sessions.create(params=changed, options=options)  # type: ignore[arg-type]


def test_injected_errors_and_timeouts_reach_the_sdk(harness: Harness) -> None:
    assert harness.control("failures", {"mode": "error", "count": 1}).status_code == 200
    with pytest.raises(stripe.APIError) as failed:
        harness.client.v1.checkout.sessions.list()
    assert failed.value.http_status == 500
    assert harness.client.v1.checkout.sessions.list().data == []

    harness.control("failures", {"mode": "timeout", "count": 1, "delay": 1.0})
    impatient = make_client(harness.base_url, timeout=0.3)
    with pytest.raises(stripe.APIConnectionError):
        impatient.v1.customers.list()
    assert harness.client.v1.customers.list().data == []

    harness.control("failures", {"mode": "error", "count": 5})
    harness.control("failures", {"mode": "none"})
    assert harness.client.v1.customers.list().data == []


def test_a_wrong_api_key_is_refused_in_stripes_shape(harness: Harness) -> None:
    stranger = stripe.StripeClient(
        "sk_test_somebody_else", base_addresses={"api": harness.base_url}
    )
    with pytest.raises(stripe.AuthenticationError) as refused:
        stranger.v1.customers.list()
    assert refused.value.http_status == 401
    answer = requests.get(f"{harness.base_url}/v1/customers", timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("key", ["sk_live_abc123", "rk_live_abc123", "pk_test_abc123", "abc"])
def test_anything_but_a_test_secret_key_is_refused(key: str) -> None:
    with pytest.raises(EmulatorConfigError):
        create_emulator_app(api_key=key, webhook_secret=WEBHOOK_SECRET, webhook_url=None)


def test_cli_exits_non_zero_for_a_live_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_live_abc123")
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0"])
    assert exited.value.code not in (0, None)
    assert "live key" in capsys.readouterr().err


def test_invoice_paid_out_of_band(harness: Harness) -> None:
    client = harness.client
    customer = client.v1.customers.create(params={"email": "coop@example.com", "name": "合作社"})
    invoice = client.v1.invoices.create(
        params={
            "customer": customer.id,
            "collection_method": "send_invoice",
            "days_until_due": 14,
            "currency": "cny",
            "metadata": {"order_number": "B2B-7"},
            "description": "团购发票",
            "auto_advance": False,
        }
    )
    assert (invoice.status, invoice.due_date, invoice.amount_due) == ("draft", None, 0)
    for extra in ({"amount": 12000}, {"unit_amount": 2500, "quantity": 3}):
        client.v1.invoice_items.create(
            params={"customer": customer.id, "invoice": invoice.id, "currency": "cny", **extra}  # type: ignore[arg-type]
        )
    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.subtotal, draft.total, draft.amount_due) == (19500, 19500, 19500)
    assert [line.amount for line in draft.lines.data] == [12000, 7500]

    finalized = client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open" and finalized.number
    assert finalized.hosted_invoice_url == f"{harness.base_url}/invoice/{invoice.id}"
    finalized_at = finalized.status_transitions.finalized_at
    assert finalized_at is not None and finalized.due_date == finalized_at + 14 * 86400
    client.v1.invoices.send_invoice(invoice.id)
    paid = client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})

    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 19500, 0)
    listed = client.v1.invoices.list(params={"status": "paid", "customer": customer.id})
    assert [found.id for found in listed.data] == [invoice.id]
    harness.settle()
    events = harness.receiver.events()
    paid_events = [event for event in events if event.type == "invoice.paid"]
    assert [event.data.object.id for event in paid_events] == [invoice.id]
    assert paid_events[0].data.object.amount_paid == 19500
    types = {event.type for event in events}
    assert {"invoice.finalized", "invoice.sent"} <= types
    assert "invoice.payment_succeeded" not in types


def test_hosted_invoice_page_pays_by_card(harness: Harness) -> None:
    client = harness.client
    customer = client.v1.customers.create(params={"email": "shop@example.com"})
    invoice = client.v1.invoices.create(
        params={"customer": customer.id, "collection_method": "send_invoice", "days_until_due": 3}
    )
    client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "amount": 8800}
    )
    url = str(client.v1.invoices.finalize_invoice(invoice.id).hosted_invoice_url)
    pay = form_with_button(requests.get(url, timeout=10).text, "Pay")
    assert pay is not None

    answer = submit(url, pay)

    assert answer.status_code == 303
    assert form_with_button(requests.get(url, timeout=10).text, "Pay") is None
    paid = client.v1.invoices.retrieve(invoice.id)
    assert (paid.status, paid.amount_paid, paid.attempted) == ("paid", 8800, True)
    harness.settle()
    types = [event.type for event in harness.receiver.events()]
    assert {"invoice.paid", "invoice.payment_succeeded", "charge.succeeded"} <= set(types)


def test_redelivered_event_arrives_again_with_the_same_id(harness: Harness) -> None:
    session = create_session(harness.client)
    harness.pay(session.id)
    harness.settle()
    listed = harness.client.v1.events.list(params={"type": "checkout.session.completed"})
    event_id = listed.data[0].id

    answer = harness.control(f"events/{event_id}/deliver", {"times": 5})

    assert answer.json() == {"event_id": event_id, "queued": 5}
    harness.settle()
    assert [event.id for event in harness.receiver.events()].count(event_id) == 6
    statuses = [d["status"] for d in harness.deliveries() if d["event_id"] == event_id]
    assert statuses == ["delivered"] * 6


def test_refused_webhooks_are_retried_and_dropped_ones_never_sent(harness: Harness) -> None:
    client = harness.client
    harness.receiver.refuse_next = 2
    kept = client.v1.customers.create(params={"email": "kept@example.com"})
    harness.settle()
    assert harness.control("webhooks", {"drop_next": 1}).json()["drop_next"] == 1
    client.v1.customers.create(params={"email": "dropped@example.com"})
    harness.settle()

    received = [event.data.object.id for event in harness.receiver.events()]
    assert received == [kept.id]
    log = harness.deliveries()
    assert [(d["attempts"], d["status"]) for d in log] == [(3, "delivered"), (0, "dropped")]
    event = client.v1.events.list(params={"type": "customer.created"}).data[-1]
    assert event.pending_webhooks == 0


def test_expand_pagination_and_missing_objects(harness: Harness) -> None:
    client = harness.client
    started = int(time.time())
    session = create_session(client)
    harness.pay(session.id)
    expanded = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["payment_intent.latest_charge", "line_items"]}
    )
    assert expanded.payment_intent.latest_charge.amount == SESSION_TOTAL  # type: ignore[union-attr]
    assert [item.quantity for item in expanded.line_items.data] == [2, 1]  # type: ignore[union-attr]
    customers = [
        client.v1.customers.create(params={"email": f"c{n}@example.com"}).id for n in range(7)
    ]
    paged = [
        customer.id for customer in client.v1.customers.list(params={"limit": 3}).auto_paging_iter()
    ]
    assert paged == customers[::-1]
    newer = client.v1.customers.list(params={"limit": 3, "ending_before": customers[2]})
    assert ([c.id for c in newer.data], newer.has_more) == (customers[5:2:-1], True)
    recent = client.v1.events.list(params={"created": {"gte": started}, "type": "customer.*"})
    assert len(recent.data) == 7
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.charges.retrieve("ch_does_not_exist")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


def test_expired_session_cannot_be_paid(harness: Harness) -> None:
    client = harness.client
    session = create_session(client)

    expired = client.v1.checkout.sessions.expire(session.id)

    assert (expired.status, expired.url) == ("expired", None)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(session.id)
    page = requests.get(str(session.url), timeout=10)
    assert "expired" in page.text and form_with_button(page.text, "Pay") is None
    assert harness.control(f"checkout/sessions/{session.id}/pay").status_code == 400
    intent = client.v1.payment_intents.retrieve(str(session.payment_intent))
    assert intent.status == "canceled"
    harness.settle()
    assert "checkout.session.expired" in [event.type for event in harness.receiver.events()]
