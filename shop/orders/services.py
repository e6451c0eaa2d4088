"""Placing orders, moving them through their life cycle, and holding stock for them."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import joinedload, selectinload

from shop.accounts.models import Role, User
from shop.accounts.services import audit
from shop.catalog.models import District, Product, Supplier
from shop.db import DbSession, utcnow
from shop.errors import Conflict, Forbidden, InvalidInput, NotFound
from shop.orders.models import (
    RESERVING,
    TRANSITIONS,
    Channel,
    Funding,
    Order,
    OrderAddress,
    OrderLine,
    Refund,
    Status,
    StatusChange,
)
from shop.timezones import SHANGHAI, shanghai_today

PHONE = re.compile(r"^(1[3-9]\d{9}|0\d{2,3}-?\d{7,8})$")
HUIZHOU = "惠州市"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class OutOfStock(Conflict):
    code = "out_of_stock"


@dataclass(frozen=True)
class RequestedLine:
    sku: str
    quantity: int


@dataclass(frozen=True)
class Address:
    name: str
    phone: str
    province: str
    city: str
    district: str
    detail: str


@dataclass(frozen=True)
class ShippingRule:
    """Flat fee below a threshold, free above it; cold-chain goods always add a surcharge."""

    fee_fen: int
    free_above_fen: int
    cold_chain_surcharge_fen: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ShippingRule:
        return cls(
            fee_fen=config["SHIPPING_FEE_FEN"],
            free_above_fen=config["SHIPPING_FREE_ABOVE_FEN"],
            cold_chain_surcharge_fen=config["COLD_CHAIN_SURCHARGE_FEN"],
        )

    def charge(self, goods_fen: int, products: Sequence[Product]) -> int:
        fen = 0 if goods_fen >= self.free_above_fen else self.fee_fen
        if any(p.cold_chain for p in products):
            fen += self.cold_chain_surcharge_fen
        return fen


def transition(
    session: DbSession, order: Order, to: Status, *, actor: User | None = None, reason: str = ""
) -> None:
    """Move an order to `to`, or refuse; leaving a reserving state for `cancelled` frees stock."""
    current = Status(order.status)
    if to not in TRANSITIONS[current]:
        raise InvalidTransition(
            f"订单 {order.number} 当前状态为 {current.value}，不能变为 {to.value}。",
            details=[{"from": current.value, "to": to.value}],
        )
    if to is Status.CANCELLED and current in RESERVING:
        _release_stock(session, order)
    order.status = to
    order.history.append(
        StatusChange(
            from_status=current, to_status=to, actor_id=actor.id if actor else None, reason=reason
        )
    )


def _release_stock(session: DbSession, order: Order) -> None:
    for line in sorted(order.lines, key=lambda line: line.product_id):
        session.execute(
            update(Product)
            .where(Product.id == line.product_id)
            .values(stock=Product.stock + line.quantity)
        )


def reserve_stock(session: DbSession, wanted: Sequence[tuple[Product, int]]) -> None:
    """Take stock with conditional updates, in a fixed order so concurrent orders never deadlock.

    The caller's transaction is rolled back on OutOfStock, which undoes the lines taken so far.
    """
    for product, quantity in sorted(wanted, key=lambda pair: pair[0].id):
        result = session.execute(
            update(Product)
            .where(Product.id == product.id, Product.stock >= quantity)
            .values(stock=Product.stock - quantity)
            .execution_options(synchronize_session=False)
        )
        taken = cast(CursorResult[Any], result).rowcount
        if taken != 1:
            raise OutOfStock(
                f"{product.name}（{product.sku}）库存不足。",
                details=[{"sku": product.sku, "requested": quantity}],
            )


def check_lines(
    session: DbSession, requested: Sequence[RequestedLine], *, today: date, max_quantity: int
) -> list[tuple[Product, int]]:
    """Resolve SKUs and refuse anything that cannot be sold today, listing every problem."""
    if not requested:
        raise InvalidInput("订单至少需要一件商品。", details=[{"field": "lines"}])
    skus = {line.sku for line in requested}
    products = {
        p.sku: p
        for p in session.scalars(
            select(Product)
            .where(Product.sku.in_(skus))
            .options(
                joinedload(Product.supplier).joinedload(Supplier.county),
                joinedload(Product.supplier).selectinload(Supplier.certifications),
            )
        ).unique()
    }
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    checked: list[tuple[Product, int]] = []
    for index, line in enumerate(requested):
        field = f"lines[{index}]"
        product = products.get(line.sku)
        if line.sku in seen:
            problems.append({"field": f"{field}.sku", "message": f"商品 {line.sku} 重复出现。"})
            continue
        seen.add(line.sku)
        if product is None or not product.active:
            problems.append({"field": f"{field}.sku", "message": f"没有编码为 {line.sku} 的商品。"})
            continue
        if line.quantity <= 0:
            problems.append({"field": f"{field}.quantity", "message": "数量必须大于 0。"})
            continue
        if line.quantity > max_quantity:
            problems.append(
                {"field": f"{field}.quantity", "message": f"单个商品数量不能超过 {max_quantity}。"}
            )
            continue
        if not product.in_season(today):
            problems.append(
                {
                    "field": f"{field}.sku",
                    "message": f"{product.name} 不在销售季（{product.season_from} 至 "
                    f"{product.season_to}）。",
                }
            )
            continue
        checked.append((product, line.quantity))
    if problems:
        raise InvalidInput("订单中有无法下单的商品。", details=problems)
    return checked


def check_address(session: DbSession, address: Address) -> OrderAddress:
    problems = [
        {"field": f"address.{name}", "message": "此项必填。"}
        for name in ("name", "phone", "province", "city", "district", "detail")
        if not getattr(address, name).strip()
    ]
    if address.phone.strip() and not PHONE.match(address.phone.strip()):
        problems.append({"field": "address.phone", "message": "请填写有效的手机或固定电话号码。"})
    district_id = None
    if address.city.strip() == HUIZHOU:
        district_id = session.scalar(select(District.id).where(District.name == address.district))
        if district_id is None:
            problems.append(
                {
                    "field": "address.district",
                    "message": f"惠州市没有名为「{address.district}」的区县。",
                }
            )
    if problems:
        raise InvalidInput("收货地址不完整或有误。", details=problems)
    return OrderAddress(
        name=address.name.strip(),
        phone=address.phone.strip(),
        province=address.province.strip(),
        city=address.city.strip(),
        district=address.district.strip(),
        district_id=district_id,
        detail=address.detail.strip(),
    )


def order_line(
    product: Product, quantity: int, unit_price_fen: int, address: OrderAddress, today: date
) -> OrderLine:
    """A line with what the product was at order time: price, origin, certification."""
    return OrderLine(
        product_id=product.id,
        address=address,
        sku=product.sku,
        name=product.name,
        pack=product.pack,
        category=product.category,
        county_id=product.supplier.county_id,
        supplier_id=product.supplier_id,
        certified=product.certified_on(today),
        cooperation_county=product.supplier.county.cooperation,
        unit_price_fen=unit_price_fen,
        quantity=quantity,
        amount_fen=unit_price_fen * quantity,
    )


def new_order_number(session: DbSession, now: datetime) -> str:
    while True:
        number = f"HQ{now.astimezone(SHANGHAI):%y%m%d}{secrets.randbelow(10**8):08d}"
        if session.scalar(select(Order.id).where(Order.number == number)) is None:
            return number


def place_order(
    session: DbSession,
    user: User,
    requested: Sequence[RequestedLine],
    address: Address,
    *,
    shipping: ShippingRule,
    payment_minutes: int,
    max_quantity: int,
) -> Order:
    """Check, price and reserve an individual's order: it leaves here `awaiting_payment`.

    Prices come from the catalogue only. Nothing is committed; on any error the caller rolls back.
    """
    now = utcnow()
    today = shanghai_today(now)
    problems: list[dict[str, Any]] = []
    try:
        checked = check_lines(session, requested, today=today, max_quantity=max_quantity)
    except InvalidInput as exc:
        problems += exc.details
    try:
        order_address = check_address(session, address)
    except InvalidInput as exc:
        problems += exc.details
    if problems:
        raise InvalidInput("订单信息有误，请修改后重试。", details=problems)
    goods_fen = sum(product.price_fen * quantity for product, quantity in checked)
    shipping_fen = shipping.charge(goods_fen, [product for product, _ in checked])
    order = Order(
        number=new_order_number(session, now),
        channel=Channel.ONLINE,
        status=Status.DRAFT,
        user_id=user.id,
        funding=Funding.PERSONAL,
        goods_fen=goods_fen,
        shipping_fen=shipping_fen,
        total_fen=goods_fen + shipping_fen,
        created_at=now,
        expires_at=now + timedelta(minutes=payment_minutes),
    )
    order.addresses.append(order_address)
    for product, quantity in checked:
        order.lines.append(order_line(product, quantity, product.price_fen, order_address, today))
    order.history.append(StatusChange(from_status=None, to_status=Status.DRAFT, actor_id=user.id))
    session.add(order)
    transition(session, order, Status.AWAITING_PAYMENT, actor=user, reason="库存已预留")
    session.flush()
    # Last, so the hot stock rows stay locked only from here to the caller's commit.
    reserve_stock(session, checked)
    return order


def get_order(session: DbSession, number: str, *, lock: bool = False) -> Order:
    """The order with its lines, addresses, history and refunds; `lock` takes its row lock and
    re-reads it, so a decision is never taken on a stale copy."""
    query = (
        select(Order)
        .where(Order.number == number)
        .options(
            selectinload(Order.lines).joinedload(OrderLine.county),
            selectinload(Order.addresses),
            selectinload(Order.history),
            selectinload(Order.refunds).selectinload(Refund.lines),
        )
    )
    if lock:
        query = query.with_for_update(of=Order).execution_options(populate_existing=True)
    order = session.scalar(query)
    if order is None:
        raise NotFound(f"没有编号为 {number} 的订单。")
    return order


def visible_order(session: DbSession, user: User, number: str, *, lock: bool = False) -> Order:
    """An order this person may see: their own, or any for admin and finance.

    Anyone else is told it does not exist, so order numbers cannot be probed.
    """
    order = get_order(session, number, lock=lock)
    if order.user_id != user.id and not user.has_role(Role.ADMIN, Role.FINANCE):
        raise NotFound(f"没有编号为 {number} 的订单。")
    return order


def cancellation_reason(order: Order, user: User) -> str:
    """Why `user` may cancel `order` (the buyer or operations); Forbidden for anyone else.

    Never a unit order: its Stripe invoice is voided only by the unit's approver rejecting it or
    by finance cancelling it once overdue, so cancelling it here would leave the invoice payable.
    """
    if order.channel == Channel.UNIT:
        raise Forbidden("单位订单不能在此取消：待审批的由审批人驳回，逾期未付的由财务取消。")
    if order.user_id == user.id:
        return "买家取消"
    if user.has_role(Role.ADMIN):
        return "运营取消"
    raise Forbidden("只有下单人或运营人员可以取消订单。")


def orders_of(session: DbSession, user: User) -> Sequence[Order]:
    return session.scalars(
        select(Order)
        .where(Order.user_id == user.id)
        .options(
            selectinload(Order.lines).joinedload(OrderLine.county),
            selectinload(Order.addresses),
            selectinload(Order.history),
            selectinload(Order.refunds),
        )
        .order_by(Order.created_at.desc())
    ).all()


def mark_shipped(
    session: DbSession, order: Order, *, carrier: str, tracking_number: str, actor: User
) -> None:
    if not carrier.strip() or not tracking_number.strip():
        raise InvalidInput(
            "请填写承运商和运单号。",
            details=[{"field": "carrier"}, {"field": "tracking_number"}],
        )
    before = {"status": order.status}
    transition(session, order, Status.SHIPPED, actor=actor, reason=f"{carrier} {tracking_number}")
    order.carrier = carrier.strip()
    order.tracking_number = tracking_number.strip()
    audit(
        session,
        actor,
        "order.ship",
        order.number,
        before=before,
        after={
            "status": order.status,
            "carrier": order.carrier,
            "tracking_number": order.tracking_number,
        },
    )


def expired_unpaid(session: DbSession, now: datetime) -> Sequence[Order]:
    return session.scalars(
        select(Order)
        .where(
            Order.status == Status.AWAITING_PAYMENT,
            Order.expires_at <= now,
            Order.channel == Channel.ONLINE,
        )
        .order_by(Order.id)
    ).all()
