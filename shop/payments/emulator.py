"""Stripe API emulator: an in-memory REST subset, hosted test pages and signed webhooks."""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import fnmatch
import hashlib
import hmac
import html
import json
import operator
import os
import queue
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests
from flask import Flask, Response, g, redirect, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server, run_simple
from werkzeug.wrappers import Response as BaseResponse

JSON = dict[str, Any]
ApiHandler = Callable[..., JSON]
ControlHandler = Callable[..., Any]

EXTENSION_KEY = "stripe_emulator"
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0)
WEBHOOK_TIMEOUT_SECONDS = 5.0
DEFAULT_FAILURE_DELAY = 3.0
MAX_WAIT_SECONDS = 60.0
SHUTDOWN_POLL_SECONDS = 0.05
DAY = 24 * 60 * 60
SESSION_MIN_LIFETIME = 30 * 60
DEFAULT_CURRENCY = "cny"
FEE_PER_MILLE = 6
DEFAULT_LIST_LIMIT = 10
MAX_LIST_LIMIT = 100
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
CLIENT_REFERENCE_MAX = 200
FAILURE_MODES = ("error", "timeout", "none")
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
COLLECTION_METHODS = ("charge_automatically", "send_invoice")
WECHAT_CLIENTS = ("web", "android", "ios")
TEST_BUYER_NAME = "Test Buyer"
TEST_BUYER_EMAIL = "buyer@example.com"
DECLINE_MESSAGE = "Your card was declined."
ID_ALPHABET = string.ascii_letters + string.digits
CARD_FINGERPRINT = "EmUl8t0rC4rdFp42"

METHOD_OPTION_DEFAULTS: dict[str, JSON] = {
    "card": {
        "installments": None,
        "mandate_options": None,
        "network": None,
        "request_three_d_secure": "automatic",
    },
    "wechat_pay": {"app_id": None, "client": None},
    "alipay": {},
}

# URL path of each collection and the `object` value of its members.
COLLECTIONS: dict[str, str] = {
    "checkout/sessions": "checkout.session",
    "payment_intents": "payment_intent",
    "charges": "charge",
    "refunds": "refund",
    "customers": "customer",
    "invoices": "invoice",
    "invoiceitems": "invoiceitem",
    "events": "event",
    "balance_transactions": "balance_transaction",
}

# Equality filters each list endpoint accepts besides `created`.
LIST_FILTERS: dict[str, tuple[str, ...]] = {
    "checkout.session": ("payment_intent", "customer", "status"),
    "payment_intent": ("customer",),
    "charge": ("customer", "payment_intent"),
    "refund": ("charge", "payment_intent"),
    "customer": ("email",),
    "invoice": ("customer", "status", "collection_method"),
    "invoiceitem": ("customer", "invoice"),
    "event": (),
    "balance_transaction": ("type", "source", "currency"),
}

RANGE_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}

PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}"
    "table{width:100%;border-collapse:collapse;margin:1rem 0}"
    "th,td{padding:.4rem;border-bottom:1px solid #ddd;text-align:left}"
    "form{display:inline-block;margin:1rem 1rem 0 0}"
    "button{font-size:1rem;padding:.5rem 1.5rem;cursor:pointer}"
    ".note{color:#666;font-size:.85rem}.total{font-size:1.2rem}"
)


class EmulatorConfigError(ValueError):
    """The emulator was asked to run with a configuration that could touch real money."""


class StripeApiError(Exception):
    """An error answered in Stripe's JSON error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type

    def body(self) -> JSON:
        return {
            "error": {
                "type": self.error_type,
                "message": self.message,
                "param": self.param,
                "code": self.code,
            }
        }


def missing_resource(kind: str, object_id: str, param: str = "id") -> StripeApiError:
    return StripeApiError(
        404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing"
    )


def missing_param(param: str) -> StripeApiError:
    return StripeApiError(
        400, f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def check_test_key(api_key: str) -> None:
    """Refuse anything but a Stripe test secret key."""
    if api_key.startswith(("sk_live_", "rk_live_")):
        raise EmulatorConfigError(
            "refusing to start: the Stripe emulator must never be given a live key "
            "(sk_live_/rk_live_)"
        )
    if not api_key.startswith("sk_test_"):
        raise EmulatorConfigError(
            "refusing to start: the Stripe emulator needs a test secret key starting with sk_test_"
        )


def sign_payload(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header value for a webhook body."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(
        secret.encode("utf-8"), f"{signed_at}.{payload}".encode(), hashlib.sha256
    ).hexdigest()
    return f"t={signed_at},v1={digest}"


def random_token(length: int) -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def random_digits(length: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_{random_token(length)}"


def now() -> int:
    return int(time.time())


def processing_fee(amount: int) -> int:
    """0.6 % of the amount, rounded half up to whole fen."""
    return (amount * FEE_PER_MILLE + 500) // 1000


def format_amount(amount: int) -> str:
    return f"{Decimal(amount) / 100:.2f}"


# --- form parameters ----------------------------------------------------------------------------

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def parse_form(pairs: Iterable[tuple[str, str]]) -> JSON:
    """Turn Stripe's bracketed form keys (`a[b][0][c]=v`, `a[]=v`) into nested dicts and lists."""
    root: JSON = {}
    for key, value in pairs:
        _assign(root, _key_path(key), value, key)
    # Only nested values can be arrays: the top level of a request is always a hash.
    return {key: _listify(value) for key, value in root.items()}


def _key_path(key: str) -> list[str]:
    head, bracket, rest = key.partition("[")
    return [head, *_BRACKETS.findall(bracket + rest)]


def _assign(node: JSON, path: list[str], value: str, key: str) -> None:
    for part in path[:-1]:
        child = node.setdefault(part or str(len(node)), {})
        if not isinstance(child, dict):
            raise StripeApiError(400, f"Invalid nested parameter: {key}", param=key)
        node = child
    node[path[-1] or str(len(node))] = value


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {key: _listify(item) for key, item in value.items()}
    indexes = [str(index) for index in range(len(converted))]
    if converted and set(converted) == set(indexes):
        return [converted[index] for index in indexes]
    return converted


def _text(params: Mapping[str, Any], name: str, *, label: str | None = None) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise StripeApiError(400, f"Invalid string: {label or name}", param=label or name)
    return value


def _required_text(params: Mapping[str, Any], name: str, *, label: str | None = None) -> str:
    value = _text(params, name, label=label)
    if value is None:
        raise missing_param(label or name)
    return value


