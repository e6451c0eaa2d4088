"""Unit procurement JSON API: bulk drafts, approval, invoices, transfers, progress."""

from __future__ import annotations

from datetime import date

from flask import current_app
from pydantic import BaseModel, Field
from werkzeug.datastructures import FileStorage

from shop.accounts.models import Role, User
from shop.api import api_blueprint, endpoint
from shop.db import utcnow
from shop.errors import InvalidInput
from shop.extensions import db
from shop.orders.api import OrderOut
from shop.orders.models import Order
from shop.orders.services import ShippingRule, get_order
from shop.payments.gateway import stripe_client
from shop.procurement import services
from shop.procurement.bulk import (
    BulkFileError,
    BulkRow,
    check_bulk_rows,
    parse_quick_order,
    read_bulk_file,
)
from shop.procurement.models import MemberRole, Organisation
from shop.timezones import shanghai_today

bp = api_blueprint("procurement_api", __name__)
REQUESTER, APPROVER, VIEWER = MemberRole.REQUESTER, MemberRole.APPROVER, MemberRole.FINANCE_VIEWER
ANY_MEMBER = (REQUESTER, APPROVER, VIEWER)


class UploadForm(BaseModel):
    funding: str | None = Field(
        None, description="财政资金 | 工会经费 | 自有资金; default: the unit's"
    )
    recipient: str | None = Field(None, max_length=64, description="default delivery: recipient")
    phone: str | None = Field(None, max_length=32)
    address: str | None = Field(None, max_length=256)
    district: str | None = Field(None, max_length=32, description="a Huizhou district")


class DeliveryIn(BaseModel):
    recipient: str = Field(max_length=64)
    phone: str = Field(max_length=32)
    address: str = Field(max_length=256)
    district: str = Field(max_length=32)


class QuickOrderIn(BaseModel):
    text: str = Field(max_length=100_000, description="one 'SKU quantity' per line")
    funding: str | None = None
    delivery: DeliveryIn | None = None


class UnitOrderOut(OrderOut):
    id: int
    funding: str
    organisation: str
    invoice_due_at: str | None

    @classmethod
    def of_unit(cls, order: Order) -> UnitOrderOut:
        organisation = db.session.get(Organisation, order.organisation_id)
        assert organisation is not None
        return cls(
            **OrderOut.of(order).model_dump(),
            id=order.id,
            funding=order.funding,
            organisation=organisation.name,
            invoice_due_at=order.invoice_due_at.isoformat() if order.invoice_due_at else None,
        )


class UnitOrderListOut(BaseModel):
    items: list[UnitOrderOut]


class PreviewLine(BaseModel):
    row: int
    sku: str
    name: str
    quantity: int
    unit_price_fen: int
    amount_fen: int


class PreviewOut(BaseModel):
    lines: list[PreviewLine]
    goods_fen: int


class StatusQuery(BaseModel):
    status: str | None = None


class YearQuery(BaseModel):
    year: int | None = Field(None, ge=2000, le=2100)


class Amount(BaseModel):
    county: str | None = None
    month: str | None = None
    amount_fen: int


class SummaryOut(BaseModel):
    organisation: str
    year: int
    target_fen: int
    spent_fen: int
    personal_fen: int = Field(
        description="employees' own purchases, funded personally; not part of spent_fen"
    )
    remaining_fen: int
    percent: float | None
    by_county: list[Amount]
    by_month: list[Amount]
    orders_by_status: dict[str, int]


class RejectIn(BaseModel):
    reason: str = Field(max_length=256)


class TransferIn(BaseModel):
    order: str = Field(description="order number")
    amount_fen: int
    paid_at: date
    reference: str = Field(max_length=64)
    payer_account: str = Field("", max_length=64)


class CancelIn(BaseModel):
    reason: str = Field("", max_length=256)


