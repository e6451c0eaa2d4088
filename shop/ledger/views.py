"""Ledger pages (finance role): importing counter sales."""

from __future__ import annotations

from shop.views import html_blueprint

bp = html_blueprint("ledger", __name__, url_prefix="/finance/offline-sales")
