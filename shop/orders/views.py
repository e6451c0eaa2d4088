"""Cart, checkout and a buyer's orders, as pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import select
from werkzeug.wrappers import Response

from shop.accounts.models import Role, User
from shop.catalog.models import District, Product
from shop.db import utcnow
from shop.errors import Forbidden, InvalidInput, ShopError
from shop.extensions import db
from shop.orders.models import Channel, Order, Status
from shop.orders.services import (
    HUIZHOU,
    Address,
    RequestedLine,
    ShippingRule,
    orders_of,
    visible_order,
)
from shop.payments.gateway import stripe_client
from shop.payments.services import cancel_order, checkout
from shop.timezones import shanghai_today
from shop.views import html_blueprint

bp = html_blueprint("orders", __name__)

CART_KEY = "cart"
ADDRESS_FIELDS = ("name", "phone", "province", "city", "district", "detail")


# --- the cart: {sku: quantity} in the session -----------------------------------------------


def _cart() -> dict[str, int]:
    raw = session.get(CART_KEY) or {}
    return {str(sku): int(qty) for sku, qty in raw.items() if isinstance(qty, int) and qty > 0}


def _save_cart(cart: dict[str, int]) -> None:
    session[CART_KEY] = cart
    session.modified = True


def cart_count() -> int:
    return sum(_cart().values())


@dataclass(frozen=True)
class CartLine:
    product: Product
    quantity: int
    in_season: bool

    @property
    def amount_fen(self) -> int:
        return self.product.price_fen * self.quantity

    @property
    def short(self) -> bool:
        return self.quantity > self.product.stock


def _cart_lines() -> list[CartLine]:
    cart = _cart()
    if not cart:
        return []
    today = shanghai_today(utcnow())
    products = {
        p.sku: p
        for p in db.session.scalars(select(Product).where(Product.sku.in_(cart), Product.active))
    }
    if set(products) != set(cart):
        # A product taken off sale since it was added simply leaves the cart.
        _save_cart({sku: qty for sku, qty in cart.items() if sku in products})
    return [
        CartLine(products[sku], qty, products[sku].in_season(today))
        for sku, qty in cart.items()
        if sku in products
    ]


def _totals(lines: list[CartLine]) -> dict[str, int]:
    goods = sum(line.amount_fen for line in lines)
    shipping = (
        ShippingRule.from_config(current_app.config).charge(goods, [line.product for line in lines])
        if lines
        else 0
    )
    return {"goods_fen": goods, "shipping_fen": shipping, "total_fen": goods + shipping}


def _quantity(raw: str | None) -> int | None:
    try:
        value = int((raw or "").strip())
    except ValueError:
        return None
    return value if 0 <= value <= current_app.config["ORDER_MAX_QUANTITY"] else None


@bp.post("/cart/add")
def add_to_cart() -> Response:
    sku = request.form.get("sku", "")
    quantity = _quantity(request.form.get("quantity", "1"))
    product = db.session.scalar(select(Product).where(Product.sku == sku, Product.active))
    if product is None:
        abort(404)
    back = url_for("catalog.product", sku=sku)
    if not quantity:
        flash(_("请填写有效的数量。"), "error")
        return redirect(back)
    if not product.in_season(shanghai_today(utcnow())):
        flash(_("该商品非当季，暂不可售。"), "error")
        return redirect(back)
    cart = _cart()
    wanted = cart.get(sku, 0) + quantity
    if wanted > product.stock:
        flash(_("库存不足：该商品仅剩 %(stock)s 件。", stock=product.stock), "error")
        return redirect(back)
    cart[sku] = wanted
    _save_cart(cart)
    flash(_("已加入购物车。"), "success")
    return redirect(url_for("orders.cart"))


@bp.route("/cart", methods=["GET", "POST"])
def cart() -> Any:
    if request.method == "POST":
        cart = _cart()
        removed = request.form.get("remove")
        for sku in list(cart):
            quantity = _quantity(request.form.get(f"qty-{sku}"))
            if sku == removed or quantity == 0:
                del cart[sku]
            elif quantity is not None:
                cart[sku] = quantity
        _save_cart(cart)
        flash(_("已移除商品。") if removed else _("购物车已更新。"), "success")
        return redirect(url_for("orders.cart"))
    lines = _cart_lines()
    return render_template("orders/cart.html", lines=lines, **_totals(lines))


# --- checkout ----------------------------------------------------------------------------------


def _huizhou_districts() -> list[District]:
    return list(db.session.scalars(select(District).order_by(District.code)))


def _address_form() -> dict[str, str]:
    form = {name: request.form.get(name, "").strip()[:256] for name in ADDRESS_FIELDS}
    if form["city"] != HUIZHOU:
        form["district"] = request.form.get("district_other", "").strip()[:32]
    return form


def _render_checkout(
    lines: list[CartLine],
    form: dict[str, str],
    *,
    message: str | None = None,
    details: list[dict[str, Any]] | None = None,
    status: int = 200,
) -> Any:
    field_errors: dict[str, str] = {}
    other_errors: list[str] = []
    for detail in details or []:
        field = str(detail.get("field", ""))
        text = str(detail.get("message") or "")
        if field.startswith("address.") and text:
            field_errors.setdefault(field.removeprefix("address."), text)
        elif text:
            other_errors.append(text)
    return render_template(
        "orders/checkout.html",
        lines=lines,
        form=form,
        districts=_huizhou_districts(),
        huizhou=HUIZHOU,
        message=message,
        field_errors=field_errors,
        other_errors=other_errors,
        **_totals(lines),
    ), status


@bp.route("/checkout", methods=["GET", "POST"])
@login_required
def checkout_page() -> Any:
    lines = _cart_lines()
    if not lines:
        flash(_("购物车是空的，请先挑选商品。"), "error")
        return redirect(url_for("orders.cart"))
    user: User = current_user._get_current_object()
    if request.method == "GET":
        form = {
            "name": user.name,
            "phone": "",
            "province": "广东省",
            "city": HUIZHOU,
            "district": "",
            "detail": "",
        }
        return _render_checkout(lines, form)
    form = _address_form()
    try:
        order = checkout(
            db.session,
            stripe_client(),
            user,
            [RequestedLine(line.product.sku, line.quantity) for line in lines],
            Address(**form),
            current_app.config,
        )
    except InvalidInput as exc:
        db.session.rollback()
        return _render_checkout(
            lines, form, message=exc.message, details=exc.details, status=exc.status
        )
    except ShopError as exc:
        db.session.rollback()
        return _render_checkout(lines, form, message=exc.message, status=exc.status)
    _save_cart({})
    return redirect(
        order.checkout_url or url_for("orders.order_detail", number=order.number), code=303
    )


# --- my orders ---------------------------------------------------------------------------------


def _visible_order(number: str, *, lock: bool = False) -> Order:
    return visible_order(db.session, current_user._get_current_object(), number, lock=lock)


@bp.get("/orders")
@login_required
def my_orders() -> str:
    return render_template("orders/list.html", orders=orders_of(db.session, current_user))


@bp.get("/orders/<number>")
@login_required
def order_detail(number: str) -> str:
    order = _visible_order(number)
    return render_template("orders/detail.html", order=order, **_order_actions(order))


@bp.get("/orders/<number>/confirmation")
@login_required
def confirmation(number: str) -> str:
    order = _visible_order(number)
    return render_template(
        "orders/confirmation.html", order=order, confirming=order.status == Status.AWAITING_PAYMENT
    )


def _order_actions(order: Order) -> dict[str, bool]:
    user: User = current_user._get_current_object()
    awaiting = order.status == Status.AWAITING_PAYMENT
    may_cancel = order.channel != Channel.UNIT and (
        order.user_id == user.id or user.has_role(Role.ADMIN)
    )
    return {
        "can_pay": awaiting and order.user_id == user.id and bool(order.checkout_url),
        "can_cancel": may_cancel and order.status in (Status.AWAITING_PAYMENT, Status.DRAFT),
    }


@bp.post("/orders/<number>/cancel")
@login_required
def cancel(number: str) -> Response:
    order = _visible_order(number, lock=True)
    try:
        cancel_order(db.session, stripe_client(), order, current_user._get_current_object())
    except Forbidden:
        raise  # someone who may not cancel it gets the 403 page, not a flash
    except ShopError as exc:
        db.session.rollback()
        flash(exc.message, "error")
        return redirect(url_for("orders.order_detail", number=number))
    db.session.commit()
    flash(_("订单已取消，库存已退回。"), "success")
    return redirect(url_for("orders.order_detail", number=number))