def _rows(upload: FileStorage | None) -> list[BulkRow]:
    if upload is None:
        raise InvalidInput(
            "请上传文件（字段名 file）。",
            code="invalid_rows",
            details=[{"row": None, "column": None, "message": "缺少文件。"}],
        )
    try:
        return read_bulk_file(upload.filename or "", upload.read())
    except BulkFileError as exc:
        raise InvalidInput(
            "文件无法读取。", code="invalid_rows", details=[p.as_detail() for p in exc.problems]
        ) from exc


def _delivery(form: UploadForm) -> services.Delivery | None:
    if not form.recipient:
        return None
    return services.Delivery(
        form.recipient, form.phone or "", form.address or "", form.district or ""
    )


def _draft(
    user: User, rows: list[BulkRow], funding: str | None, delivery: services.Delivery | None
) -> UnitOrderOut:
    organisation = services.organisation_for(db.session, user, REQUESTER)
    order = services.draft_from_rows(
        db.session,
        user,
        organisation,
        rows,
        funding=funding,
        default_delivery=delivery,
        shipping=ShippingRule.from_config(current_app.config),
    )
    db.session.commit()
    return UnitOrderOut.of_unit(order)


@endpoint(
    bp,
    "/procurement/orders/preview",
    "POST",
    summary="Check and price a bulk file",
    form=UploadForm,
    response=PreviewOut,
    errors=(403,),
)
def preview(user: User, form: UploadForm, upload: FileStorage | None) -> PreviewOut:
    services.organisation_for(db.session, user, REQUESTER)
    lines = check_bulk_rows(db.session, _rows(upload), today=shanghai_today(utcnow()))
    return PreviewOut(
        lines=[
            PreviewLine(
                row=line.row,
                sku=line.product.sku,
                name=line.product.name,
                quantity=line.quantity,
                unit_price_fen=line.unit_price_fen,
                amount_fen=line.amount_fen,
            )
            for line in lines
        ],
        goods_fen=sum(line.amount_fen for line in lines),
    )


@endpoint(
    bp,
    "/procurement/orders",
    "POST",
    summary="Save a bulk file as a draft unit order",
    form=UploadForm,
    response=UnitOrderOut,
    status=201,
    errors=(403,),
)
def upload_order(user: User, form: UploadForm, upload: FileStorage | None) -> UnitOrderOut:
    return _draft(user, _rows(upload), form.funding, _delivery(form))


@endpoint(
    bp,
    "/procurement/orders/quick",
    "POST",
    summary="Draft from pasted SKU and quantity lines",
    body=QuickOrderIn,
    response=UnitOrderOut,
    status=201,
    errors=(403,),
)
def quick_order(user: User, body: QuickOrderIn) -> UnitOrderOut:
    delivery = services.Delivery(**body.delivery.model_dump()) if body.delivery else None
    return _draft(user, parse_quick_order(body.text), body.funding, delivery)


@endpoint(
    bp,
    "/procurement/orders/<int:order_id>/reorder",
    "POST",
    summary="A new draft with the lines and deliveries of a past order",
    response=UnitOrderOut,
    status=201,
    errors=(403, 404),
)
def reorder(user: User, order_id: int) -> UnitOrderOut:
    past = services.unit_order(db.session, user, order_id, REQUESTER)
    order = services.reorder(
        db.session, user, past, shipping=ShippingRule.from_config(current_app.config)
    )
    db.session.commit()
    return UnitOrderOut.of_unit(order)


@endpoint(
    bp,
    "/procurement/orders",
    "GET",
    summary="My unit's orders",
    query=StatusQuery,
    response=UnitOrderListOut,
    errors=(403,),
)
def list_unit_orders(user: User, query: StatusQuery) -> UnitOrderListOut:
    organisation = services.organisation_for(db.session, user, *ANY_MEMBER)
    return UnitOrderListOut(
        items=[
            UnitOrderOut.of_unit(o)
            for o in services.unit_orders(db.session, organisation, query.status)
        ]
    )


