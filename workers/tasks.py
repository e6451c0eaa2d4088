"""Thin tasks: take ids, call a shop service, let Celery retry."""

from __future__ import annotations

from celery import shared_task

from shop.db import utcnow
from shop.extensions import db
from shop.payments.gateway import stripe_client
from shop.payments.services import expire_unpaid_orders as expire


@shared_task(name="shop.expire_unpaid_orders", acks_late=True)
def expire_unpaid_orders() -> int:
    """Cancel unpaid online orders past their payment window; their stock returns."""
    return expire(db.session, stripe_client(), utcnow())