def _parse_int(raw: str, label: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise StripeApiError(
            400, f"Invalid integer: {raw}", param=label, code="parameter_invalid_integer"
        ) from None


def _integer(
    params: Mapping[str, Any],
    name: str,
    *,
    label: str | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    label = label or name
    raw = _text(params, name, label=label)
    if raw is None:
        return None
    value = _parse_int(raw, label)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise StripeApiError(400, f"Invalid {label}: must be {bounds}", param=label)
    return value


def _required_integer(
    params: Mapping[str, Any], name: str, *, label: str, minimum: int | None = None
) -> int:
    value = _integer(params, name, label=label, minimum=minimum)
    if value is None:
        raise missing_param(label)
    return value


def _flag(params: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = _text(params, name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise StripeApiError(400, f"Invalid boolean: {raw}", param=name)
    return raw == "true"


def _choice(params: Mapping[str, Any], name: str, allowed: Sequence[str]) -> str | None:
    value = _text(params, name)
    if value is not None and value not in allowed:
        raise StripeApiError(
            400, f"Invalid {name}: must be one of {', '.join(allowed)}", param=name
        )
    return value


def _mapping(params: Mapping[str, Any], name: str, *, label: str | None = None) -> JSON:
    value = params.get(name)
    if value is None or value == "":
        return {}
    if isinstance(value, list):
        # Digit-only keys were read as a list; a hash with such keys is still a hash.
        return {str(index): item for index, item in enumerate(value)}
    if not isinstance(value, dict):
        raise StripeApiError(400, f"Invalid hash: {label or name}", param=label or name)
    return value


def _sequence(params: Mapping[str, Any], name: str) -> list[Any]:
    value = params.get(name)
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    raise StripeApiError(400, f"Invalid array: {name}", param=name)


def _metadata(params: Mapping[str, Any], name: str = "metadata", *, label: str = "") -> JSON:
    label = label or name
    raw = _mapping(params, name, label=label)
    if len(raw) > METADATA_MAX_KEYS:
        raise StripeApiError(400, f"{label} can have at most {METADATA_MAX_KEYS} keys", param=label)
    for key, value in raw.items():
        if not isinstance(value, str):
            raise StripeApiError(400, f"Invalid string: {label}[{key}]", param=f"{label}[{key}]")
        if len(key) > METADATA_KEY_MAX or len(value) > METADATA_VALUE_MAX:
            raise StripeApiError(400, f"{label}[{key}] is too long", param=f"{label}[{key}]")
    # An empty value unsets a key in Stripe, so it never shows up.
    return {key: value for key, value in raw.items() if value != ""}


def _currency(params: Mapping[str, Any], name: str, *, label: str | None = None) -> str | None:
    raw = _text(params, name, label=label)
    if raw is None:
        return None
    if not re.fullmatch(r"[A-Za-z]{3}", raw):
        raise StripeApiError(400, f"Invalid currency: {raw}", param=label or name)
    return raw.lower()


def _url(params: Mapping[str, Any], name: str) -> str | None:
    value = _text(params, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StripeApiError(400, f"Not a valid URL: {name}", param=name, code="url_invalid")
    return value


def _created_filter(params: Mapping[str, Any]) -> Callable[[int], bool]:
    spec = params.get("created")
    if spec is None or spec == "":
        return lambda _created: True
    if isinstance(spec, str):
        exact = _parse_int(spec, "created")
        return lambda created: created == exact
    if not isinstance(spec, dict):
        raise StripeApiError(400, "Invalid created filter", param="created")
    checks = [_range_check(name, raw) for name, raw in spec.items()]
    return lambda created: all(check(created) for check in checks)


def _range_check(name: str, raw: Any) -> Callable[[int], bool]:
    label = f"created[{name}]"
    compare = RANGE_OPERATORS.get(name)
    if compare is None:
        raise StripeApiError(
            400, f"Received unknown parameter: {label}", param=label, code="parameter_unknown"
        )
    if not isinstance(raw, str):
        raise StripeApiError(400, f"Invalid integer: {label}", param=label)
    bound = _parse_int(raw, label)
    return lambda created: compare(created, bound)


def _list_filter(
    kind: str, params: Mapping[str, Any], fixed: Mapping[str, str]
) -> Callable[[JSON], bool]:
    created_ok = _created_filter(params)
    wanted = dict(fixed)
    for name in LIST_FILTERS[kind]:
        value = _text(params, name)
        if value is not None:
            wanted[name] = value
    patterns = _event_type_patterns(params) if kind == "event" else []

    def matches(obj: JSON) -> bool:
        return (
            created_ok(obj["created"])
            and all(obj.get(key) == value for key, value in wanted.items())
            and (not patterns or any(fnmatch.fnmatchcase(obj["type"], p) for p in patterns))
        )

    return matches


def _event_type_patterns(params: Mapping[str, Any]) -> list[str]:
    patterns = [str(value) for value in _sequence(params, "types")]
    single = _text(params, "type")
    return [*patterns, single] if single else patterns


def paginate(items: Sequence[JSON], params: Mapping[str, Any], url: str) -> JSON:
    """A Stripe list object over `items` (newest first) honouring limit and cursors."""
    limit = _integer(params, "limit", minimum=1, maximum=MAX_LIST_LIMIT) or DEFAULT_LIST_LIMIT
    after = _text(params, "starting_after")
    before = _text(params, "ending_before")
    if after:
        window = list(items[_cursor(items, after, "starting_after") + 1 :])
        page = window[:limit]
    elif before:
        window = list(items[: _cursor(items, before, "ending_before")])
        page = window[-limit:]
    else:
        window = list(items)
        page = window[:limit]
    return {"object": "list", "data": page, "has_more": len(window) > limit, "url": url}


def _cursor(items: Sequence[JSON], object_id: str, param: str) -> int:
    for index, item in enumerate(items):
        if item["id"] == object_id:
            return index
    raise StripeApiError(
        404, f"No such object: '{object_id}'", param=param, code="resource_missing"
    )


# --- resource builders --------------------------------------------------------------------------


def _address(country: str | None = None) -> JSON:
    return {
        "city": None,
        "country": country,
        "line1": None,
        "line2": None,
        "postal_code": None,
        "state": None,
    }


def billing_details(email: str | None, name: str | None) -> JSON:
    return {
        "address": _address("CN"),
        "email": email,
        "name": name,
        "phone": None,
        "tax_id": None,
    }


def build_customer(
    *,
    email: str | None,
    name: str | None,
    phone: str | None,
    description: str | None,
    metadata: JSON,
) -> JSON:
    return {
        "id": new_id("cus", 14),
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": now(),
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": description,
        "discount": None,
        "email": email,
        "invoice_prefix": secrets.token_hex(4).upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": metadata,
        "name": name,
        "next_invoice_sequence": 1,
        "phone": phone,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


@dataclass(frozen=True)
class IntentRequest:
    """What a PaymentIntent is created from."""

    amount: int
    currency: str
    customer: str | None
    description: str | None
    metadata: JSON
    method_types: list[str]
    method_options: JSON
    receipt_email: str | None = None


def build_payment_intent(spec: IntentRequest) -> JSON:
    intent_id = new_id("pi")
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": spec.amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{intent_id}_secret_{random_token(25)}",
        "confirmation_method": "automatic",
        "created": now(),
        "currency": spec.currency,
        "customer": spec.customer,
        "customer_account": None,
        "description": spec.description,
        "excluded_payment_method_types": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "managed_payments": None,
        "metadata": dict(spec.metadata),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": copy.deepcopy(spec.method_options),
        "payment_method_types": list(spec.method_types),
        "processing": None,
        "receipt_email": spec.receipt_email,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }


def _card_details(amount: int) -> JSON:
    return {
        "amount_authorized": amount,
        "authorization_code": random_digits(6),
        "brand": "visa",
        "checks": {
            "address_line1_check": None,
            "address_postal_code_check": None,
            "cvc_check": "pass",
        },
        "country": "US",
        "exp_month": 12,
        "exp_year": time.gmtime().tm_year + 3,
        "extended_authorization": {"status": "disabled"},
        "fingerprint": CARD_FINGERPRINT,
        "funding": "credit",
        "incremental_authorization": {"status": "unavailable"},
        "installments": None,
        "last4": "4242",
        "mandate": None,
        "multicapture": {"status": "unavailable"},
        "network": "visa",
        "network_token": {"used": False},
        "network_transaction_id": random_digits(15),
        "overcapture": {"maximum_amount_capturable": amount, "status": "unavailable"},
        "regulated_status": "unregulated",
        "three_d_secure": None,
        "transaction_link_id": None,
        "wallet": None,
    }


def _wallet_details(_amount: int) -> JSON:
    return {
        "fingerprint": CARD_FINGERPRINT,
        "location": None,
        "reader": None,
        "transaction_id": random_digits(28),
    }


def _alipay_details(_amount: int) -> JSON:
    return {
        "buyer_id": random_digits(16),
        "fingerprint": CARD_FINGERPRINT,
        "transaction_id": random_digits(28),
    }


METHOD_DETAILS: dict[str, Callable[[int], JSON]] = {
    "card": _card_details,
    "wechat_pay": _wallet_details,
    "alipay": _alipay_details,
}


def _outcome(succeeded: bool) -> JSON:
    return {
        "advice_code": None,
        "network_advice_code": None,
        "network_decline_code": None,
        "network_status": "approved_by_network" if succeeded else "declined_by_network",
        "reason": None if succeeded else "generic_decline",
        "risk_level": "normal",
        "risk_score": 17,
        "seller_message": (
            "Payment complete."
            if succeeded
            else "The bank did not return any further details with this decline."
        ),
        "type": "authorized" if succeeded else "issuer_declined",
    }


def build_charge(
    intent: JSON, *, method_type: str, payment_method: str, billing: JSON, succeeded: bool
) -> JSON:
    charge_id = new_id("ch")
    amount = intent["amount"]
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": billing,
        "calculated_statement_descriptor": "STRIPE EMULATOR",
        "captured": succeeded,
        "created": now(),
        "currency": intent["currency"],
        "customer": intent["customer"],
        "description": intent["description"],
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None if succeeded else "card_declined",
        "failure_message": None if succeeded else DECLINE_MESSAGE,
        "fraud_details": {},
        "livemode": False,
        "metadata": dict(intent["metadata"]),
        "on_behalf_of": None,
        "outcome": _outcome(succeeded),
        "paid": succeeded,
        "payment_intent": intent["id"],
        "payment_method": payment_method,
        "payment_method_details": {
            "type": method_type,
            method_type: METHOD_DETAILS[method_type](amount),
        },
        "receipt_email": intent["receipt_email"],
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "refunds": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/charges/{charge_id}/refunds",
        },
        "review": None,
        "shipping": None,
        "source": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded" if succeeded else "failed",
        "transfer_data": None,
        "transfer_group": None,
    }


def decline_error(charge: JSON) -> JSON:
    return {
        "charge": charge["id"],
        "code": "card_declined",
        "decline_code": "generic_decline",
        "doc_url": "https://docs.stripe.com/error-codes/card-declined",
        "message": DECLINE_MESSAGE,
        "param": None,
        "payment_method_type": charge["payment_method_details"]["type"],
        "type": "card_error",
    }


def build_balance_transaction(
    *, amount: int, fee: int, currency: str, source: str, kind: str, description: str | None
) -> JSON:
    created = now()
    fee_details = [
        {
            "amount": fee,
            "application": None,
            "currency": currency,
            "description": "Stripe processing fees",
            "type": "stripe_fee",
        }
    ]
    return {
        "id": new_id("txn"),
        "object": "balance_transaction",
        "amount": amount,
        "available_on": created,
        "balance_type": "payments",
        "created": created,
        "currency": currency,
        "description": description,
        "exchange_rate": None,
        "fee": fee,
        "fee_details": fee_details if fee else [],
        "net": amount - fee,
        "reporting_category": kind,
        "source": source,
        "status": "available",
        "type": kind,
    }


def _refund_destination(method_type: str) -> JSON:
    detail: JSON = {}
    if method_type == "card":
        detail = {
            "reference": random_digits(23),
            "reference_status": "available",
            "reference_type": "acquirer_reference_number",
            "type": "refund",
        }
    return {"type": method_type, method_type: detail}


def build_refund(charge: JSON, *, amount: int, reason: str | None, metadata: JSON) -> JSON:
    return {
        "id": new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": None,
        "charge": charge["id"],
        "created": now(),
        "currency": charge["currency"],
        "customer": charge["customer"],
        "customer_account": None,
        "destination_details": _refund_destination(charge["payment_method_details"]["type"]),
        "metadata": metadata,
        "payment_intent": charge["payment_intent"],
        "payment_method": charge["payment_method"],
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }


def build_price(*, unit_amount: int, currency: str, created: int) -> JSON:
    return {
        "id": new_id("price"),
        "object": "price",
        "active": False,
        "billing_scheme": "per_unit",
        "created": created,
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": new_id("prod", 14),
        "recurring": None,
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def build_line_item(
    *, name: str, unit_amount: int, quantity: int, currency: str, created: int
) -> JSON:
    amount = unit_amount * quantity
    return {
        "id": new_id("li"),
        "object": "item",
        "adjustable_quantity": None,
        "amount_discount": 0,
        "amount_subtotal": amount,
        "amount_tax": 0,
        "amount_total": amount,
        "currency": currency,
        "description": name,
        "metadata": {},
        "price": build_price(unit_amount=unit_amount, currency=currency, created=created),
        "quantity": quantity,
    }


@dataclass(frozen=True)
class SessionRequest:
    """The validated parameters of a Checkout Session."""

    amount_total: int
    currency: str
    method_types: list[str]
    method_options: JSON
    success_url: str | None
    cancel_url: str | None
    client_reference_id: str | None
    customer: str | None
    customer_email: str | None
    expires_at: int
    locale: str | None
    metadata: JSON


def build_session(
    spec: SessionRequest, *, session_id: str, created: int, payment_intent: str, url: str
) -> JSON:
    session: JSON = {
        "id": session_id,
        "object": "checkout.session",
        "adaptive_pricing": {"enabled": False},
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": spec.amount_total,
        "amount_total": spec.amount_total,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_address_collection": None,
        "cancel_url": spec.cancel_url,
        "client_reference_id": spec.client_reference_id,
        "collected_information": None,
        "consent": None,
        "consent_collection": None,
        "created": created,
        "currency": spec.currency,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": spec.customer,
        "customer_account": None,
        "customer_creation": None if spec.customer else "if_required",
        "customer_details": None,
        "customer_email": spec.customer_email,
        "discounts": [],
        "expires_at": spec.expires_at,
        "integration_identifier": None,
        "invoice": None,
        "invoice_creation": {
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        },
        "livemode": False,
        "locale": spec.locale,
        "managed_payments": None,
        "metadata": dict(spec.metadata),
        "mode": "payment",
        "origin_context": None,
        "payment_intent": payment_intent,
        "payment_link": None,
        "payment_method_collection": "if_required",
        "payment_method_configuration_details": None,
        "payment_method_options": copy.deepcopy(spec.method_options),
        "payment_method_types": list(spec.method_types),
        "payment_status": "unpaid",
        "permissions": None,
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "open",
        "submit_type": None,
        "subscription": None,
        "success_url": spec.success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": url,
        "wallet_options": None,
    }
    # Set apart: a security linter reads the key name as a password.
    session["client_secret"] = None
    return session


def customer_details(email: str | None, name: str | None) -> JSON:
    return {
        "address": _address("CN"),
        "business_name": None,
        "email": email,
        "individual_name": None,
        "name": name,
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
    }


def build_invoice(
    *,
    customer: JSON,
    collection_method: str,
    currency: str,
    description: str | None,
    metadata: JSON,
    auto_advance: bool,
    due_date: int | None,
) -> JSON:
    invoice_id = new_id("in")
    created = now()
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "CN",
        "account_name": "Stripe Emulator",
        "account_tax_ids": None,
        "amount_due": 0,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": auto_advance,
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": created + 3600 if auto_advance else None,
        "billing_reason": "manual",
        "collection_method": collection_method,
        "created": created,
        "currency": currency,
        "custom_fields": None,
        "customer": customer["id"],
        "customer_account": None,
        "customer_address": customer["address"],
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "customer_phone": customer["phone"],
        "customer_shipping": customer["shipping"],
        "customer_tax_exempt": customer["tax_exempt"],
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": description,
        "discounts": [],
        "due_date": due_date,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": metadata,
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": None,
        "payment_intent": None,
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": created,
        "period_start": created,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": {
            "amount_tax_display": None,
            "pdf": {"page_size": "auto"},
            "template": None,
            "template_version": None,
        },
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subscription": None,
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "test_clock": None,
        "total": 0,
        "total_discount_amounts": [],
        "total_excluding_tax": 0,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
    }


@dataclass(frozen=True)
class ItemAmount:
    """The money side of an invoice item."""

    amount: int
    unit_amount_decimal: str
    quantity: int


def build_invoice_item(
    *,
    customer_id: str,
    money: ItemAmount,
    currency: str,
    description: str | None,
    metadata: JSON,
) -> JSON:
    created = now()
    return {
        "id": new_id("ii"),
        "object": "invoiceitem",
        "amount": money.amount,
        "currency": currency,
        "customer": customer_id,
        "customer_account": None,
        "date": created,
        "description": description,
        "discountable": True,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": metadata,
        "net_amount": money.amount,
        "parent": None,
        "period": {"end": created, "start": created},
        "pricing": {
            "price_details": {"price": new_id("price"), "product": new_id("prod", 14)},
            "type": "price_details",
            "unit_amount_decimal": money.unit_amount_decimal,
        },
        "proration": False,
        "quantity": money.quantity,
        "quantity_decimal": str(money.quantity),
        "tax_rates": [],
        "test_clock": None,
    }


def build_invoice_line(item: JSON, invoice_id: str) -> JSON:
    return {
        "id": new_id("il"),
        "object": "line_item",
        "amount": item["amount"],
        "currency": item["currency"],
        "description": item["description"],
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice_id,
        "livemode": False,
        "metadata": dict(item["metadata"]),
        "parent": {
            "invoice_item_details": {
                "invoice_item": item["id"],
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
            "type": "invoice_item_details",
        },
        "period": dict(item["period"]),
        "pretax_credit_amounts": [],
        "pricing": copy.deepcopy(item["pricing"]),
        "quantity": item["quantity"],
        "quantity_decimal": item["quantity_decimal"],
        "subscription": None,
        "subtotal": item["amount"],
        "taxes": [],
    }


def build_event(
    event_type: str, obj: JSON, *, api_version: str | None, pending_webhooks: int, request_ref: JSON
) -> JSON:
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": now(),
        "data": {"object": copy.deepcopy(obj)},
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": request_ref,
        "type": event_type,
    }


# --- checkout session parameters ----------------------------------------------------------------


def parse_line_items(params: Mapping[str, Any], created: int) -> list[JSON]:
    raw_items = _sequence(params, "line_items")
    if not raw_items:
        raise missing_param("line_items")
    return [_parse_line_item(raw, index, created) for index, raw in enumerate(raw_items)]


def _parse_line_item(raw: Any, index: int, created: int) -> JSON:
    label = f"line_items[{index}]"
    if not isinstance(raw, dict):
        raise StripeApiError(400, f"Invalid hash: {label}", param=label)
    if "price" in raw:
        raise StripeApiError(
            400, "The emulator keeps no prices: use price_data.", param=f"{label}[price]"
        )
    price_data = _mapping(raw, "price_data", label=f"{label}[price_data]")
    if not price_data:
        raise missing_param(f"{label}[price_data]")
    prefix = f"{label}[price_data]"
    product = _mapping(price_data, "product_data", label=f"{prefix}[product_data]")
    currency = _currency(price_data, "currency", label=f"{prefix}[currency]")
    if currency is None:
        raise missing_param(f"{prefix}[currency]")
    return build_line_item(
        name=_required_text(product, "name", label=f"{prefix}[product_data][name]"),
        unit_amount=_required_integer(
            price_data, "unit_amount", label=f"{prefix}[unit_amount]", minimum=0
        ),
        quantity=_required_integer(raw, "quantity", label=f"{label}[quantity]", minimum=1),
        currency=currency,
        created=created,
    )


def _session_currency(params: Mapping[str, Any], items: Sequence[JSON]) -> str:
    currencies = {item["currency"] for item in items}
    if len(currencies) > 1:
        raise StripeApiError(400, "All line items must use the same currency.", param="line_items")
    currency = currencies.pop()
    requested = _currency(params, "currency")
    if requested is not None and requested != currency:
        raise StripeApiError(
            400,
            f"currency {requested} does not match the line items ({currency}).",
            param="currency",
        )
    return currency


def parse_method_types(params: Mapping[str, Any]) -> list[str]:
    types = [str(value) for value in _sequence(params, "payment_method_types")] or ["card"]
    for index, method in enumerate(types):
        if method not in METHOD_OPTION_DEFAULTS:
            raise StripeApiError(
                400,
                f"Invalid payment_method_types[{index}]: must be one of "
                f"{', '.join(METHOD_OPTION_DEFAULTS)}",
                param=f"payment_method_types[{index}]",
            )
    return types


def parse_method_options(params: Mapping[str, Any], types: Sequence[str]) -> JSON:
    given = _mapping(params, "payment_method_options")
    for method in given:
        if method not in types:
            raise StripeApiError(
                400,
                f"payment_method_options[{method}] was given but {method} is not one of "
                "payment_method_types.",
                param=f"payment_method_options[{method}]",
            )
    options = {
        method: {**METHOD_OPTION_DEFAULTS[method], **_mapping(given, method)} for method in types
    }
    if "wechat_pay" in options and options["wechat_pay"]["client"] not in WECHAT_CLIENTS:
        raise StripeApiError(
            400,
            "payment_method_options[wechat_pay][client] must be one of "
            f"{', '.join(WECHAT_CLIENTS)} when wechat_pay is used.",
            param="payment_method_options[wechat_pay][client]",
        )
    return options


def parse_expires_at(params: Mapping[str, Any], created: int) -> int:
    expires_at = _integer(params, "expires_at")
    if expires_at is None:
        return created + DAY
    if not created + SESSION_MIN_LIFETIME <= expires_at <= created + DAY:
        raise StripeApiError(
            400,
            "The `expires_at` timestamp must be between 30 minutes and 24 hours after the "
            "Checkout Session is created.",
            param="expires_at",
        )
    return expires_at


def parse_session_request(
    params: Mapping[str, Any], items: Sequence[JSON], customer: str | None, created: int
) -> SessionRequest:
    customer_email = _text(params, "customer_email")
    if customer and customer_email:
        raise StripeApiError(
            400,
            "You may only specify one of these parameters: customer, customer_email.",
            param="customer_email",
            code="parameters_exclusive",
        )
    reference = _text(params, "client_reference_id")
    if reference is not None and len(reference) > CLIENT_REFERENCE_MAX:
        raise StripeApiError(400, "client_reference_id is too long", param="client_reference_id")
    method_types = parse_method_types(params)
    return SessionRequest(
        amount_total=sum(item["amount_total"] for item in items),
        currency=_session_currency(params, items),
        method_types=method_types,
        method_options=parse_method_options(params, method_types),
        success_url=_url(params, "success_url"),
        cancel_url=_url(params, "cancel_url"),
        client_reference_id=reference,
        customer=customer,
        customer_email=customer_email,
        expires_at=parse_expires_at(params, created),
        locale=_text(params, "locale"),
        metadata=_metadata(params),
    )


def parse_item_amount(params: Mapping[str, Any]) -> ItemAmount:
    quantity = _integer(params, "quantity", minimum=1)
    amount = _integer(params, "amount")
    unit_amount = _integer(params, "unit_amount", minimum=0)
    if amount is not None and unit_amount is not None:
        raise StripeApiError(
            400,
            "You may only specify one of these parameters: amount, unit_amount.",
            param="amount",
            code="parameters_exclusive",
        )
    if amount is not None:
        if quantity not in (None, 1):
            raise StripeApiError(
                400, "Use unit_amount together with quantity, not amount.", param="quantity"
            )
        return ItemAmount(amount=amount, unit_amount_decimal=str(amount), quantity=1)
    if unit_amount is None:
        raise missing_param("amount")
    count = quantity or 1
    return ItemAmount(
        amount=unit_amount * count, unit_amount_decimal=str(unit_amount), quantity=count
    )


def _check_collection_terms(method: str, days: int | None, due_date: int | None) -> None:
    if method == "send_invoice" and days is None and due_date is None:
        raise missing_param("days_until_due")
    if method != "send_invoice" and (days is not None or due_date is not None):
        raise StripeApiError(
            400,
            "days_until_due and due_date can only be set when collection_method is send_invoice.",
            param="days_until_due",
        )


def success_redirect(session: JSON) -> str | None:
    url = session["success_url"]
    return url.replace("{CHECKOUT_SESSION_ID}", session["id"]) if url else None


# --- HTTP helpers -------------------------------------------------------------------------------


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, indent=2), status=status, mimetype="application/json")


