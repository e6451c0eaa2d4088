"""Who may use each route of the shop: the table the authorization matrix test holds the app to.

Every (endpoint, method) of the URL map has an entry, and every entry names a route that exists.
A rule says who is allowed; everyone else is refused:

* anonymous — 401 from the API, a redirect to the login page from a page;
* a person in `hidden` — 404: the object is reported missing, so that numbers and ids cannot be
  probed (another buyer's order or token, a unit order seen by anyone outside its unit);
* anyone else signed in — 403.

"Allowed" means the request got past authorization: a 2xx or 3xx that is not the login page, or a
domain refusal of the request itself (409, 422). Requests that change state are made by allowed
people on a new object of the same kind (`fresh`), so the shared objects stay as the refused
requests expect them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import shop.ledger

ANONYMOUS = "anonymous"
BUYER = "buyer"  # buyer A: owns `buyer_order` and `buyer_paid`
OTHER_BUYER = "other_buyer"
OFFICER = "officer"  # requester of the demo unit; submitted every demo unit order
APPROVER = "approver"  # approver of the demo unit
VIEWER = "viewer"  # finance-viewer of the demo unit
OTHER_OFFICER = "other_officer"  # requester of another organisation
OTHER_APPROVER = "other_approver"  # approver of that other organisation
FINANCE = "finance"
ADMIN = "admin"

IDENTITIES = (
    ANONYMOUS,
    BUYER,
    OTHER_BUYER,
    OFFICER,
    APPROVER,
    VIEWER,
    OTHER_OFFICER,
    OTHER_APPROVER,
    FINANCE,
    ADMIN,
)
EVERYONE = frozenset(IDENTITIES)
SIGNED_IN = EVERYONE - {ANONYMOUS}
DEMO_UNIT = frozenset({OFFICER, APPROVER, VIEWER})
OTHER_UNIT = frozenset({OTHER_OFFICER, OTHER_APPROVER})
UNIT_MEMBERS = DEMO_UNIT | OTHER_UNIT
REQUESTERS = frozenset({OFFICER, OTHER_OFFICER})
OUTSIDE_DEMO_UNIT = SIGNED_IN - DEMO_UNIT
NOBODY: frozenset[str] = frozenset()

# What each person may ever read, anywhere: a response to anyone else must not contain it.
MAY_SEE = {
    "buyer_orders": frozenset({BUYER, FINANCE, ADMIN}),
    "other_buyer_orders": frozenset({OTHER_BUYER, FINANCE, ADMIN}),
    "demo_unit_orders": DEMO_UNIT | {FINANCE, ADMIN},
    "other_unit_orders": OTHER_UNIT | {FINANCE, ADMIN},
    "export_jobs": frozenset({FINANCE}),
}

SPARE_EMAIL = "spare@example.com"  # an account no rule depends on, for changes that are allowed
UNIT_CSV = (
    "SKU/商品编码,数量/quantity,收货人,电话,收货地址,区县\n"
    "CH-NM-001,10,食堂甲,13800138001,江北街道文昌一路 8 号,惠城区\n"
)
DELIVERY = {
    "recipient": "食堂甲",
    "phone": "13800138001",
    "address": "江北街道文昌一路 8 号",
    "district": "惠城区",
}
ADDRESS = {
    "name": "张小惠",
    "phone": "13800138000",
    "province": "广东省",
    "city": "惠州市",
    "district": "惠城区",
    "detail": "江北街道文昌一路 8 号",
}
COUNTER_SALES = (
    Path(shop.ledger.__file__).parent / "sample" / "counter-sales-template.csv"
).read_bytes()
CLOSABLE_MONTH = "2001-01"  # long before any entry: closing it changes no total


@dataclass(frozen=True)
class Call:
    """What a request body may depend on."""

    target: Mapping[str, Any]  # the object the request is about
    who: str
    email: str
    allowed: bool
    n: int  # unique per request, for names and codes that must not repeat
    credit_code: Callable[[str, int], str]  # 17-character body, serial → a valid credit code


Body = Mapping[str, Any] | Callable[[Call], Mapping[str, Any]]


@dataclass(frozen=True)
class Rule:
    allow: frozenset[str]
    hidden: frozenset[str] = NOBODY
    target: str | None = None  # the kind of object whose fields fill the path
    fresh: bool = False  # allowed people act on a new object of that kind
    json: Body | None = None
    form: Body | None = None
    upload: tuple[str, bytes] | None = None  # sent as the multipart part `file`
    query: str = ""
    case: str = ""  # names a rule when a route has several
    # "blank": the request runs in a new browser (it signs in); "signed in": in a new browser
    # signed in as the person (it signs out)
    own_client: str = ""
    stripe_signed: bool = False


def _token_request(c: Call) -> Mapping[str, Any]:
    return {"email": c.email if c.who != ANONYMOUS else SPARE_EMAIL, "password": "demo-password"}


def _transfer(c: Call) -> Mapping[str, Any]:
    return {
        "order": c.target["number"],
        "amount_fen": c.target["total_fen"],
        "paid_at": date.today().isoformat(),
        "reference": f"AUTHZ-{c.n}",
    }


def _transfer_form(c: Call) -> Mapping[str, Any]:
    fen = c.target["total_fen"]
    return {
        "order": c.target["number"],
        "amount": f"{fen // 100}.{fen % 100:02d}",
        "paid_on": date.today().isoformat(),
        "reference": f"AUTHZ-{c.n}",
    }


def _member(c: Call) -> Mapping[str, Any]:
    """Refused people try to make themselves approvers of the demo unit."""
    return {"email": SPARE_EMAIL if c.allowed else c.email, "role": "approver"}


def _organisation(c: Call) -> Mapping[str, Any]:
    return {
        "name": f"权限测试单位 {c.n}",
        "type": "机关事业单位",
        "credit_code": c.credit_code("12441302MB", c.n),
        "district": "惠城区",
        "reserved_target_fen": 1_000_000,
        "invoice_title": f"权限测试单位 {c.n}",
        "tax_id": f"TAX{c.n}",
    }


def _organisation_form(c: Call) -> Mapping[str, Any]:
    body = _organisation(c)
    return {
        **{k: v for k, v in body.items() if k != "reserved_target_fen"},
        "reserved_target": "10000",
        "payment_terms_days": "30",
    }


def _supplier(c: Call) -> Mapping[str, Any]:
    return {
        "name": f"权限测试合作社 {c.n}",
        "credit_code": c.credit_code("93522323MA", c.n),
        "county": "普安县",
    }


def _certification(c: Call) -> Mapping[str, Any]:
    today = date.today()
    return {
        "number": f"AUTHZ-CERT-{c.n}",
        "valid_from": today.isoformat(),
        "valid_to": (today + timedelta(days=365)).isoformat(),
    }


def _product(c: Call) -> Mapping[str, Any]:
    return {
        "sku": f"AUTHZ-{c.n}",
        "name": "权限测试茶",
        "name_en": "Access test tea",
        "category": "茶叶",
        "supplier_id": c.target["supplier_id"],
        "pack": "100g/袋",
        "price_fen": 1000,
        "stock": 5,
    }


def _product_form(c: Call) -> Mapping[str, Any]:
    body = _product(c)
    return {**{k: str(v) for k, v in body.items() if k != "price_fen"}, "price": "10.00"}


def _webhook(c: Call) -> Mapping[str, Any]:
    return {
        "id": f"evt_authz_{c.n}",
        "object": "event",
        "type": "customer.updated",
        "created": 1_700_000_000,
        "data": {"object": {"id": "cus_authz", "object": "customer", "metadata": {}}},
    }


def only(rule: Rule) -> tuple[Rule, ...]:
    return (rule,)


def _buyer_order_rules(**request: Any) -> tuple[Rule, ...]:
    """Read one order: its buyer, finance and admin (a unit order: the officer who placed it)."""
    return (
        Rule(
            allow=frozenset({BUYER, FINANCE, ADMIN}),
            hidden=SIGNED_IN - {BUYER, FINANCE, ADMIN},
            target="buyer_order",
            **request,
        ),
        Rule(
            allow=frozenset({OFFICER, FINANCE, ADMIN}),
            hidden=SIGNED_IN - {OFFICER, FINANCE, ADMIN},
            target="demo_awaiting",
            case="unit order",
            **request,
        ),
    )


def _cancel_rules(**request: Any) -> tuple[Rule, ...]:
    """Cancel through the buyer's route: the buyer or operations.

    Never a unit order, whose invoice only rejection or finance's overdue cancellation voids.
    """
    return (
        Rule(
            allow=frozenset({BUYER, ADMIN}),
            hidden=SIGNED_IN - {BUYER, FINANCE, ADMIN},
            target="buyer_order",
            fresh=True,
            **request,
        ),
        Rule(
            allow=NOBODY,
            hidden=SIGNED_IN - {OFFICER, FINANCE, ADMIN},
            target="demo_awaiting",
            case="unit order",
            **request,
        ),
    )


def _demo_unit_order(allow: frozenset[str], target: str, **request: Any) -> tuple[Rule, ...]:
    """A demo unit order: the roles given; other members 403; everyone outside the unit 404."""
    return only(Rule(allow=allow, hidden=OUTSIDE_DEMO_UNIT, target=target, **request))


ADMIN_ONLY = frozenset({ADMIN})
FINANCE_ONLY = frozenset({FINANCE})
BUYER_ONLY = frozenset({BUYER})
AUDIT_READERS = frozenset({ADMIN, FINANCE})

ACCESS: dict[tuple[str, str], tuple[Rule, ...]] = {
    # --- public: the catalogue, the documents, signing in, the cart, Stripe -------------------
    ("catalog.index", "GET"): only(Rule(allow=EVERYONE)),
    ("catalog.product", "GET"): only(Rule(allow=EVERYONE, target="product")),
    ("catalog_api.list_products", "GET"): only(Rule(allow=EVERYONE)),
    ("catalog_api.show_product", "GET"): only(Rule(allow=EVERYONE, target="product")),
    ("meta_api.health", "GET"): only(Rule(allow=EVERYONE)),
    ("health.healthz", "GET"): only(Rule(allow=EVERYONE)),
    ("health.readyz", "GET"): only(Rule(allow=EVERYONE)),
    # Without METRICS_TOKEN (the tests' setting) /metrics is open; nginx keeps it to the host.
    ("metrics.metrics", "GET"): only(Rule(allow=EVERYONE)),
    ("meta_api.openapi", "GET"): only(Rule(allow=EVERYONE)),
    ("auth_api.create_token", "POST"): only(Rule(allow=EVERYONE, json=_token_request)),
    ("stripe_api.stripe_webhook", "POST"): only(
        Rule(allow=EVERYONE, json=_webhook, stripe_signed=True)
    ),
    ("accounts.login", "GET"): only(Rule(allow=EVERYONE)),
    ("accounts.login", "POST"): only(Rule(allow=EVERYONE, form=_token_request, own_client="blank")),
    ("accounts.logout", "POST"): only(Rule(allow=EVERYONE, own_client="signed in")),
    ("orders.cart", "GET"): only(Rule(allow=EVERYONE)),
    ("orders.cart", "POST"): only(Rule(allow=EVERYONE, form={"qty-PA-TEA-005": "1"})),
    ("orders.add_to_cart", "POST"): only(
        Rule(allow=EVERYONE, form={"sku": "PA-TEA-005", "quantity": "1"})
    ),
    # --- any signed-in person, about themselves -------------------------------------------------
    ("accounts.account", "GET"): only(Rule(allow=SIGNED_IN)),
    ("accounts.change_employer", "POST"): only(Rule(allow=SIGNED_IN, form={"organisation_id": ""})),
    ("auth_api.me", "GET"): only(Rule(allow=SIGNED_IN)),
    ("auth_api.put_employer", "PUT"): only(Rule(allow=SIGNED_IN, json={"organisation_id": None})),
    ("auth_api.list_employers", "GET"): only(Rule(allow=SIGNED_IN)),
    ("orders.my_orders", "GET"): only(Rule(allow=SIGNED_IN)),
    ("auth_api.list_tokens", "GET"): only(Rule(allow=SIGNED_IN)),
    # A token is revoked by its owner only; anyone else is told it does not exist.
    ("auth_api.delete_token", "DELETE"): only(
        Rule(allow=BUYER_ONLY, hidden=SIGNED_IN - BUYER_ONLY, target="buyer_token", fresh=True)
    ),
    ("accounts.revoke_my_token", "POST"): only(
        Rule(allow=BUYER_ONLY, hidden=SIGNED_IN - BUYER_ONLY, target="buyer_token", fresh=True)
    ),
    ("orders.checkout_page", "GET"): only(Rule(allow=SIGNED_IN)),
    ("orders.checkout_page", "POST"): only(Rule(allow=SIGNED_IN, form=ADDRESS)),
    ("orders_api.list_orders", "GET"): only(Rule(allow=SIGNED_IN)),
    ("orders_api.create_order", "POST"): only(
        Rule(
            allow=SIGNED_IN,
            json={"lines": [{"sku": "PA-TEA-005", "quantity": 1}], "address": ADDRESS},
        )
    ),
    # The blank bulk-order template: the same file the README offers; any signed-in person.
    ("procurement.sample", "GET"): only(Rule(allow=SIGNED_IN, target="bulk_sample")),
    # --- one order: its buyer; finance and admin read any ----------------------------------------
    ("orders_api.show_order", "GET"): _buyer_order_rules(),
    ("orders.order_detail", "GET"): _buyer_order_rules(),
    ("orders.confirmation", "GET"): _buyer_order_rules(),
    ("orders_api.cancel_order", "POST"): _cancel_rules(),
    ("orders.cancel", "POST"): _cancel_rules(),
    # --- the unit: its members, by role; outsiders are told the order does not exist -------------
    ("procurement.dashboard", "GET"): only(Rule(allow=UNIT_MEMBERS)),
    ("procurement_api.list_unit_orders", "GET"): only(Rule(allow=UNIT_MEMBERS)),
    ("procurement_api.unit_summary", "GET"): only(Rule(allow=UNIT_MEMBERS)),
    ("procurement.new_order", "GET"): only(Rule(allow=REQUESTERS)),
    ("procurement.upload_order", "POST"): only(
        Rule(allow=REQUESTERS, form={"action": "save"}, upload=("order.csv", UNIT_CSV.encode()))
    ),
    ("procurement.quick_order", "POST"): only(
        Rule(allow=REQUESTERS, form={"text": "CH-NM-001 10", **DELIVERY})
    ),
    ("procurement_api.preview", "POST"): only(
        Rule(allow=REQUESTERS, upload=("order.csv", UNIT_CSV.encode()))
    ),
    ("procurement_api.upload_order", "POST"): only(
        Rule(allow=REQUESTERS, upload=("order.csv", UNIT_CSV.encode()))
    ),
    ("procurement_api.quick_order", "POST"): only(
        Rule(allow=REQUESTERS, json={"text": "CH-NM-001 10", "delivery": DELIVERY})
    ),
    ("procurement.order_page", "GET"): _demo_unit_order(DEMO_UNIT, "demo_pending"),
    ("procurement_api.show_unit_order", "GET"): _demo_unit_order(DEMO_UNIT, "demo_pending"),
    ("procurement.submit", "POST"): _demo_unit_order(
        frozenset({OFFICER}), "demo_draft", fresh=True
    ),
    ("procurement_api.submit_order", "POST"): _demo_unit_order(
        frozenset({OFFICER}), "demo_draft", fresh=True
    ),
    ("procurement.reorder", "POST"): _demo_unit_order(frozenset({OFFICER}), "demo_pending"),
    ("procurement_api.reorder", "POST"): _demo_unit_order(frozenset({OFFICER}), "demo_pending"),
    ("procurement.approve", "POST"): _demo_unit_order(
        frozenset({APPROVER}), "demo_pending", fresh=True
    ),
    ("procurement_api.approve_order", "POST"): _demo_unit_order(
        frozenset({APPROVER}), "demo_pending", fresh=True
    ),
    ("procurement.reject", "POST"): _demo_unit_order(
        frozenset({APPROVER}), "demo_pending", fresh=True, form={"reason": "不需要"}
    ),
    ("procurement_api.reject_order", "POST"): _demo_unit_order(
        frozenset({APPROVER}), "demo_pending", fresh=True, json={"reason": "不需要"}
    ),
    # --- finance ------------------------------------------------------------------------------
    ("finance.dashboard", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance.totals", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance.months", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance.close_month", "POST"): only(Rule(allow=FINANCE_ONLY, form={"month": CLOSABLE_MONTH})),
    ("finance.discrepancies", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance.resolve_discrepancy", "POST"): only(
        Rule(allow=FINANCE_ONLY, target="discrepancy", fresh=True, form={"note": "已核对"})
    ),
    ("finance.request_export", "POST"): only(
        Rule(allow=FINANCE_ONLY, form={"report": "totals", "format": "csv"})
    ),
    ("finance.export_job", "GET"): only(Rule(allow=FINANCE_ONLY, target="export")),
    ("finance.overdue", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance.cancel_overdue", "POST"): only(
        Rule(allow=FINANCE_ONLY, target="demo_awaiting", form={"reason": "逾期"})
    ),
    ("finance.new_transfer", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance.record_transfer", "POST"): only(
        Rule(allow=FINANCE_ONLY, target="demo_awaiting", fresh=True, form=_transfer_form)
    ),
    ("ledger.offline_sales", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("ledger.import_offline_sales", "POST"): only(
        Rule(allow=FINANCE_ONLY, upload=("sales.csv", COUNTER_SALES))
    ),
    ("ledger.sample", "GET"): only(Rule(allow=FINANCE_ONLY, target="ledger_sample")),
    ("finance_api.finance_totals", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance_api.export_totals", "GET"): only(Rule(allow=FINANCE_ONLY, query="format=csv")),
    ("finance_api.export_detail", "GET"): only(Rule(allow=FINANCE_ONLY, query="format=csv")),
    ("finance_api.start_export", "POST"): only(
        Rule(allow=FINANCE_ONLY, json={"report": "totals", "format": "csv"})
    ),
    ("finance_api.list_exports", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance_api.export_status", "GET"): only(Rule(allow=FINANCE_ONLY, target="export")),
    ("finance_api.export_file", "GET"): only(Rule(allow=FINANCE_ONLY, target="export")),
    ("finance_api.closed_months", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("finance_api.close_month", "POST"): only(Rule(allow=FINANCE_ONLY, target="month")),
    ("ledger_api.list_offline_imports", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("ledger_api.import_offline", "POST"): only(
        Rule(allow=FINANCE_ONLY, upload=("sales.csv", COUNTER_SALES))
    ),
    ("reconciliation_api.list_discrepancies", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("reconciliation_api.resolve_discrepancy", "POST"): only(
        Rule(allow=FINANCE_ONLY, target="discrepancy", fresh=True, json={"note": "已核对"})
    ),
    ("reconciliation_api.reconcile_now", "POST"): only(Rule(allow=FINANCE_ONLY)),
    ("procurement_api.overdue", "GET"): only(Rule(allow=FINANCE_ONLY)),
    ("procurement_api.cancel_unit_order", "POST"): only(
        Rule(allow=FINANCE_ONLY, target="demo_awaiting", json={"reason": "逾期"})
    ),
    ("procurement_api.record_transfer", "POST"): only(
        Rule(allow=FINANCE_ONLY, target="demo_awaiting", fresh=True, json=_transfer)
    ),
    # --- operations (admin) ---------------------------------------------------------------------
    ("admin.dashboard", "GET"): only(Rule(allow=ADMIN_ONLY)),
    # The audit trail: operations and finance read each other's changes; nobody edits it.
    ("admin.audit_log", "GET"): only(Rule(allow=AUDIT_READERS)),
    ("admin_api.audit_log", "GET"): only(Rule(allow=AUDIT_READERS)),
    ("admin.orders", "GET"): only(Rule(allow=ADMIN_ONLY)),
    ("admin.ship", "POST"): only(
        Rule(
            allow=ADMIN_ONLY,
            target="buyer_paid",
            fresh=True,
            form={"carrier": "顺丰", "tracking_number": "SF1"},
        )
    ),
    ("admin.refund_order", "POST"): only(
        Rule(allow=ADMIN_ONLY, target="buyer_paid", form={"kind": "full"})
    ),
    ("admin.organisations", "GET"): only(Rule(allow=ADMIN_ONLY)),
    ("admin.create_organisation", "POST"): only(Rule(allow=ADMIN_ONLY, form=_organisation_form)),
    ("admin.add_organisation_member", "POST"): only(
        Rule(allow=ADMIN_ONLY, target="demo_unit", form=_member)
    ),
    ("admin.products", "GET"): only(Rule(allow=ADMIN_ONLY)),
    ("admin.create_product", "POST"): only(
        Rule(allow=ADMIN_ONLY, target="supplier", form=_product_form)
    ),
    ("admin.update_product", "POST"): only(
        Rule(
            allow=ADMIN_ONLY,
            target="product",
            form={"price": "0.01", "stock": "0", "active": "on"},
        )
    ),
    ("admin.suppliers", "GET"): only(Rule(allow=ADMIN_ONLY)),
    ("admin.create_supplier", "POST"): only(Rule(allow=ADMIN_ONLY, form=_supplier)),
    ("admin.add_certification", "POST"): only(
        Rule(allow=ADMIN_ONLY, target="supplier", form=_certification)
    ),
    ("admin_api.list_suppliers", "GET"): only(Rule(allow=ADMIN_ONLY)),
    ("admin_api.create_supplier", "POST"): only(Rule(allow=ADMIN_ONLY, json=_supplier)),
    ("admin_api.add_certification", "POST"): only(
        Rule(allow=ADMIN_ONLY, target="supplier", json=_certification)
    ),
    ("admin_api.create_product", "POST"): only(
        Rule(allow=ADMIN_ONLY, target="supplier", json=_product)
    ),
    ("admin_api.update_product", "PATCH"): only(
        Rule(allow=ADMIN_ONLY, target="product", json={"price_fen": 1, "stock": 0})
    ),
    ("admin_api.ship_order", "POST"): only(
        Rule(
            allow=ADMIN_ONLY,
            target="buyer_paid",
            fresh=True,
            json={"carrier": "顺丰", "tracking_number": "SF1"},
        )
    ),
    ("admin_api.list_organisations", "GET"): only(Rule(allow=ADMIN_ONLY)),
    ("admin_api.create_organisation", "POST"): only(Rule(allow=ADMIN_ONLY, json=_organisation)),
    ("admin_api.add_member", "POST"): only(
        Rule(allow=ADMIN_ONLY, target="demo_unit", json=_member)
    ),
    ("orders_api.refund_order", "POST"): only(
        Rule(allow=ADMIN_ONLY, target="buyer_paid", json={"amount_fen": 100})
    ),
}
