"""Reconciliation JSON API (finance role): discrepancies and their resolution."""

from __future__ import annotations

from shop.api import api_blueprint

bp = api_blueprint("reconciliation_api", __name__)
