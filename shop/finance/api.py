"""Finance JSON API: totals, exports and month close."""

from __future__ import annotations

from shop.api import api_blueprint

bp = api_blueprint("finance_api", __name__)
