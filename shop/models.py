"""Every model of every area, imported in one place for Alembic and the CLI."""

from shop.accounts.models import ApiToken, AuditEntry, User
from shop.catalog.models import (
    Certification,
    County,
    District,
    Pairing,
    Product,
    Supplier,
    TierPrice,
)
from shop.orders.models import Order, OrderAddress, OrderLine, Refund, RefundLine, StatusChange
from shop.payments.models import StripeEvent
from shop.procurement.models import Approval, BankTransfer, Membership, Organisation

__all__ = [
    "ApiToken",
    "Approval",
    "AuditEntry",
    "BankTransfer",
    "Certification",
    "County",
    "District",
    "Membership",
    "Order",
    "OrderAddress",
    "OrderLine",
    "Organisation",
    "Pairing",
    "Product",
    "Refund",
    "RefundLine",
    "StatusChange",
    "StripeEvent",
    "Supplier",
    "TierPrice",
    "User",
]