def error_response(exc: StripeApiError) -> Response:
    return json_response(exc.body(), exc.status)


def request_pairs() -> list[tuple[str, str]]:
    pairs = parse_qsl(request.query_string.decode("utf-8"), keep_blank_values=True)
    if request.method == "POST":
        pairs += parse_qsl(request.get_data(as_text=True), keep_blank_values=True)
    return pairs


def presented_key() -> str | None:
    """The API key of the request, from Bearer or Basic authorization."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def redact_key(key: str) -> str:
    return f"{key[:8]}{'*' * max(len(key) - 12, 0)}{key[-4:]}"


def request_ref() -> JSON:
    return {"id": g.get("request_id"), "idempotency_key": g.get("idempotency_key")}


def control_int(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StripeApiError(400, f"{name} must be a non-negative integer", param=name)
    return value


def control_seconds(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise StripeApiError(400, f"{name} must be a non-negative number of seconds", param=name)
    return float(value)


def control_text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise StripeApiError(400, f"{name} must be a string", param=name)
    return value


# --- hosted pages -------------------------------------------------------------------------------


def render_page(title: str, body: str, status: int = 200) -> Response:
    document = (
        '<!doctype html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>"
        '<p class="note">Stripe emulator · test mode · no real money moves</p>'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(document, status=status, mimetype="text/html")


def _link(url: str | None, label: str) -> str:
    if not url:
        return ""
    return f'<p><a href="{html.escape(url)}">{html.escape(label)}</a></p>'


def _post_form(action: str, label: str, fields: str = "") -> str:
    return (
        f'<form method="post" action="{html.escape(action)}">{fields}'
        f'<button type="submit">{html.escape(label)}</button></form>'
    )


def _method_fields(types: Sequence[str]) -> str:
    if len(types) == 1:
        return f'<input type="hidden" name="payment_method_type" value="{html.escape(types[0])}">'
    choices = "".join(
        f'<label><input type="radio" name="payment_method_type" value="{html.escape(method)}"'
        f"{' checked' if index == 0 else ''}> {html.escape(method)}</label> "
        for index, method in enumerate(types)
    )
    return f"<p>{choices}</p>"


def _amount_table(rows: Iterable[tuple[str, int, int, int]]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{quantity}</td>"
        f"<td>{format_amount(unit)} 元</td><td>{format_amount(amount)} 元</td></tr>"
        for name, quantity, unit, amount in rows
    )
    return (
        "<table><thead><tr><th>Item</th><th>Qty</th><th>Unit price</th><th>Amount</th></tr>"
        f"</thead><tbody>{body}</tbody></table>"
    )


def _total_line(label: str, amount: int) -> str:
    return f'<p class="total">{label}: <strong>{format_amount(amount)} 元</strong></p>'


def checkout_page_body(session: JSON, items: Sequence[JSON]) -> str:
    table = _amount_table(
        (item["description"], item["quantity"], item["price"]["unit_amount"], item["amount_total"])
        for item in items
    )
    return table + _total_line("Total", session["amount_total"]) + _checkout_actions(session)


def _checkout_actions(session: JSON) -> str:
    if session["status"] == "complete":
        return "<p>This checkout is complete: the payment has been received.</p>" + _link(
            success_redirect(session), "Return to the shop"
        )
    if session["status"] == "expired":
        return "<p>This checkout session has expired and can no longer be paid.</p>" + _link(
            session["cancel_url"], "Return to the shop"
        )
    base = f"/checkout/{quote(session['id'])}"
    types = session["payment_method_types"]
    return (
        _post_form(f"{base}/pay", "Pay", _method_fields(types))
        + _post_form(f"{base}/decline", "Decline", _method_fields(types[:1]))
        + _link(session["cancel_url"], "Cancel and return to the shop")
    )


def invoice_page_body(invoice: JSON) -> str:
    lines = invoice["lines"]["data"]
    table = _amount_table(
        (
            line["description"] or "Invoice item",
            line["quantity"],
            int(Decimal(line["pricing"]["unit_amount_decimal"])),
            line["amount"],
        )
        for line in lines
    )
    due = invoice["due_date"]
    summary = (
        f"<p>Invoice <strong>{html.escape(invoice['number'] or '')}</strong>"
        f" · status {html.escape(invoice['status'])}"
        + (f" · due {time.strftime('%Y-%m-%d', time.gmtime(due))}" if due else "")
        + "</p>"
    )
    amount = _total_line("Amount due", invoice["amount_remaining"])
    return summary + table + amount + _invoice_actions(invoice)


def _invoice_actions(invoice: JSON) -> str:
    if invoice["status"] == "open":
        return _post_form(f"/invoice/{quote(invoice['id'])}/pay", "Pay")
    if invoice["status"] == "paid":
        return "<p>This invoice has been paid. Thank you.</p>"
    return "<p>This invoice has been voided and can no longer be paid.</p>"


# --- webhook delivery ---------------------------------------------------------------------------


@dataclass
class Delivery:
    """One webhook delivery of one event, and how it went."""

    event_id: str
    event_type: str
    payload: str
    status: str = "pending"
    attempts: int = 0
    response_status: int | None = None
    error: str | None = None

    def as_json(self) -> JSON:
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "attempts": self.attempts,
            "status": self.status,
            "response_status": self.response_status,
            "error": self.error,
        }


class WebhookDispatcher:
    """Delivers events one at a time in creation order, retrying failures with backoff."""

    def __init__(
        self,
        *,
        secret: str,
        url: str | None,
        retry_delays: Sequence[float],
        on_delivered: Callable[[str], None],
    ) -> None:
        self._secret = secret
        self._url = url
        self._retry_delays = tuple(retry_delays)
        self._on_delivered = on_delivered
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._log: list[Delivery] = []
        self._pending = 0
        self._drop_next = 0
        self._worker: threading.Thread | None = None

    @property
    def url(self) -> str | None:
        with self._cond:
            return self._url

    def set_url(self, url: str | None) -> None:
        with self._cond:
            self._url = url

    def set_drop_next(self, count: int) -> None:
        with self._cond:
            self._drop_next = count

    def settings(self) -> JSON:
        with self._cond:
            return {"url": self._url, "drop_next": self._drop_next}

    def submit(self, event_id: str, event_type: str, payload: str, *, droppable: bool) -> None:
        delivery = Delivery(event_id, event_type, payload)
        with self._cond:
            self._log.append(delivery)
            if droppable and self._drop_next > 0:
                self._drop_next -= 1
                delivery.status = "dropped"
                return
            self._pending += 1
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="stripe-emulator-webhooks", daemon=True
                )
                self._worker.start()
            self._queue.put(delivery)

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def pending(self) -> int:
        with self._cond:
            return self._pending

    def log(self) -> list[JSON]:
        with self._cond:
            return [delivery.as_json() for delivery in self._log]

    def _run(self) -> None:
        while True:
            delivery = self._queue.get()
            if self._deliver(delivery):
                self._on_delivered(delivery.event_id)
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _deliver(self, delivery: Delivery) -> bool:
        for delay in (0.0, *self._retry_delays):
            time.sleep(delay)
            url = self.url
            if url is None:
                self._finish(delivery, "no_endpoint")
                return False
            if self._attempt(delivery, url):
                self._finish(delivery, "delivered")
                return True
        self._finish(delivery, "failed")
        return False

    def _attempt(self, delivery: Delivery, url: str) -> bool:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign_payload(delivery.payload, self._secret),
        }
        with self._cond:
            delivery.attempts += 1
        try:
            response = requests.post(
                url,
                data=delivery.payload.encode("utf-8"),
                headers=headers,
                timeout=WEBHOOK_TIMEOUT_SECONDS,
            )
        except requests.RequestException as exc:
            with self._cond:
                delivery.error = str(exc)
            return False
        with self._cond:
            delivery.response_status = response.status_code
            delivery.error = None
        return 200 <= response.status_code < 300

    def _finish(self, delivery: Delivery, status: str) -> None:
        with self._cond:
            delivery.status = status


# --- the emulator -------------------------------------------------------------------------------


@dataclass
class FailurePlan:
    """Injected failures for the next /v1 requests."""

    mode: str = "none"
    remaining: int = 0
    delay: float = 0.0

    def take(self) -> tuple[str, float]:
        if self.mode == "none" or self.remaining <= 0:
            return "none", 0.0
        self.remaining -= 1
        taken = (self.mode, self.delay)
        if self.remaining == 0:
            self.mode = "none"
        return taken

    def as_json(self) -> JSON:
        return {"mode": self.mode, "count": self.remaining, "delay": self.delay}


@dataclass(frozen=True)
class StoredResponse:
    """A successful POST answer kept for its idempotency key."""

    endpoint: str
    fingerprint: tuple[tuple[str, str], ...]
    body: str
    request_id: str


class StripeEmulator:
    """All emulator state and behaviour; every mutation happens under `lock`."""

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str,
        webhook_url: str | None,
        public_url: str | None,
        retry_delays: Sequence[float],
        api_version: str | None,
    ) -> None:
        self.api_key = api_key
        self.public_url = public_url.rstrip("/") + "/" if public_url else None
        self.api_version = api_version
        self.lock = threading.RLock()
        self._objects: dict[str, JSON] = {}
        self._order: dict[str, list[str]] = {}
        self._line_items: dict[str, list[JSON]] = {}
        self._due_terms: dict[str, int] = {}
        self._payloads: dict[str, str] = {}
        self._idempotency: dict[str, StoredResponse] = {}
        self._failures = FailurePlan()
        self.webhooks = WebhookDispatcher(
            secret=webhook_secret,
            url=webhook_url,
            retry_delays=retry_delays,
            on_delivered=self._mark_delivered,
        )

    # storage

    def _store(self, obj: JSON) -> JSON:
        self._objects[obj["id"]] = obj
        self._order.setdefault(obj["object"], []).append(obj["id"])
        return obj

    def find(self, kind: str, object_id: str) -> JSON | None:
        obj = self._objects.get(object_id)
        return obj if obj is not None and obj["object"] == kind else None

    def retrieve(self, kind: str, object_id: str, param: str = "id") -> JSON:
        obj = self.find(kind, object_id)
        if obj is None:
            raise missing_resource(kind, object_id, param)
        return obj

    def line_items(self, session_id: str) -> list[JSON]:
        return self._line_items.get(session_id, [])

    def _newest_first(self, kind: str) -> list[JSON]:
        return [self._objects[object_id] for object_id in reversed(self._order.get(kind, []))]

    def _base_url(self) -> str:
        return self.public_url or request.host_url

    # events

    def _emit(self, event_type: str, obj: JSON) -> None:
        event = self._store(
            build_event(
                event_type,
                obj,
                api_version=self.api_version,
                pending_webhooks=1 if self.webhooks.url else 0,
                request_ref=request_ref(),
            )
        )
        payload = json.dumps(event, indent=2)
        self._payloads[event["id"]] = payload
        self.webhooks.submit(event["id"], event_type, payload, droppable=True)

    def _mark_delivered(self, event_id: str) -> None:
        with self.lock:
            event = self._objects.get(event_id)
            if event is not None:
                event["pending_webhooks"] = 0

    # generic reads

    def list_objects(
        self, kind: str, params: Mapping[str, Any], url: str, fixed: Mapping[str, str] | None = None
    ) -> JSON:
        matches = _list_filter(kind, params, fixed or {})
        return paginate([obj for obj in self._newest_first(kind) if matches(obj)], params, url)

    def _expand(self, obj: JSON, paths: Sequence[str]) -> JSON:
        for path in paths:
            self._expand_path(obj, path.split("."), path)
        return obj

    def _expand_path(self, node: Any, parts: list[str], path: str) -> None:
        if not parts or not isinstance(node, dict):
            return
        head, rest = parts[0], parts[1:]
        if head == "data" and node.get("object") == "list":
            for item in node["data"]:
                self._expand_path(item, rest, path)
            return
        if head == "line_items" and node.get("object") == "checkout.session":
            url = f"/v1/checkout/sessions/{node['id']}/line_items"
            node[head] = paginate(self.line_items(node["id"]), {}, url)
        if head not in node:
            raise StripeApiError(400, f"This property cannot be expanded ({path}).", param="expand")
        if isinstance(node[head], str):
            target = self._objects.get(node[head])
            if target is None:
                raise StripeApiError(
                    400, f"This property cannot be expanded ({path}).", param="expand"
                )
            node[head] = copy.deepcopy(target)
        self._expand_path(node[head], rest, path)

    # customers

    def create_customer(self, params: JSON) -> JSON:
        customer = self._store(
            build_customer(
                email=_text(params, "email"),
                name=_text(params, "name"),
                phone=_text(params, "phone"),
                description=_text(params, "description"),
                metadata=_metadata(params),
            )
        )
        self._emit("customer.created", customer)
        return customer

    # payment intents and charges

    def _create_intent(self, spec: IntentRequest) -> JSON:
        intent = self._store(build_payment_intent(spec))
        self._emit("payment_intent.created", intent)
        return intent

    def _succeed_payment(self, intent: JSON, method_type: str, billing: JSON) -> JSON:
        payment_method = new_id("pm")
        charge = build_charge(
            intent,
            method_type=method_type,
            payment_method=payment_method,
            billing=billing,
            succeeded=True,
        )
        transaction = self._store(
            build_balance_transaction(
                amount=charge["amount"],
                fee=processing_fee(charge["amount"]),
                currency=charge["currency"],
                source=charge["id"],
                kind="charge",
                description=charge["description"],
            )
        )
        charge["balance_transaction"] = transaction["id"]
        self._store(charge)
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            latest_charge=charge["id"],
            payment_method=payment_method,
            last_payment_error=None,
        )
        self._emit("charge.succeeded", charge)
        self._emit("payment_intent.succeeded", intent)
        return charge

    def _decline_payment(self, intent: JSON, method_type: str, billing: JSON) -> JSON:
        charge = self._store(
            build_charge(
                intent,
                method_type=method_type,
                payment_method=new_id("pm"),
                billing=billing,
                succeeded=False,
            )
        )
        intent.update(
            status="requires_payment_method",
            latest_charge=charge["id"],
            payment_method=None,
            last_payment_error=decline_error(charge),
        )
        self._emit("charge.failed", charge)
        self._emit("payment_intent.payment_failed", intent)
        return intent

    def _cancel_intent(self, intent: JSON, reason: str | None) -> None:
        if intent["status"] in ("succeeded", "canceled"):
            return
        intent.update(status="canceled", canceled_at=now(), cancellation_reason=reason)
        self._emit("payment_intent.canceled", intent)

    def set_recorded_amount(self, intent: JSON, amount: int) -> JSON:
        """Silently change what a succeeded payment is recorded at, charge and balance included."""
        if intent["status"] != "succeeded":
            raise StripeApiError(400, "Only a succeeded PaymentIntent can have its amount altered.")
        intent.update(amount=amount, amount_received=amount)
        charge = self.retrieve("charge", intent["latest_charge"])
        charge.update(amount=amount, amount_captured=amount)
        transaction = self.retrieve("balance_transaction", charge["balance_transaction"])
        fee = processing_fee(amount)
        transaction.update(amount=amount, fee=fee, net=amount - fee)
        for detail in transaction["fee_details"]:
            detail["amount"] = fee
        return {"payment_intent": intent, "charge": charge, "balance_transaction": transaction}

    # checkout sessions

    def create_session(self, params: JSON) -> JSON:
        created = now()
        items = parse_line_items(params, created)
        customer = _text(params, "customer")
        if customer is not None:
            self.retrieve("customer", customer, "customer")
        spec = parse_session_request(params, items, customer, created)
        intent_data = _mapping(params, "payment_intent_data")
        intent = self._create_intent(
            IntentRequest(
                amount=spec.amount_total,
                currency=spec.currency,
                customer=customer,
                description=_text(intent_data, "description"),
                metadata=_metadata(intent_data, label="payment_intent_data[metadata]"),
                method_types=spec.method_types,
                method_options=spec.method_options,
            )
        )
        session_id = new_id("cs_test", 58)
        self._line_items[session_id] = items
        return self._store(
            build_session(
                spec,
                session_id=session_id,
                created=created,
                payment_intent=intent["id"],
                url=f"{self._base_url()}checkout/{session_id}",
            )
        )

    def expire_session(self, session: JSON) -> JSON:
        if session["status"] != "open":
            raise StripeApiError(
                400,
                "Only Checkout Sessions with a status of open can be expired; this one is "
                f"{session['status']}.",
            )
        session.update(status="expired", url=None)
        self._emit("checkout.session.expired", session)
        self._cancel_intent(self.retrieve("payment_intent", session["payment_intent"]), "abandoned")
        return session

    def expire_due_sessions(self) -> None:
        moment = now()
        for session in self._newest_first("checkout.session"):
            if session["status"] == "open" and session["expires_at"] <= moment:
                self.expire_session(session)

    def _open_session_intent(self, session: JSON) -> JSON:
        if session["status"] != "open":
            raise StripeApiError(
                400, f"This checkout session is {session['status']} and can no longer be paid."
            )
        return self.retrieve("payment_intent", session["payment_intent"])

    def _session_method(self, session: JSON, method_type: str | None) -> str:
        types: list[str] = session["payment_method_types"]
        if method_type is None:
            return types[0]
        if method_type not in types:
            raise StripeApiError(
                400,
                f"{method_type} is not one of this session's payment_method_types.",
                param="payment_method_type",
            )
        return method_type

    def _buyer_email(self, session: JSON) -> str:
        customer = self.find("customer", session["customer"] or "")
        return session["customer_email"] or (customer or {}).get("email") or TEST_BUYER_EMAIL

    def pay_session(self, session: JSON, method_type: str | None) -> JSON:
        intent = self._open_session_intent(session)
        email = self._buyer_email(session)
        charge = self._succeed_payment(
            intent,
            self._session_method(session, method_type),
            billing_details(email, TEST_BUYER_NAME),
        )
        session.update(
            status="complete",
            payment_status="paid",
            url=None,
            customer_details=customer_details(email, TEST_BUYER_NAME),
        )
        self._emit("checkout.session.completed", session)
        return charge

    def decline_session(self, session: JSON, method_type: str | None) -> JSON:
        intent = self._open_session_intent(session)
        return self._decline_payment(
            intent,
            self._session_method(session, method_type),
            billing_details(self._buyer_email(session), TEST_BUYER_NAME),
        )

    # refunds

    def create_refund(self, params: JSON) -> JSON:
        charge = self._charge_to_refund(params)
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeApiError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        requested = _integer(params, "amount", minimum=1)
        amount = remaining if requested is None else requested
        if amount > remaining:
            raise StripeApiError(
                400,
                f"Refund amount ({format_amount(amount)} {charge['currency'].upper()}) is greater "
                f"than unrefunded amount on charge ({format_amount(remaining)} "
                f"{charge['currency'].upper()})",
                param="amount",
                code="amount_too_large",
            )
        refund = build_refund(
            charge,
            amount=amount,
            reason=_choice(params, "reason", REFUND_REASONS),
            metadata=_metadata(params),
        )
        self._settle_refund(charge, refund)
        return refund

    def _charge_to_refund(self, params: JSON) -> JSON:
        charge_id = _text(params, "charge")
        intent_id = _text(params, "payment_intent")
        if charge_id is None and intent_id is None:
            raise StripeApiError(
                400,
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        if charge_id is None:
            return self._charge_of_intent(str(intent_id))
        charge = self.retrieve("charge", charge_id, "charge")
        if intent_id is not None and charge["payment_intent"] != intent_id:
            raise StripeApiError(
                400, f"Charge {charge_id} does not belong to {intent_id}.", param="charge"
            )
        if charge["status"] != "succeeded":
            raise StripeApiError(
                400, f"Charge {charge_id} did not succeed and cannot be refunded.", param="charge"
            )
        return charge

    def _charge_of_intent(self, intent_id: str) -> JSON:
        intent = self.retrieve("payment_intent", intent_id, "payment_intent")
        if intent["status"] != "succeeded" or intent["latest_charge"] is None:
            raise StripeApiError(
                400,
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                param="payment_intent",
            )
        return self.retrieve("charge", intent["latest_charge"])

    def _settle_refund(self, charge: JSON, refund: JSON) -> None:
        transaction = self._store(
            build_balance_transaction(
                amount=-refund["amount"],
                fee=0,
                currency=refund["currency"],
                source=refund["id"],
                kind="refund",
                description=f"REFUND FOR CHARGE ({charge['description'] or charge['id']})",
            )
        )
        refund["balance_transaction"] = transaction["id"]
        self._store(refund)
        charge["amount_refunded"] += refund["amount"]
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        charge["refunds"]["data"].insert(0, copy.deepcopy(refund))
        self._emit("refund.created", refund)
        self._emit("charge.refunded", charge)

    # invoices

    def create_invoice(self, params: JSON) -> JSON:
        customer = self.retrieve("customer", _required_text(params, "customer"), "customer")
        method = _choice(params, "collection_method", COLLECTION_METHODS) or COLLECTION_METHODS[0]
        days = _integer(params, "days_until_due", minimum=0)
        due_date = _integer(params, "due_date")
        _check_collection_terms(method, days, due_date)
        invoice = self._store(
            build_invoice(
                customer=customer,
                collection_method=method,
                currency=_currency(params, "currency") or customer["currency"] or DEFAULT_CURRENCY,
                description=_text(params, "description"),
                metadata=_metadata(params),
                auto_advance=_flag(params, "auto_advance", False),
                due_date=due_date,
            )
        )
        if days is not None:
            self._due_terms[invoice["id"]] = days
        if _choice(params, "pending_invoice_items_behavior", ("exclude", "include")) == "include":
            self._attach_pending_items(invoice)
        self._emit("invoice.created", invoice)
        return invoice

    def _attach_pending_items(self, invoice: JSON) -> None:
        for item in reversed(self._newest_first("invoiceitem")):
            if (
                item["invoice"] is None
                and item["customer"] == invoice["customer"]
                and item["currency"] == invoice["currency"]
            ):
                self._attach_item(invoice, item)

    def create_invoice_item(self, params: JSON) -> JSON:
        customer = self.retrieve("customer", _required_text(params, "customer"), "customer")
        invoice = self._draft_for_item(params, customer)
        fallback = invoice["currency"] if invoice else customer["currency"] or DEFAULT_CURRENCY
        currency = _currency(params, "currency") or fallback
        if invoice is not None and currency != invoice["currency"]:
            raise StripeApiError(
                400, "The invoice item currency must match the invoice currency.", param="currency"
            )
        item = self._store(
            build_invoice_item(
                customer_id=customer["id"],
                money=parse_item_amount(params),
                currency=currency,
                description=_text(params, "description"),
                metadata=_metadata(params),
            )
        )
        if invoice is not None:
            self._attach_item(invoice, item)
        self._emit("invoiceitem.created", item)
        return item

    def _draft_for_item(self, params: JSON, customer: JSON) -> JSON | None:
        invoice_id = _text(params, "invoice")
        if invoice_id is None:
            return None
        invoice = self.retrieve("invoice", invoice_id, "invoice")
        if invoice["status"] != "draft":
            raise StripeApiError(
                400,
                f"Invoice {invoice_id} is no longer a draft, so items cannot be added to it.",
                param="invoice",
                code="invoice_not_editable",
            )
        if invoice["customer"] != customer["id"]:
            raise StripeApiError(
                400, "The invoice belongs to a different customer.", param="invoice"
            )
        return invoice

    def _attach_item(self, invoice: JSON, item: JSON) -> None:
        item["invoice"] = invoice["id"]
        invoice["lines"]["data"].append(build_invoice_line(item, invoice["id"]))
        total = sum(line["amount"] for line in invoice["lines"]["data"])
        due = max(total, 0)
        invoice.update(
            subtotal=total,
            subtotal_excluding_tax=total,
            total=total,
            total_excluding_tax=total,
            amount_due=due,
            amount_remaining=due - invoice["amount_paid"],
        )

    def finalize_invoice(self, invoice: JSON) -> JSON:
        if invoice["status"] != "draft":
            raise StripeApiError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
            )
        finalized_at = now()
        invoice.update(
            status="open",
            number=self._next_invoice_number(invoice["customer"]),
            effective_at=finalized_at,
            ending_balance=0,
            automatically_finalizes_at=None,
            hosted_invoice_url=f"{self._base_url()}invoice/{invoice['id']}",
            due_date=self._due_date(invoice, finalized_at),
        )
        invoice["status_transitions"]["finalized_at"] = finalized_at
        if invoice["amount_due"] > 0:
            invoice["payment_intent"] = self._invoice_intent(invoice)["id"]
        self._emit("invoice.finalized", invoice)
        if invoice["amount_due"] == 0:
            self._mark_invoice_paid(invoice, charged=False)
        return invoice

    def _next_invoice_number(self, customer_id: str) -> str:
        customer = self.retrieve("customer", customer_id)
        if customer["currency"] is None:
            customer["currency"] = DEFAULT_CURRENCY
        number = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
        customer["next_invoice_sequence"] += 1
        return number

    def _due_date(self, invoice: JSON, finalized_at: int) -> int | None:
        if invoice["collection_method"] != "send_invoice":
            return None
        if invoice["due_date"] is not None:
            return int(invoice["due_date"])
        return finalized_at + self._due_terms.get(invoice["id"], 0) * DAY

    def _invoice_intent(self, invoice: JSON) -> JSON:
        return self._create_intent(
            IntentRequest(
                amount=invoice["amount_due"],
                currency=invoice["currency"],
                customer=invoice["customer"],
                description=f"Invoice {invoice['number']}",
                metadata={},
                method_types=["card"],
                method_options={"card": dict(METHOD_OPTION_DEFAULTS["card"])},
                receipt_email=invoice["customer_email"],
            )
        )

    def send_invoice(self, invoice: JSON) -> JSON:
        if invoice["collection_method"] != "send_invoice":
            raise StripeApiError(
                400,
                "You can only manually send an invoice if its collection method is 'send_invoice'.",
            )
        if invoice["status"] == "draft":
            self.finalize_invoice(invoice)
        if invoice["status"] != "open":
            raise StripeApiError(
                400, f"You can only send open invoices; this one is {invoice['status']}."
            )
        self._emit("invoice.sent", invoice)
        return invoice

    def pay_invoice(self, invoice: JSON, *, out_of_band: bool) -> JSON:
        if invoice["status"] == "draft":
            self.finalize_invoice(invoice)
        if invoice["status"] != "open":
            raise StripeApiError(
                400, f"You can only pay open invoices; this one is {invoice['status']}."
            )
        intent = self.retrieve("payment_intent", invoice["payment_intent"])
        if out_of_band:
            self._cancel_intent(intent, None)
        else:
            billing = billing_details(
                invoice["customer_email"], invoice["customer_name"] or TEST_BUYER_NAME
            )
            self._succeed_payment(intent, "card", billing)
        self._mark_invoice_paid(invoice, charged=not out_of_band)
        return invoice

    def _mark_invoice_paid(self, invoice: JSON, *, charged: bool) -> None:
        invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0)
        invoice["status_transitions"]["paid_at"] = now()
        if charged:
            invoice.update(attempted=True, attempt_count=invoice["attempt_count"] + 1)
        self._emit("invoice.paid", invoice)
        # Stripe reports payment_succeeded only for real payment attempts, not out of band.
        if charged:
            self._emit("invoice.payment_succeeded", invoice)

    def void_invoice(self, invoice: JSON) -> JSON:
        if invoice["status"] != "open":
            raise StripeApiError(
                400, "You can only pass in open invoices. This invoice isn't open."
            )
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = now()
        if invoice["payment_intent"]:
            self._cancel_intent(
                self.retrieve("payment_intent", invoice["payment_intent"]), "void_invoice"
            )
        self._emit("invoice.voided", invoice)
        return invoice

    # API plumbing

    def handle_api(self, handler: ApiHandler, path_args: Mapping[str, str]) -> Response:
        pairs = request_pairs()
        try:
            params = parse_form(pairs)
            expand = [str(path) for path in _sequence(params, "expand")]
            with self.lock:
                return self._run_once(handler, params, path_args, expand, tuple(sorted(pairs)))
        except StripeApiError as exc:
            return error_response(exc)

    def _run_once(
        self,
        handler: ApiHandler,
        params: JSON,
        path_args: Mapping[str, str],
        expand: Sequence[str],
        fingerprint: tuple[tuple[str, str], ...],
    ) -> Response:
        key = g.get("idempotency_key")
        endpoint = f"{request.method} {request.path}"
        if key:
            replay = self._replay(key, endpoint, fingerprint)
            if replay is not None:
                return replay
        result = self._expand(copy.deepcopy(handler(params, **path_args)), expand)
        body = json.dumps(result, indent=2)
        if key:
            self._idempotency[key] = StoredResponse(endpoint, fingerprint, body, g.request_id)
        return Response(body, status=200, mimetype="application/json")

    def _replay(
        self, key: str, endpoint: str, fingerprint: tuple[tuple[str, str], ...]
    ) -> Response | None:
        stored = self._idempotency.get(key)
        if stored is None:
            return None
        if stored.endpoint != endpoint:
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{stored.endpoint}' vs '{endpoint}'). Try using a key other "
                f"than '{key}' if you meant to execute a different request.",
                error_type="idempotency_error",
            )
        if stored.fingerprint != fingerprint:
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                error_type="idempotency_error",
            )
        response = Response(stored.body, status=200, mimetype="application/json")
        response.headers["Idempotent-Replayed"] = "true"
        response.headers["Original-Request"] = stored.request_id
        return response

    def before_request(self) -> Response | None:
        # Sweep first, so automatic expiries are not attributed to the request at hand.
        with self.lock:
            self.expire_due_sessions()
        if request.path.startswith("/v1/"):
            return self._admit_api_request()
        return None

    def _admit_api_request(self) -> Response | None:
        g.request_id = new_id("req", 14)
        if request.method == "POST":
            g.idempotency_key = request.headers.get("Idempotency-Key") or None
        with self.lock:
            mode, delay = self._failures.take()
        if mode == "error":
            return error_response(
                StripeApiError(
                    500,
                    "An unknown error occurred (injected by the emulator).",
                    error_type="api_error",
                )
            )
        if mode == "timeout":
            time.sleep(delay)
        rejection = self._check_auth()
        if rejection is None:
            with self.lock:
                self.api_version = self.api_version or request.headers.get("Stripe-Version")
        return rejection

    def _check_auth(self) -> Response | None:
        key = presented_key()
        if key is None:
            return error_response(
                StripeApiError(
                    401,
                    "You did not provide an API key. You need to provide your API key in the "
                    "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                    "YOUR_SECRET_KEY').",
                )
            )
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return error_response(
                StripeApiError(401, f"Invalid API Key provided: {redact_key(key)}")
            )
        return None

    def after_request(self, response: Response) -> Response:
        if request.path.startswith("/v1/"):
            response.headers["Request-Id"] = g.get("request_id", "")
            version = request.headers.get("Stripe-Version") or self.api_version
            if version:
                response.headers["Stripe-Version"] = version
        return response

    def set_failures(self, plan: FailurePlan) -> None:
        with self.lock:
            self._failures = plan

    def event_payload(self, event_id: str) -> tuple[JSON, str]:
        event = self.retrieve("event", event_id)
        return event, self._payloads[event_id]

    def object_count(self) -> int:
        return len(self._objects)


# --- routes -------------------------------------------------------------------------------------


def _api_view(emulator: StripeEmulator, handler: ApiHandler) -> Callable[..., Response]:
    def view(**path_args: str) -> Response:
        return emulator.handle_api(handler, path_args)

    return view


def _control_view(handler: ControlHandler) -> Callable[..., Response]:
    def view(**path_args: str) -> Response:
        body = request.get_json(silent=True)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return error_response(StripeApiError(400, "Expected a JSON object body."))
        try:
            return json_response(handler(body, **path_args))
        except StripeApiError as exc:
            return error_response(exc)

    return view


def _retriever(emulator: StripeEmulator, kind: str) -> ApiHandler:
    return lambda _params, object_id: emulator.retrieve(kind, object_id)


def _lister(emulator: StripeEmulator, kind: str, url: str) -> ApiHandler:
    return lambda params: emulator.list_objects(kind, params, url)


class RestApi:
    """The /v1 endpoints: each handler takes the parsed form params and the path's object id."""

    def __init__(self, emulator: StripeEmulator) -> None:
        self.emulator = emulator

    def register(self, app: Flask) -> None:
        for method, rule, handler in self.routes():
            app.add_url_rule(
                rule, f"api {method} {rule}", _api_view(self.emulator, handler), methods=[method]
            )

    def routes(self) -> list[tuple[str, str, ApiHandler]]:
        emu = self.emulator
        reads: list[tuple[str, str, ApiHandler]] = []
        for path, kind in COLLECTIONS.items():
            reads.append(("GET", f"/v1/{path}", _lister(emu, kind, f"/v1/{path}")))
            reads.append(("GET", f"/v1/{path}/<object_id>", _retriever(emu, kind)))
        return [
            *reads,
            ("POST", "/v1/customers", emu.create_customer),
            ("POST", "/v1/checkout/sessions", emu.create_session),
            ("POST", "/v1/checkout/sessions/<object_id>/expire", self.expire_session),
            ("GET", "/v1/checkout/sessions/<object_id>/line_items", self.session_line_items),
            ("POST", "/v1/refunds", emu.create_refund),
            ("GET", "/v1/charges/<object_id>/refunds", self.charge_refunds),
            ("POST", "/v1/invoices", emu.create_invoice),
            ("POST", "/v1/invoiceitems", emu.create_invoice_item),
            ("POST", "/v1/invoices/<object_id>/finalize", self.finalize_invoice),
            ("POST", "/v1/invoices/<object_id>/send", self.send_invoice),
            ("POST", "/v1/invoices/<object_id>/pay", self.pay_invoice),
            ("POST", "/v1/invoices/<object_id>/void", self.void_invoice),
            ("GET", "/v1/invoices/<object_id>/lines", self.invoice_lines),
        ]

    def expire_session(self, _params: JSON, object_id: str) -> JSON:
        emu = self.emulator
        return emu.expire_session(emu.retrieve("checkout.session", object_id))

    def session_line_items(self, params: JSON, object_id: str) -> JSON:
        session = self.emulator.retrieve("checkout.session", object_id)
        url = f"/v1/checkout/sessions/{session['id']}/line_items"
        return paginate(self.emulator.line_items(session["id"]), params, url)

    def charge_refunds(self, params: JSON, object_id: str) -> JSON:
        charge = self.emulator.retrieve("charge", object_id)
        url = f"/v1/charges/{charge['id']}/refunds"
        return self.emulator.list_objects("refund", params, url, {"charge": charge["id"]})

    def finalize_invoice(self, _params: JSON, object_id: str) -> JSON:
        emu = self.emulator
        return emu.finalize_invoice(emu.retrieve("invoice", object_id))

    def send_invoice(self, _params: JSON, object_id: str) -> JSON:
        emu = self.emulator
        return emu.send_invoice(emu.retrieve("invoice", object_id))

    def pay_invoice(self, params: JSON, object_id: str) -> JSON:
        emu = self.emulator
        out_of_band = _flag(params, "paid_out_of_band", False)
        return emu.pay_invoice(emu.retrieve("invoice", object_id), out_of_band=out_of_band)

    def void_invoice(self, _params: JSON, object_id: str) -> JSON:
        emu = self.emulator
        return emu.void_invoice(emu.retrieve("invoice", object_id))

    def invoice_lines(self, params: JSON, object_id: str) -> JSON:
        invoice = self.emulator.retrieve("invoice", object_id)
        return paginate(invoice["lines"]["data"], params, f"/v1/invoices/{invoice['id']}/lines")


