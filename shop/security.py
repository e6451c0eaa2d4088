"""Security headers on every answer of the shop, the client address behind proxies, and 429s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, abort, request
from werkzeug.middleware.proxy_fix import ProxyFix

from shop.accounts.services import TooManyAttempts
from shop.extensions import db

# Where Stripe Checkout lives when the shop talks to real Stripe (no STRIPE_API_BASE).
STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"
HSTS = "max-age=31536000"


def checkout_origin(config: Mapping[str, Any]) -> str:
    """The origin the checkout form is redirected to: Stripe's, or the emulator's in development."""
    base = config.get("STRIPE_API_BASE") or ""
    parts = urlsplit(base)
    if parts.scheme and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return STRIPE_CHECKOUT_ORIGIN


def content_security_policy(config: Mapping[str, Any]) -> str:
    """Scripts, styles and everything else from this site only; no framing, no plugins.

    A form may post here only, but the checkout form's answer is a redirect to Stripe
    Checkout, and browsers hold such a redirect to form-action too.
    """
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self'",
        "connect-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'self'",
        "form-action": f"'self' {checkout_origin(config)}",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def security_headers(config: Mapping[str, Any]) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": content_security_policy(config),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
    }
    # Only where the shop is served over HTTPS: a browser would refuse plain HTTP for a year.
    if config.get("SHOP_ENV") == "production":
        headers["Strict-Transport-Security"] = HSTS
    return headers


def init_security(app: Flask) -> None:
    """Trust the configured proxies, add the headers to every response, answer 429s with a wait."""
    hops = int(app.config.get("PROXY_FIX_HOPS", 0))
    if hops > 0:
        # nginx in front: the client address and scheme come from its X-Forwarded-* headers.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    headers = security_headers(app.config)

    @app.after_request
    def add_security_headers(response: Response) -> Response:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    app.before_request(refuse_nul_in_page_requests)
    app.register_error_handler(TooManyAttempts, too_many_attempts)


def refuse_nul_in_page_requests() -> None:
    """No page reads a NUL character, and PostgreSQL text cannot hold one: such a request names
    nothing (404 in the path) or is bad input (400), never a database error. The API checks its
    own input field by field (shop.api)."""
    from shop.api import API_PREFIX

    if request.path.startswith(API_PREFIX):
        return
    if "\x00" in request.path:
        abort(404)
    values = [*request.args.keys(), *request.args.values()]
    if request.method == "POST":
        values += [*request.form.keys(), *request.form.values()]
    if any("\x00" in value for value in values):
        abort(400, description="请求中含有不允许的字符（NUL）。")


def too_many_attempts(exc: TooManyAttempts) -> Any:
    from shop.api import error_page, error_response, is_api

    db.session.rollback()
    answer: tuple[Any, int] = (
        error_response(exc.status, exc.code, exc.message, exc.details)
        if is_api()
        else error_page(exc.status, exc.message)
    )
    return *answer, {"Retry-After": str(exc.retry_after)}
