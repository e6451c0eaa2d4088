"""Reconciliation JSON API (finance role): discrepancies and their resolution."""

from __future__ import annotations

from datetime import datetime

from celery.exceptions import TimeoutError as TaskTimeout
from pydantic import BaseModel, ConfigDict, Field

from shop.accounts.models import Role, User
from shop.api import api_blueprint, endpoint
from shop.errors import ServiceUnavailable
from shop.extensions import db
from shop.reconciliation import services

bp = api_blueprint("reconciliation_api", __name__)
FINANCE = (Role.FINANCE,)
# How long a person waits on the page for a reconciliation run on a worker.
RECONCILE_WAIT_SECONDS = 120


class DiscrepancyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    order_number: str | None
    stripe_object: str
    shop_fen: int | None
    stripe_fen: int | None
    currency: str | None
    detail: str
    found_at: datetime
    resolved_at: datetime | None
    note: str


class DiscrepancyListOut(BaseModel):
    discrepancies: list[DiscrepancyOut]


class StatusQuery(BaseModel):
    status: str | None = Field(None, description="open | repaired | resolved")


class ResolveIn(BaseModel):
    note: str = Field(max_length=2000, description="what finance found and did")


class ReconcileOut(BaseModel):
    objects_seen: int
    orders_checked: int
    repaired: int
    discrepancies_opened: int
    failed: int


@endpoint(
    bp,
    "/finance/discrepancies",
    "GET",
    summary="Disagreements between the shop and Stripe",
    query=StatusQuery,
    response=DiscrepancyListOut,
    roles=FINANCE,
)
def list_discrepancies(user: User, query: StatusQuery) -> DiscrepancyListOut:
    found = services.list_discrepancies(db.session, query.status)
    return DiscrepancyListOut(discrepancies=[DiscrepancyOut.model_validate(d) for d in found])


@endpoint(
    bp,
    "/finance/discrepancies/<int:discrepancy_id>/resolve",
    "POST",
    summary="Resolve a discrepancy with a note",
    body=ResolveIn,
    response=DiscrepancyOut,
    roles=FINANCE,
    errors=(404, 409),
)
def resolve_discrepancy(user: User, discrepancy_id: int, body: ResolveIn) -> DiscrepancyOut:
    discrepancy = services.resolve_discrepancy(db.session, discrepancy_id, user, body.note)
    db.session.commit()
    return DiscrepancyOut.model_validate(discrepancy)


@endpoint(
    bp,
    "/finance/reconcile",
    "POST",
    summary="Reconcile with Stripe now and report what was found",
    response=ReconcileOut,
    roles=FINANCE,
    errors=(503,),
)
def reconcile_now(user: User) -> ReconcileOut:
    from workers.tasks import reconcile_payments

    # The run commits order by order in its own session; this request must not hold a
    # transaction meanwhile (on SQLite that is the database's write lock).
    db.session.commit()
    if reconcile_payments.app.conf.task_always_eager:
        report = reconcile_payments.apply().get()
    else:
        try:
            report = reconcile_payments.delay().get(timeout=RECONCILE_WAIT_SECONDS)
        except TaskTimeout as exc:
            raise ServiceUnavailable(
                "对账仍在进行，请稍后在对账差异列表中查看结果。", code="still_running"
            ) from exc
    return ReconcileOut(**report)