class HostedPages:
    """The browser-facing checkout and invoice pages."""

    def __init__(self, emulator: StripeEmulator) -> None:
        self.emulator = emulator

    def register(self, app: Flask) -> None:
        app.add_url_rule("/checkout/<session_id>", "checkout_page", self.checkout, methods=["GET"])
        app.add_url_rule(
            "/checkout/<session_id>/pay", "checkout_pay", self.checkout_pay, methods=["POST"]
        )
        app.add_url_rule(
            "/checkout/<session_id>/decline",
            "checkout_decline",
            self.checkout_decline,
            methods=["POST"],
        )
        app.add_url_rule("/invoice/<invoice_id>", "invoice_page", self.invoice, methods=["GET"])
        app.add_url_rule(
            "/invoice/<invoice_id>/pay", "invoice_pay", self.invoice_pay, methods=["POST"]
        )

    def checkout(self, session_id: str) -> Response:
        emu = self.emulator
        with emu.lock:
            session = emu.find("checkout.session", session_id)
            if session is None:
                return render_page("Checkout not found", "<p>No such checkout session.</p>", 404)
            body = checkout_page_body(session, emu.line_items(session_id))
        return render_page("Test checkout", body)

    def checkout_pay(self, session_id: str) -> BaseResponse:
        emu = self.emulator
        with emu.lock:
            session = emu.find("checkout.session", session_id)
            if session is None:
                return render_page("Checkout not found", "<p>No such checkout session.</p>", 404)
            try:
                emu.pay_session(session, request.form.get("payment_method_type"))
            except StripeApiError as exc:
                return render_page(
                    "Payment not possible", f"<p>{html.escape(exc.message)}</p>", 409
                )
            target = success_redirect(session)
        if target is None:
            return render_page("Payment complete", "<p>The test payment succeeded.</p>")
        return redirect(target, code=303)

    def checkout_decline(self, session_id: str) -> Response:
        emu = self.emulator
        with emu.lock:
            session = emu.find("checkout.session", session_id)
            if session is None:
                return render_page("Checkout not found", "<p>No such checkout session.</p>", 404)
            try:
                emu.decline_session(session, request.form.get("payment_method_type"))
            except StripeApiError as exc:
                return render_page(
                    "Payment not possible", f"<p>{html.escape(exc.message)}</p>", 409
                )
            body = (
                f"<p>{DECLINE_MESSAGE} No money was taken.</p>"
                + _link(f"/checkout/{quote(session_id)}", "Try again")
                + _link(session["cancel_url"], "Return to the shop")
            )
        return render_page("Card declined", body)

    def invoice(self, invoice_id: str) -> Response:
        emu = self.emulator
        with emu.lock:
            invoice = emu.find("invoice", invoice_id)
            if invoice is None or invoice["status"] == "draft":
                return render_page("Invoice not found", "<p>No such invoice.</p>", 404)
            body = invoice_page_body(invoice)
        return render_page("Invoice", body)

    def invoice_pay(self, invoice_id: str) -> BaseResponse:
        emu = self.emulator
        with emu.lock:
            invoice = emu.find("invoice", invoice_id)
            if invoice is None or invoice["status"] == "draft":
                return render_page("Invoice not found", "<p>No such invoice.</p>", 404)
            try:
                emu.pay_invoice(invoice, out_of_band=False)
            except StripeApiError as exc:
                return render_page(
                    "Payment not possible", f"<p>{html.escape(exc.message)}</p>", 409
                )
        return redirect(f"/invoice/{quote(invoice_id)}", code=303)


