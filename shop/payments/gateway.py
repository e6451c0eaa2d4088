"""The one StripeClient of an app, built from config: real Stripe or our emulator by API base."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stripe
from flask import current_app


def build_stripe_client(config: Mapping[str, Any]) -> stripe.StripeClient:
    key = config["STRIPE_SECRET_KEY"]
    if config.get("SHOP_ENV") != "production" and key.startswith(("sk_live_", "rk_live_")):
        raise RuntimeError("a live Stripe key is configured outside production; refusing to start")
    base = config.get("STRIPE_API_BASE") or None
    return stripe.StripeClient(
        key,
        base_addresses={"api": base} if base else None,
        max_network_retries=config["STRIPE_MAX_NETWORK_RETRIES"],
        http_client=stripe.RequestsClient(timeout=config["STRIPE_TIMEOUT_SECONDS"]),
    )


def stripe_client() -> stripe.StripeClient:
    """The StripeClient of the running app."""
    client: stripe.StripeClient = current_app.extensions["stripe"]
    return client
