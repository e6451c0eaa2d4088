"""Ledger JSON API (finance role): counter-sale imports."""

from __future__ import annotations

from shop.api import api_blueprint

bp = api_blueprint("ledger_api", __name__)