class ControlApi:
    """Test and demo controls under /_emulator (no auth, JSON in and out)."""

    def __init__(self, emulator: StripeEmulator) -> None:
        self.emulator = emulator

    def register(self, app: Flask) -> None:
        routes: list[tuple[str, str, ControlHandler]] = [
            ("GET", "/_emulator/health", self.health),
            ("POST", "/_emulator/failures", self.failures),
            ("POST", "/_emulator/webhooks", self.webhooks),
            ("POST", "/_emulator/events/<object_id>/deliver", self.redeliver),
            ("POST", "/_emulator/checkout/sessions/<object_id>/pay", self.pay_session),
            ("POST", "/_emulator/checkout/sessions/<object_id>/decline", self.decline_session),
            ("POST", "/_emulator/invoices/<object_id>/pay", self.pay_invoice),
            ("POST", "/_emulator/payment_intents/<object_id>/amount", self.set_amount),
            ("GET", "/_emulator/deliveries", self.deliveries),
            ("POST", "/_emulator/deliveries/wait", self.wait),
        ]
        for method, rule, handler in routes:
            app.add_url_rule(
                rule, f"control {method} {rule}", _control_view(handler), methods=[method]
            )

    def health(self, _body: JSON) -> JSON:
        emu = self.emulator
        with emu.lock:
            count = emu.object_count()
        return {"status": "ok", "livemode": False, "objects": count, **emu.webhooks.settings()}

    def failures(self, body: JSON) -> JSON:
        mode = body.get("mode", "error")
        if mode not in FAILURE_MODES:
            raise StripeApiError(
                400, f"mode must be one of {', '.join(FAILURE_MODES)}", param="mode"
            )
        count = control_int(body, "count", 1) if mode != "none" else 0
        plan = FailurePlan(mode, count, control_seconds(body, "delay", DEFAULT_FAILURE_DELAY))
        self.emulator.set_failures(plan)
        return plan.as_json()

    def webhooks(self, body: JSON) -> JSON:
        dispatcher = self.emulator.webhooks
        if "url" in body:
            dispatcher.set_url(control_text(body, "url") or None)
        if "drop_next" in body:
            dispatcher.set_drop_next(control_int(body, "drop_next", 0))
        return dispatcher.settings()

    def redeliver(self, body: JSON, object_id: str) -> JSON:
        times = control_int(body, "times", 1)
        with self.emulator.lock:
            event, payload = self.emulator.event_payload(object_id)
        for _ in range(times):
            self.emulator.webhooks.submit(event["id"], event["type"], payload, droppable=False)
        return {"event_id": event["id"], "queued": times}

    def pay_session(self, body: JSON, object_id: str) -> JSON:
        emu = self.emulator
        with emu.lock:
            session = emu.retrieve("checkout.session", object_id)
            charge = emu.pay_session(session, control_text(body, "payment_method_type"))
            return copy.deepcopy(
                {
                    "session": session,
                    "payment_intent": emu.retrieve("payment_intent", session["payment_intent"]),
                    "charge": charge,
                    "redirect_url": success_redirect(session),
                }
            )

    def decline_session(self, body: JSON, object_id: str) -> JSON:
        emu = self.emulator
        with emu.lock:
            session = emu.retrieve("checkout.session", object_id)
            intent = emu.decline_session(session, control_text(body, "payment_method_type"))
            return copy.deepcopy({"session": session, "payment_intent": intent})

    def pay_invoice(self, _body: JSON, object_id: str) -> JSON:
        emu = self.emulator
        with emu.lock:
            invoice = emu.pay_invoice(emu.retrieve("invoice", object_id), out_of_band=False)
            intent = emu.retrieve("payment_intent", invoice["payment_intent"])
            return copy.deepcopy(
                {
                    "invoice": invoice,
                    "payment_intent": intent,
                    "charge": emu.retrieve("charge", intent["latest_charge"]),
                }
            )

    def set_amount(self, body: JSON, object_id: str) -> JSON:
        amount = body.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise StripeApiError(400, "amount must be a non-negative integer", param="amount")
        emu = self.emulator
        with emu.lock:
            intent = emu.retrieve("payment_intent", object_id)
            return copy.deepcopy(emu.set_recorded_amount(intent, amount))

    def deliveries(self, _body: JSON) -> list[JSON]:
        return self.emulator.webhooks.log()

    def wait(self, body: JSON) -> JSON:
        timeout = min(control_seconds(body, "timeout", 10.0), MAX_WAIT_SECONDS)
        dispatcher = self.emulator.webhooks
        idle = dispatcher.wait_idle(timeout)
        return {"idle": idle, "pending": dispatcher.pending()}


