"""Reconciliation with Stripe: page through Stripe, repair missed webhooks, record the rest."""

from __future__ import annotations

from typing import Any

import stripe

from shop.accounts.models import User
from shop.db import DbSession
from shop.reconciliation.models import Discrepancy


def reconcile_payments(session: DbSession, client: stripe.StripeClient) -> dict[str, int]:
    raise NotImplementedError


def resolve_discrepancy(
    session: DbSession, discrepancy_id: int, actor: User, note: str
) -> Discrepancy:
    raise NotImplementedError


def list_discrepancies(session: DbSession, status: str | None = None) -> list[Any]:
    raise NotImplementedError
