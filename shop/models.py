"""Every model of every area, imported in one place for Alembic and the CLI."""

from shop.accounts.models import ApiToken, AuditEntry, User
from shop.catalog.models import Certification, County, District, Pairing, Product, Supplier
from shop.orders.models import Order, OrderAddress, OrderLine, Refund, RefundLine, StatusChange
from shop.payments.models import StripeEvent

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Certification",
    "County",
    "District",
    "Order",
    "OrderAddress",
    "OrderLine",
    "Pairing",
    "Product",
    "Refund",
    "RefundLine",
    "StatusChange",
    "StripeEvent",
    "Supplier",
    "User",
]