def _stripe_http_error(exc: HTTPException) -> Response | HTTPException:
    if not request.path.startswith("/v1/"):
        return exc
    status = exc.code or 500
    if status in (404, 405):
        return error_response(
            StripeApiError(
                404,
                f"Unrecognized request URL ({request.method}: {request.path}). "
                "Please see https://stripe.com/docs.",
            )
        )
    error_type = "api_error" if status >= 500 else "invalid_request_error"
    return error_response(
        StripeApiError(status, exc.description or exc.name, error_type=error_type)
    )


def create_emulator_app(
    *,
    api_key: str,
    webhook_secret: str,
    webhook_url: str | None,
    public_url: str | None = None,
    retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
    api_version: str | None = None,
) -> Flask:
    """The emulator as a Flask app; its state lives in `app.extensions["stripe_emulator"]`."""
    check_test_key(api_key)
    emulator = StripeEmulator(
        api_key=api_key,
        webhook_secret=webhook_secret,
        webhook_url=webhook_url,
        public_url=public_url,
        retry_delays=retry_delays,
        api_version=api_version,
    )
    app = Flask(__name__)
    app.extensions[EXTENSION_KEY] = emulator
    app.before_request(emulator.before_request)
    app.after_request(emulator.after_request)
    app.register_error_handler(HTTPException, _stripe_http_error)
    RestApi(emulator).register(app)
    HostedPages(emulator).register(app)
    ControlApi(emulator).register(app)
    return app


