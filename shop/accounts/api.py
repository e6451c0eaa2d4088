"""Accounts JSON API: bearer tokens for scripts, who I am, the unit I work for."""

from __future__ import annotations

from datetime import datetime

from flask import Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field

from shop.accounts.models import User
from shop.accounts.services import (
    employer_choices,
    issue_token,
    live_tokens,
    revoke_token,
    set_employer,
    sign_in,
)
from shop.api import api_blueprint, endpoint
from shop.extensions import db
from shop.procurement.models import Organisation

bp = api_blueprint("auth_api", __name__)


class TokenRequest(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class TokenOut(BaseModel):
    token: str
    expires_in_days: int


class TokenInfo(BaseModel):
    """A token without its secret: only its hash is stored, so nothing of it can be shown again."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    expires_at: datetime
    revoked: bool


class TokenListOut(BaseModel):
    items: list[TokenInfo] = Field(description="my tokens that have not expired, newest first")


class MeOut(BaseModel):
    email: str
    name: str
    role: str
    employer_organisation_id: int | None = Field(
        description="the unit I work for: my own purchases also show in its progress"
    )
    employer_organisation: str | None

    @classmethod
    def of(cls, user: User) -> MeOut:
        employer = (
            db.session.get(Organisation, user.employer_organisation_id)
            if user.employer_organisation_id
            else None
        )
        return cls(
            email=user.email,
            name=user.name,
            role=user.role,
            employer_organisation_id=employer.id if employer else None,
            employer_organisation=employer.name if employer else None,
        )


class EmployerIn(BaseModel):
    organisation_id: int | None = Field(description="a buying unit's id; null: none")


class OrganisationOut(BaseModel):
    id: int
    name: str
    district: str


class OrganisationListOut(BaseModel):
    items: list[OrganisationOut]


@endpoint(
    bp,
    "/auth/tokens",
    "POST",
    summary="Exchange e-mail and password for a bearer token",
    body=TokenRequest,
    response=TokenOut,
    status=201,
    roles=None,
    errors=(401, 429),
)
def create_token(body: TokenRequest) -> TokenOut:
    user = sign_in(
        db.session,
        current_app.extensions["login_throttle"],
        address=request.remote_addr or "",
        email=body.email,
        password=body.password,
    )
    days = current_app.config["API_TOKEN_DAYS"]
    token = issue_token(db.session, user, days=days)
    db.session.commit()
    return TokenOut(token=token, expires_in_days=days)


@endpoint(
    bp, "/auth/tokens", "GET", summary="My bearer tokens (never the secret)", response=TokenListOut
)
def list_tokens(user: User) -> TokenListOut:
    return TokenListOut(items=[TokenInfo.model_validate(t) for t in live_tokens(db.session, user)])


@endpoint(
    bp,
    "/auth/tokens/<int:token_id>",
    "DELETE",
    summary="Revoke one of my bearer tokens; it is refused from then on",
    status=204,
    errors=(404,),
)
def delete_token(user: User, token_id: int) -> Response:
    revoke_token(db.session, user, token_id)
    db.session.commit()
    return Response(status=204)


@endpoint(bp, "/me", "GET", summary="Who the token or session belongs to", response=MeOut)
def me(user: User) -> MeOut:
    return MeOut.of(user)


@endpoint(
    bp,
    "/account/employer",
    "PUT",
    summary="Name the unit I work for (or none)",
    body=EmployerIn,
    response=MeOut,
)
def put_employer(user: User, body: EmployerIn) -> MeOut:
    set_employer(db.session, user, body.organisation_id)
    db.session.commit()
    return MeOut.of(user)


@endpoint(
    bp,
    "/account/employers",
    "GET",
    summary="The units a person may name as their employer",
    response=OrganisationListOut,
)
def list_employers(user: User) -> OrganisationListOut:
    return OrganisationListOut(
        items=[
            OrganisationOut(id=o.id, name=o.name, district=o.district.name)
            for o in employer_choices(db.session)
        ]
    )
