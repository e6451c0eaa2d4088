"""The OpenAPI document and the health check."""

from __future__ import annotations

from typing import Any

from flask import jsonify
from sqlalchemy import text

from shop.api import api_blueprint, openapi_document
from shop.extensions import db

bp = api_blueprint("meta_api", __name__)


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document())


@bp.get("/health")
def health() -> Any:
    db.session.execute(text("SELECT 1"))
    return jsonify({"status": "ok"})
