"""What operations staff change: suppliers, certificates, products, stock and prices."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select

from shop.accounts.models import User
from shop.accounts.services import audit
from shop.catalog.credit_code import is_valid_credit_code
from shop.catalog.models import Category, Certification, Product, Supplier, TierPrice
from shop.catalog.services import resolve_county
from shop.db import DbSession
from shop.errors import Conflict, InvalidInput, NotFound

SEASON_FORMAT = "MM-DD"


def create_supplier(
    session: DbSession,
    actor: User,
    *,
    name: str,
    credit_code: str,
    county: str,
    contact: str | None = None,
    households_lifted: int | None = None,
) -> Supplier:
    code = credit_code.strip().upper()
    if not is_valid_credit_code(code):
        raise InvalidInput(
            "统一社会信用代码无效（应为 18 位且校验位正确）。", details=[{"field": "credit_code"}]
        )
    if session.scalar(select(Supplier.id).where(Supplier.credit_code == code)):
        raise Conflict("该统一社会信用代码已登记。", code="duplicate_credit_code")
    if not name.strip():
        raise InvalidInput("请填写供应商名称。", details=[{"field": "name"}])
    if households_lifted is not None and households_lifted < 0:
        raise InvalidInput("带动脱贫户数不能为负。", details=[{"field": "households_lifted"}])
    supplier = Supplier(
        name=name.strip(),
        credit_code=code,
        county_id=resolve_county(session, county).id,
        contact=contact,
        households_lifted=households_lifted,
    )
    session.add(supplier)
    session.flush()
    audit(
        session,
        actor,
        "supplier.create",
        f"supplier:{supplier.id}",
        after={
            "name": supplier.name,
            "credit_code": code,
            "county": county,
            "contact": contact,
            "households_lifted": households_lifted,
        },
    )
    return supplier


def add_certification(
    session: DbSession,
    actor: User,
    supplier: Supplier,
    *,
    number: str,
    valid_from: date,
    valid_to: date,
) -> Certification:
    if valid_from > valid_to:
        raise InvalidInput(
            "认定有效期的开始日期不能晚于结束日期。", details=[{"field": "valid_to"}]
        )
    if session.scalar(select(Certification.id).where(Certification.number == number)):
        raise Conflict("该认定证书编号已登记。", code="duplicate_certificate")
    certification = Certification(
        supplier=supplier, number=number.strip(), valid_from=valid_from, valid_to=valid_to
    )
    session.add(certification)
    session.flush()
    audit(
        session,
        actor,
        "certification.create",
        f"supplier:{supplier.id}",
        after={
            "number": certification.number,
            "valid_from": valid_from,
            "valid_to": valid_to,
        },
        about={"supplier": supplier.name},
    )
    return certification


def get_supplier(session: DbSession, supplier_id: int) -> Supplier:
    supplier = session.get(Supplier, supplier_id)
    if supplier is None:
        raise NotFound(f"没有编号为 {supplier_id} 的供应商。")
    return supplier


def _check_season(value: str | None, field: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    try:
        date(2024, int(value[:2]), int(value[3:]))  # a leap year, so 02-29 is allowed
        if len(value) != 5 or value[2] != "-":
            raise ValueError
    except ValueError:
        return [{"field": field, "message": f"日期格式应为 {SEASON_FORMAT}。"}]
    return []


def save_product(
    session: DbSession, actor: User, product: Product | None, changes: dict[str, Any]
) -> Product:
    """Create a product (product=None) or change the given fields of one, after checking them."""
    problems: list[dict[str, Any]] = []
    if "category" in changes:
        category = Category.parse(changes["category"])
        if category is None:
            problems.append({"field": "category", "message": "未知品类。"})
        else:
            changes["category"] = category.value
    for field in ("price_fen",):
        if field in changes and changes[field] <= 0:
            problems.append({"field": field, "message": "价格必须大于 0。"})
    if "stock" in changes and changes["stock"] < 0:
        problems.append({"field": "stock", "message": "库存不能为负。"})
    for field in ("min_order_quantity", "quantity_increment"):
        if field in changes and changes[field] < 1:
            problems.append({"field": field, "message": "必须至少为 1。"})
    problems += _check_season(changes.get("season_from"), "season_from")
    problems += _check_season(changes.get("season_to"), "season_to")
    if ("season_from" in changes) != ("season_to" in changes) and product is None:
        problems.append({"field": "season_to", "message": "销售季需同时给出开始和结束。"})
    if "supplier_id" in changes and session.get(Supplier, changes["supplier_id"]) is None:
        problems.append({"field": "supplier_id", "message": "供应商不存在。"})
    if product is None and session.scalar(select(Product.id).where(Product.sku == changes["sku"])):
        problems.append({"field": "sku", "message": "该商品编码已存在。"})
    tiers = changes.pop("tiers", None)
    if tiers is not None:
        problems += _tier_problems(tiers)
    if problems:
        raise InvalidInput("商品信息有误。", details=problems)
    created = product is None
    before = {key: getattr(product, key) for key in changes} if product else None
    if product is None:
        product = Product(**changes)
        session.add(product)
    else:
        for key, value in changes.items():
            setattr(product, key, value)
    if tiers is not None:
        if before is not None:
            before["tiers"] = [[t.min_quantity, t.price_fen] for t in product.tiers]
        if product.tiers:
            product.tiers = []
            session.flush()  # the old tiers go before the new ones meet the same quantities
        product.tiers = [TierPrice(min_quantity=q, price_fen=p) for q, p in sorted(tiers)]
        changes["tiers"] = sorted(tiers)
    session.flush()
    audit(
        session,
        actor,
        "product.create" if created else "product.update",
        f"product:{product.sku}",
        before=before,
        after=changes,
    )
    return product


def _tier_problems(tiers: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Tier prices: from 2 units up, each quantity once, each price positive."""
    problems = []
    quantities = [q for q, _ in tiers]
    if len(set(quantities)) != len(quantities):
        problems.append({"field": "tiers", "message": "同一起订数量不能有两个阶梯价。"})
    if any(q < 2 for q in quantities):
        problems.append({"field": "tiers", "message": "阶梯价的起订数量至少为 2。"})
    if any(p <= 0 for _, p in tiers):
        problems.append({"field": "tiers", "message": "阶梯价必须大于 0。"})
    return problems


def get_product_for_update(session: DbSession, sku: str) -> Product:
    product = session.scalar(
        select(Product)
        .where(Product.sku == sku)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if product is None:
        raise NotFound(f"没有编码为 {sku} 的商品。")
    return product
