"""Orders JSON API: place, list, show, cancel and refund orders."""

from __future__ import annotations

from datetime import datetime

from flask import current_app
from pydantic import BaseModel, Field, model_validator

from shop.accounts.models import Role, User
from shop.api import api_blueprint, endpoint
from shop.extensions import db
from shop.orders.models import Order
from shop.orders.services import Address, RequestedLine, orders_of, visible_order
from shop.payments import services as payments
from shop.payments.gateway import stripe_client

bp = api_blueprint("orders_api", __name__)


class LineIn(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    quantity: int


class AddressIn(BaseModel):
    name: str = Field(max_length=64)
    phone: str = Field(max_length=32)
    province: str = Field(max_length=32)
    city: str = Field(max_length=32)
    district: str = Field(max_length=32)
    detail: str = Field(max_length=256)


class OrderIn(BaseModel):
    lines: list[LineIn] = Field(max_length=100)
    address: AddressIn


class LineOut(BaseModel):
    sku: str
    name: str
    pack: str
    county: str
    unit_price_fen: int
    quantity: int
    amount_fen: int
    refunded_quantity: int


class AddressOut(AddressIn):
    pass


class StatusChangeOut(BaseModel):
    from_status: str | None
    to_status: str
    at: datetime
    reason: str


class RefundOut(BaseModel):
    id: int
    kind: str
    amount_fen: int
    status: str
    created_at: datetime


class OrderOut(BaseModel):
    number: str
    status: str
    channel: str
    goods_fen: int
    shipping_fen: int
    total_fen: int
    refunded_fen: int
    currency: str
    created_at: datetime
    expires_at: datetime | None
    paid_at: datetime | None
    checkout_url: str | None
    carrier: str | None
    tracking_number: str | None
    lines: list[LineOut]
    address: AddressOut | None
    history: list[StatusChangeOut]
    refunds: list[RefundOut]

    @classmethod
    def of(cls, order: Order) -> OrderOut:
        address = order.addresses[0] if order.addresses else None
        return cls(
            number=order.number,
            status=order.status,
            channel=order.channel,
            goods_fen=order.goods_fen,
            shipping_fen=order.shipping_fen,
            total_fen=order.total_fen,
            refunded_fen=order.refunded_fen,
            currency=order.currency,
            created_at=order.created_at,
            expires_at=order.expires_at,
            paid_at=order.paid_at,
            checkout_url=order.checkout_url if order.status == "awaiting_payment" else None,
            carrier=order.carrier,
            tracking_number=order.tracking_number,
            lines=[
                LineOut(
                    sku=line.sku,
                    name=line.name,
                    pack=line.pack,
                    county=line.county.name,
                    unit_price_fen=line.unit_price_fen,
                    quantity=line.quantity,
                    amount_fen=line.amount_fen,
                    refunded_quantity=line.refunded_quantity,
                )
                for line in order.lines
            ],
            address=AddressOut.model_validate(address, from_attributes=True) if address else None,
            history=[
                StatusChangeOut.model_validate(h, from_attributes=True) for h in order.history
            ],
            refunds=[RefundOut.model_validate(r, from_attributes=True) for r in order.refunds],
        )


class OrderListOut(BaseModel):
    items: list[OrderOut]


class RefundLineIn(BaseModel):
    sku: str
    quantity: int


class RefundIn(BaseModel):
    amount_fen: int | None = None
    lines: list[RefundLineIn] | None = Field(None, max_length=100)
    reason: str = Field("", max_length=256)

    @model_validator(mode="after")
    def one_way(self) -> RefundIn:
        if self.amount_fen is not None and self.lines:
            raise ValueError("give amount_fen or lines, not both")
        return self


@endpoint(
    bp,
    "/orders",
    "POST",
    summary="Place an order and open its Stripe Checkout",
    body=OrderIn,
    response=OrderOut,
    status=201,
    errors=(409, 503),
)
def create_order(user: User, body: OrderIn) -> OrderOut:
    order = payments.checkout(
        db.session,
        stripe_client(),
        user,
        [RequestedLine(line.sku, line.quantity) for line in body.lines],
        Address(**body.address.model_dump()),
        current_app.config,
    )
    return OrderOut.of(order)


@endpoint(bp, "/orders", "GET", summary="My orders", response=OrderListOut)
def list_orders(user: User) -> OrderListOut:
    return OrderListOut(items=[OrderOut.of(o) for o in orders_of(db.session, user)])


@endpoint(bp, "/orders/<number>", "GET", summary="One order", response=OrderOut, errors=(404,))
def show_order(user: User, number: str) -> OrderOut:
    return OrderOut.of(visible_order(db.session, user, number))


@endpoint(
    bp,
    "/orders/<number>/cancel",
    "POST",
    summary="Cancel an unpaid order",
    response=OrderOut,
    errors=(403, 404, 409, 503),
)
def cancel_order(user: User, number: str) -> OrderOut:
    order = visible_order(db.session, user, number, lock=True)
    payments.cancel_order(db.session, stripe_client(), order, user)
    db.session.commit()
    return OrderOut.of(order)


@endpoint(
    bp,
    "/orders/<number>/refunds",
    "POST",
    summary="Refund a paid order (admin)",
    body=RefundIn,
    response=OrderOut,
    status=201,
    roles=(Role.ADMIN,),
    errors=(404, 409, 503),
)
def refund_order(user: User, number: str, body: RefundIn) -> OrderOut:
    order = payments.refund(
        db.session,
        stripe_client(),
        number,
        actor=user,
        amount_fen=body.amount_fen,
        lines=[(line.sku, line.quantity) for line in body.lines] if body.lines else None,
        reason=body.reason,
    )
    return OrderOut.of(order)
