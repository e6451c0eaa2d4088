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
from shop.finance.models import ExportJob
from shop.ledger.models import (
    ClosedMonth,
    Cursor,
    DailyTotal,
    LedgerEntry,
    OfflineImport,
    OfflineSale,
)
from shop.orders.models import Order, OrderAddress, OrderLine, Refund, RefundLine, StatusChange
from shop.payments.models import StripeEvent
from shop.procurement.models import Approval, BankTransfer, Membership, Organisation
from shop.reconciliation.models import Discrepancy

__all__ = [
    "ApiToken",
    "Approval",
    "AuditEntry",
    "BankTransfer",
    "Certification",
    "ClosedMonth",
    "County",
    "Cursor",
    "DailyTotal",
    "Discrepancy",
    "District",
    "ExportJob",
    "LedgerEntry",
    "Membership",
    "OfflineImport",
    "OfflineSale",
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
