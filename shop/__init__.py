"""惠黔消费帮扶商城: the application factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, request, session
from flask_babel import get_locale

from shop.config import load_config


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment, with `config` overriding it (tests pass a mapping)."""
    app = Flask(__name__)
    app.config.update(load_config())
    if config:
        app.config.update(config)

    from shop.accounts.services import LoginThrottle, user_for_token
    from shop.background import celery_init_app
    from shop.extensions import babel, csrf, db, login_manager
    from shop.observability import init_observability
    from shop.payments.gateway import build_stripe_client
    from shop.security import init_security

    # First: every later hook, and every log line, has the request id.
    init_observability(app)

    db.init_app(app)
    csrf.init_app(app)
    babel.init_app(app, locale_selector=_select_locale)
    login_manager.init_app(app)
    login_manager.login_view = "accounts.login"

    @login_manager.user_loader
    def load_user(user_id: str) -> Any:
        from shop.accounts.models import User

        if "Authorization" in request.headers:
            # A request that shows a token is that token's alone: a revoked one is refused even
            # beside a session cookie, and the API skips its CSRF check only for such requests.
            return None
        user = db.session.get(User, int(user_id))
        return user if user and user.active else None

    @login_manager.request_loader
    def load_bearer(req: Any) -> Any:
        header = req.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return user_for_token(db.session, header.removeprefix("Bearer ").strip())
        return None

    app.extensions["stripe"] = build_stripe_client(app.config)
    app.extensions["login_throttle"] = LoginThrottle(
        app.config["RATELIMIT_STORAGE_URI"],
        per_address=app.config["LOGIN_RATE_LIMIT"],
        per_account=app.config["LOGIN_ACCOUNT_RATE_LIMIT"],
    )
    celery_init_app(app)
    _register_blueprints(app)
    init_security(app)

    from shop.cli import register_commands

    register_commands(app)

    @app.context_processor
    def template_globals() -> dict[str, Any]:
        return {"current_locale": str(get_locale())}

    return app


def _select_locale() -> str:
    from flask import current_app

    supported: list[str] = current_app.config["SHOP_LOCALES"]
    chosen = request.args.get("lang")
    if chosen in supported:
        session["lang"] = chosen
        return chosen
    remembered = session.get("lang")
    if remembered in supported:
        return str(remembered)
    return str(current_app.config["BABEL_DEFAULT_LOCALE"])


def _register_blueprints(app: Flask) -> None:
    from shop.accounts.api import bp as auth_api
    from shop.admin.api import bp as admin_api
    from shop.api import register_error_handlers
    from shop.catalog.api import bp as catalog_api
    from shop.finance.api import bp as finance_api
    from shop.ledger.api import bp as ledger_api
    from shop.meta import bp as meta_api
    from shop.orders.api import bp as orders_api
    from shop.payments.api import bp as stripe_api
    from shop.procurement.api import bp as procurement_api
    from shop.reconciliation.api import bp as reconciliation_api

    apis = (
        meta_api,
        auth_api,
        catalog_api,
        orders_api,
        stripe_api,
        admin_api,
        procurement_api,
        finance_api,
        ledger_api,
        reconciliation_api,
    )
    for bp in apis:
        app.register_blueprint(bp)
    from shop.health import bp as health

    app.register_blueprint(health)
    register_error_handlers(app)
    from shop.views import register_views

    register_views(app)
