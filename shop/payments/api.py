"""Stripe's webhook endpoint."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, jsonify, request

from shop.api import api_blueprint, endpoint, error_response
from shop.extensions import db
from shop.observability.metrics import WEBHOOK_EVENTS
from shop.payments.services import (
    InvalidEvent,
    InvalidSignature,
    handle_stripe_event,
    verify_webhook,
)

bp = api_blueprint("stripe_api", __name__)
log = logging.getLogger(__name__)
# An event whose signature failed is counted without its claimed type (anyone can claim one);
# a signed body that is no event has none.
UNVERIFIED = "unverified"
NOT_AN_EVENT = "invalid"


@endpoint(
    bp,
    "/stripe/webhook",
    "POST",
    summary="Stripe webhook (Stripe-Signature verified)",
    roles=None,
    signed="Stripe-Signature",
)
def stripe_webhook() -> Any:
    try:
        event = verify_webhook(
            request.get_data(),
            request.headers.get("Stripe-Signature"),
            current_app.config["STRIPE_WEBHOOK_SECRET"],
            current_app.config["STRIPE_WEBHOOK_TOLERANCE_SECONDS"],
        )
    except InvalidSignature as exc:
        log.warning("rejected webhook: %s", exc)
        WEBHOOK_EVENTS.labels(UNVERIFIED, "rejected").inc()
        return error_response(400, "invalid_signature", "Stripe-Signature 校验失败。")
    except InvalidEvent as exc:
        log.warning("rejected webhook: %s", exc)
        WEBHOOK_EVENTS.labels(NOT_AN_EVENT, "rejected").inc()
        return error_response(400, "invalid_event", "Webhook 内容不是有效的 Stripe 事件。")
    kind = str(event.get("type"))
    try:
        changed = handle_stripe_event(db.session, event)
        db.session.commit()
    except Exception:
        WEBHOOK_EVENTS.labels(kind, "failed").inc()
        raise
    # Applied: it changed an order or refund; ignored: a repeat, or nothing of ours.
    WEBHOOK_EVENTS.labels(kind, "applied" if changed else "ignored").inc()
    log.info("webhook %s %s: %s", event.get("id"), kind, "applied" if changed else "ignored")
    return jsonify({"received": True, "changed": changed}), 200