def serve_in_thread(
    app: Flask, host: str = "127.0.0.1", port: int = 0
) -> tuple[BaseWSGIServer, str]:
    """Serve `app` on a daemon thread; stop it with `server.shutdown()`."""
    server = make_server(host, port, app, threaded=True)
    threading.Thread(
        target=server.serve_forever,
        # A short poll keeps shutdown() quick; the default half second adds up in test suites.
        kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
        name="stripe-emulator",
        daemon=True,
    ).start()
    return server, f"http://{host}:{server.port}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shop.payments.emulator",
        description="Run the Stripe API emulator (keys from STRIPE_SECRET_KEY and "
        "STRIPE_WEBHOOK_SECRET).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url", default=os.environ.get("EMULATOR_WEBHOOK_URL") or None)
    parser.add_argument("--public-url", default=None, help="base URL browsers use to reach us")
    args = parser.parse_args(argv)
    try:
        app = create_emulator_app(
            api_key=os.environ.get("STRIPE_SECRET_KEY", "sk_test_emulator"),
            webhook_secret=os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_emulator"),
            webhook_url=args.webhook_url,
            public_url=args.public_url,
        )
    except EmulatorConfigError as exc:
        parser.exit(2, f"stripe emulator: {exc}\n")
    print(
        f"Stripe emulator listening on http://{args.host}:{args.port} "
        f"(webhooks to {args.webhook_url or 'nowhere yet'})",
        flush=True,
    )
    run_simple(args.host, args.port, app, threaded=True)


if __name__ == "__main__":
    main()