@endpoint(
    bp,
    "/procurement/orders/<int:order_id>",
    "GET",
    summary="One unit order",
    response=UnitOrderOut,
    errors=(403, 404),
)
def show_unit_order(user: User, order_id: int) -> UnitOrderOut:
    return UnitOrderOut.of_unit(services.unit_order(db.session, user, order_id, *ANY_MEMBER))


@endpoint(
    bp,
    "/procurement/orders/<int:order_id>/submit",
    "POST",
    summary="Submit a draft for approval (reserves stock)",
    response=UnitOrderOut,
    errors=(403, 404, 409),
)
def submit_order(user: User, order_id: int) -> UnitOrderOut:
    order = services.unit_order(db.session, user, order_id, REQUESTER, lock=True)
    services.submit(db.session, order, user)
    db.session.commit()
    return UnitOrderOut.of_unit(order)


@endpoint(
    bp,
    "/procurement/orders/<int:order_id>/approve",
    "POST",
    summary="Approve; with enough approvals the unit is invoiced",
    response=UnitOrderOut,
    errors=(403, 404, 409, 503),
)
def approve_order(user: User, order_id: int) -> UnitOrderOut:
    order = services.unit_order(db.session, user, order_id, APPROVER, lock=True)
    services.approve(db.session, stripe_client(), order, user)
    db.session.commit()
    return UnitOrderOut.of_unit(order)


@endpoint(
    bp,
    "/procurement/orders/<int:order_id>/reject",
    "POST",
    summary="Reject with a reason (stock returns)",
    body=RejectIn,
    response=UnitOrderOut,
    errors=(403, 404, 409),
)
def reject_order(user: User, order_id: int, body: RejectIn) -> UnitOrderOut:
    order = services.unit_order(db.session, user, order_id, APPROVER, lock=True)
    services.reject(db.session, order, user, body.reason)
    db.session.commit()
    return UnitOrderOut.of_unit(order)


@endpoint(
    bp,
    "/procurement/summary",
    "GET",
    summary="Spend this year against the reserved share",
    query=YearQuery,
    response=SummaryOut,
    errors=(403,),
)
def unit_summary(user: User, query: YearQuery) -> SummaryOut:
    organisation = services.organisation_for(db.session, user, *ANY_MEMBER)
    year = query.year or shanghai_today(utcnow()).year
    return SummaryOut.model_validate(services.summary(db.session, organisation, year))


@endpoint(
    bp,
    "/finance/transfers",
    "POST",
    summary="Record a bank transfer (对公转账)",
    body=TransferIn,
    response=UnitOrderOut,
    status=201,
    roles=(Role.FINANCE,),
    errors=(404, 409, 503),
)
def record_transfer(user: User, body: TransferIn) -> UnitOrderOut:
    order = get_order(db.session, body.order, lock=True)
    services.record_transfer(
        db.session,
        stripe_client(),
        order,
        user,
        amount_fen=body.amount_fen,
        paid_on=body.paid_at,
        reference=body.reference,
        payer_account=body.payer_account,
    )
    db.session.commit()
    return UnitOrderOut.of_unit(order)


@endpoint(
    bp,
    "/finance/overdue",
    "GET",
    summary="Unit invoices past their due date",
    response=UnitOrderListOut,
    roles=(Role.FINANCE,),
)
def overdue(user: User) -> UnitOrderListOut:
    return UnitOrderListOut(
        items=[UnitOrderOut.of_unit(o) for o in services.overdue_orders(db.session, utcnow())]
    )


@endpoint(
    bp,
    "/finance/orders/<number>/cancel",
    "POST",
    summary="Cancel an unpaid unit order: void its invoice, return its stock",
    body=CancelIn,
    response=UnitOrderOut,
    roles=(Role.FINANCE,),
    errors=(404, 409, 503),
)
def cancel_unit_order(user: User, number: str, body: CancelIn) -> UnitOrderOut:
    order = get_order(db.session, number, lock=True)
    services.cancel_overdue(db.session, stripe_client(), order, user, body.reason)
    db.session.commit()
    return UnitOrderOut.of_unit(order)
