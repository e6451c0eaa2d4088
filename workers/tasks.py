"""Thin tasks: take ids, call a shop service, let Celery retry.

Every task is safe to run twice or at once on two workers: the services write each ledger
entry, repair and discrepancy under a unique key, so a redelivered task (acks_late, a worker
killed mid-task) finds its earlier work done and carries on from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import shared_task

from shop.accounts.models import User
from shop.db import utcnow
from shop.errors import Conflict
from shop.extensions import db
from shop.finance.exports import run_export
from shop.ledger import services as ledger
from shop.ledger.models import ClosedMonth
from shop.ledger.offline import import_offline_sales as import_sales
from shop.payments.gateway import stripe_client
from shop.payments.services import expire_unpaid_orders as expire
from shop.reconciliation.services import reconcile_payments as reconcile


@shared_task(name="shop.expire_unpaid_orders", acks_late=True)
def expire_unpaid_orders() -> int:
    """Cancel unpaid online orders past their payment window; their stock returns."""
    return expire(db.session, stripe_client(), utcnow())


@shared_task(name="shop.recognise", acks_late=True)
def recognise() -> dict[str, int]:
    """Write the ledger entries of paid orders and succeeded refunds that have none yet."""
    return ledger.recognise_all(db.session)


@shared_task(name="shop.rollup", acks_late=True)
def rollup() -> int:
    """Fold new ledger entries into the daily totals."""
    return ledger.rollup(db.session)


@shared_task(name="shop.reconcile_payments", acks_late=True)
def reconcile_payments() -> dict[str, int]:
    """Page through Stripe since the stored cursors; repair and record every disagreement."""
    report = reconcile(db.session, stripe_client())
    ledger.rollup(db.session)
    return report


@shared_task(name="shop.close_month", acks_late=True)
def close_month(month: str, user_id: int) -> dict[str, Any]:
    """Close a month for a finance user; run again (a redelivery), it reports the closed month."""
    user = db.session.get(User, user_id)
    if user is None:
        raise ValueError(f"no user {user_id}")
    closed = db.session.get(ClosedMonth, month)
    if closed is None:
        try:
            closed = ledger.close_month(db.session, month, user)
        except Conflict as exc:
            if exc.code != "month_closed":
                raise
            # A second copy of this task, running at the same time, closed it first.
            db.session.rollback()
            closed = db.session.get(ClosedMonth, month)
            if closed is None:
                raise
    return {"month": closed.month, "total_fen": closed.total_fen, "entries": closed.entries}


@shared_task(name="shop.import_offline_sales", acks_late=True)
def import_offline_sales(path: str, filename: str, user_id: int | None) -> dict[str, Any]:
    """Import a stored counter-sales file; the same file twice imports nothing the second time."""
    actor = db.session.get(User, user_id) if user_id is not None else None
    batch, created = import_sales(db.session, Path(path).read_bytes(), filename, actor)
    return {"import_id": batch.id, "rows": batch.rows, "created": created}


@shared_task(name="shop.export", acks_late=True)
def export(job_id: str) -> str:
    """Produce an export file; finance downloads it when the job says done."""
    return run_export(db.session, job_id).status
