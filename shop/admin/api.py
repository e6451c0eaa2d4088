"""Admin JSON API: suppliers, certifications, products, stock and shipping; the audit trail."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select

from shop.accounts.audit_log import READERS, AuditFilter, audit_query
from shop.accounts.models import AuditEntry, Role, User
from shop.admin import services
from shop.api import api_blueprint, endpoint
from shop.catalog.api import ProductOut
from shop.catalog.models import Supplier
from shop.catalog.services import get_product
from shop.db import utcnow
from shop.errors import NotFound
from shop.extensions import db
from shop.orders.api import OrderOut
from shop.orders.services import get_order, mark_shipped
from shop.procurement import services as procurement
from shop.procurement.models import Organisation
from shop.timezones import shanghai_today

bp = api_blueprint("admin_api", __name__)
ADMIN = (Role.ADMIN,)


class CertificationIn(BaseModel):
    number: str = Field(min_length=1, max_length=64)
    valid_from: date
    valid_to: date


class CertificationOut(CertificationIn):
    id: int


class SupplierIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    credit_code: str = Field(max_length=18)
    county: str
    contact: str | None = Field(None, max_length=128)
    households_lifted: int | None = None


class SupplierOut(BaseModel):
    id: int
    name: str
    credit_code: str
    county: str
    contact: str | None
    households_lifted: int | None
    certifications: list[CertificationOut]

    @classmethod
    def of(cls, supplier: Supplier) -> SupplierOut:
        return cls(
            id=supplier.id,
            name=supplier.name,
            credit_code=supplier.credit_code,
            county=supplier.county.name,
            contact=supplier.contact,
            households_lifted=supplier.households_lifted,
            certifications=[
                CertificationOut.model_validate(c, from_attributes=True)
                for c in supplier.certifications
            ],
        )


class SupplierListOut(BaseModel):
    items: list[SupplierOut]


class ProductIn(BaseModel):
    sku: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = Field(min_length=1, max_length=128)
    name_en: str = Field(min_length=1, max_length=128)
    category: str
    supplier_id: int
    pack: str = Field(min_length=1, max_length=32)
    price_fen: int
    stock: int = 0
    season_from: str | None = None
    season_to: str | None = None
    certified: bool = False
    cold_chain: bool = False
    min_order_quantity: int = 1
    quantity_increment: int = 1
    description: str = Field("", max_length=4000)


class TierIn(BaseModel):
    min_quantity: int
    price_fen: int


class ProductPatch(BaseModel):
    """The fields to change: absent or null leaves one as it is, but null season ends clear it."""

    name: str | None = Field(None, min_length=1, max_length=128)
    name_en: str | None = Field(None, min_length=1, max_length=128)
    pack: str | None = Field(None, min_length=1, max_length=32)
    price_fen: int | None = None
    stock: int | None = None
    season_from: str | None = None
    season_to: str | None = None
    certified: bool | None = None
    cold_chain: bool | None = None
    active: bool | None = None
    min_order_quantity: int | None = None
    quantity_increment: int | None = None
    description: str | None = Field(None, max_length=4000)
    tiers: list[TierIn] | None = Field(
        None, max_length=20, description="unit tier prices; replaces all of them ([] removes)"
    )


class ShipmentIn(BaseModel):
    carrier: str = Field(max_length=64)
    tracking_number: str = Field(max_length=64)


def _product_out(sku: str) -> ProductOut:
    today = shanghai_today(utcnow())
    view = get_product(db.session, sku, today, include_inactive=True)
    return ProductOut.of(view, view.product.in_season(today)).with_tiers(view.product)


@endpoint(
    bp,
    "/admin/suppliers",
    "GET",
    summary="Suppliers with their certificates",
    response=SupplierListOut,
    roles=ADMIN,
)
def list_suppliers(user: User) -> SupplierListOut:
    suppliers = db.session.scalars(select(Supplier).order_by(Supplier.id))
    return SupplierListOut(items=[SupplierOut.of(s) for s in suppliers])


@endpoint(
    bp,
    "/admin/suppliers",
    "POST",
    summary="Register a supplier",
    body=SupplierIn,
    response=SupplierOut,
    status=201,
    roles=ADMIN,
    errors=(409,),
)
def create_supplier(user: User, body: SupplierIn) -> SupplierOut:
    supplier = services.create_supplier(db.session, user, **body.model_dump())
    db.session.commit()
    return SupplierOut.of(supplier)


@endpoint(
    bp,
    "/admin/suppliers/<int:supplier_id>/certifications",
    "POST",
    summary="Record a 消费帮扶产品认定 certificate",
    body=CertificationIn,
    response=SupplierOut,
    status=201,
    roles=ADMIN,
    errors=(404, 409),
)
def add_certification(user: User, supplier_id: int, body: CertificationIn) -> SupplierOut:
    supplier = services.get_supplier(db.session, supplier_id)
    services.add_certification(db.session, user, supplier, **body.model_dump())
    db.session.commit()
    db.session.refresh(supplier)
    return SupplierOut.of(supplier)


@endpoint(
    bp,
    "/admin/products",
    "POST",
    summary="Create a product",
    body=ProductIn,
    response=ProductOut,
    status=201,
    roles=ADMIN,
)
def create_product(user: User, body: ProductIn) -> ProductOut:
    product = services.save_product(db.session, user, None, body.model_dump())
    db.session.commit()
    return _product_out(product.sku)


@endpoint(
    bp,
    "/admin/products/<sku>",
    "PATCH",
    summary="Change stock, price or details",
    body=ProductPatch,
    response=ProductOut,
    roles=ADMIN,
    errors=(404,),
)
def update_product(user: User, sku: str, body: ProductPatch) -> ProductOut:
    product = services.get_product_for_update(db.session, sku)
    changes = {
        key: value
        for key, value in body.model_dump(exclude_unset=True).items()
        if value is not None or key in ("season_from", "season_to")
    }
    if body.tiers is not None:
        changes["tiers"] = [(t.min_quantity, t.price_fen) for t in body.tiers]
    services.save_product(db.session, user, product, changes)
    db.session.commit()
    return _product_out(sku)


@endpoint(
    bp,
    "/admin/orders/<number>/shipment",
    "POST",
    summary="Mark an order shipped",
    body=ShipmentIn,
    response=OrderOut,
    roles=ADMIN,
    errors=(404, 409),
)
def ship_order(user: User, number: str, body: ShipmentIn) -> OrderOut:
    order = get_order(db.session, number, lock=True)
    mark_shipped(
        db.session, order, carrier=body.carrier, tracking_number=body.tracking_number, actor=user
    )
    db.session.commit()
    return OrderOut.of(order)


class OrganisationIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    type: str = Field(description="机关事业单位 | 国有企业 | 工会 | 民营企业 | 社会组织")
    credit_code: str = Field(max_length=18)
    district: str = Field(description="a Huizhou district, e.g. 惠城区")
    reserved_target_fen: int = Field(description="annual reserved-share target (预留份额)")
    invoice_title: str = Field(max_length=128)
    tax_id: str = Field(max_length=32)
    default_funding: str | None = None
    payment_terms_days: int = 30
    dual_approval_above_fen: int | None = None


class MemberOut(BaseModel):
    email: str
    name: str
    role: str


class OrganisationOut(BaseModel):
    id: int
    name: str
    type: str
    credit_code: str
    district: str
    reserved_target_fen: int
    invoice_title: str
    tax_id: str
    default_funding: str
    payment_terms_days: int
    dual_approval_above_fen: int | None
    members: list[MemberOut]

    @classmethod
    def of(cls, organisation: Organisation) -> OrganisationOut:
        return cls(
            id=organisation.id,
            name=organisation.name,
            type=organisation.type,
            credit_code=organisation.credit_code,
            district=organisation.district.name,
            reserved_target_fen=organisation.reserved_target_fen,
            invoice_title=organisation.invoice_title,
            tax_id=organisation.tax_id,
            default_funding=organisation.default_funding,
            payment_terms_days=organisation.payment_terms_days,
            dual_approval_above_fen=organisation.dual_approval_above_fen,
            members=[
                MemberOut(email=m.user.email, name=m.user.name, role=m.role)
                for m in organisation.members
            ],
        )


class OrganisationListOut(BaseModel):
    items: list[OrganisationOut]


class MemberIn(BaseModel):
    email: str = Field(max_length=254)
    role: str = Field(description="requester | approver | finance_viewer")
    name: str | None = Field(None, max_length=64)
    password: str | None = Field(None, max_length=1024, description="creates the account if new")


@endpoint(
    bp,
    "/admin/organisations",
    "GET",
    summary="Buying units",
    response=OrganisationListOut,
    roles=ADMIN,
)
def list_organisations(user: User) -> OrganisationListOut:
    units = db.session.scalars(select(Organisation).order_by(Organisation.id))
    return OrganisationListOut(items=[OrganisationOut.of(o) for o in units])


@endpoint(
    bp,
    "/admin/organisations",
    "POST",
    summary="Register a buying unit",
    body=OrganisationIn,
    response=OrganisationOut,
    status=201,
    roles=ADMIN,
    errors=(409,),
)
def create_organisation(user: User, body: OrganisationIn) -> OrganisationOut:
    organisation = procurement.create_organisation(db.session, user, **body.model_dump())
    db.session.commit()
    return OrganisationOut.of(organisation)


@endpoint(
    bp,
    "/admin/organisations/<int:organisation_id>/members",
    "POST",
    summary="Give a person a role in a unit",
    body=MemberIn,
    response=OrganisationOut,
    status=201,
    roles=ADMIN,
    errors=(404, 409),
)
def add_member(user: User, organisation_id: int, body: MemberIn) -> OrganisationOut:
    organisation = db.session.get(Organisation, organisation_id)
    if organisation is None:
        raise NotFound(f"没有编号为 {organisation_id} 的单位。")
    procurement.add_member(db.session, user, organisation, **body.model_dump())
    db.session.commit()
    return OrganisationOut.of(organisation)


# --- the audit trail ---------------------------------------------------------------------------

# PostgreSQL refuses NUL in text: a filter holding one is bad input, not a server error.
NO_NUL = r"^[^\x00]*$"


class AuditQuery(BaseModel):
    action: str = Field("", max_length=64, pattern=NO_NUL, description="e.g. product.update")
    actor: str = Field("", max_length=254, pattern=NO_NUL, description="part of the actor's e-mail")
    target: str = Field("", max_length=128, pattern=NO_NUL, description="part of the target")
    start: date | None = Field(None, alias="from", description="first Shanghai day, included")
    end: date | None = Field(None, alias="to", description="last Shanghai day, included")
    page: int = Field(1, ge=1, le=100_000)
    per_page: int = Field(50, ge=1, le=200)


class AuditEntryOut(BaseModel):
    id: int
    at: datetime = Field(description="when, in UTC")
    actor_id: int | None = Field(description="None: the command line")
    actor_email: str | None
    actor_name: str | None
    action: str
    target: str
    before: dict[str, Any] | None = Field(description="None for what was created")
    after: dict[str, Any]
    about: dict[str, Any] | None = Field(description="facts about the target left unchanged")

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        return cls(
            id=entry.id,
            at=entry.at,
            actor_id=entry.actor_id,
            actor_email=entry.actor.email if entry.actor else None,
            actor_name=entry.actor.name if entry.actor else None,
            action=entry.action,
            target=entry.target,
            before=entry.before,
            after=entry.after,
            about=entry.about,
        )


class AuditPageOut(BaseModel):
    items: list[AuditEntryOut]
    page: int
    per_page: int
    total: int


@endpoint(
    bp,
    "/admin/audit",
    "GET",
    summary="The audit trail of staff changes, newest first (read-only)",
    query=AuditQuery,
    response=AuditPageOut,
    roles=READERS,
)
def audit_log(user: User, query: AuditQuery) -> AuditPageOut:
    filters = AuditFilter(
        action=query.action,
        actor_email=query.actor,
        target=query.target,
        start=query.start,
        end=query.end,
    )
    page = db.paginate(
        audit_query(filters), page=query.page, per_page=query.per_page, error_out=False
    )
    return AuditPageOut(
        items=[AuditEntryOut.of(entry) for entry in page.items],
        page=query.page,
        per_page=query.per_page,
        total=page.total or 0,
    )
