"""HTML pages: each area's blueprint, plus the filters and globals every template uses."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, render_template, request
from flask_babel import get_locale
from flask_login import current_user
from flask_wtf.csrf import CSRFError

from shop.accounts.models import Role
from shop.catalog.models import Category

# Far beyond any real list of pages; keeps the OFFSET a database integer.
LAST_PAGE = 100_000


def page_number() -> int:
    """The `page` a list page was asked for, between 1 and LAST_PAGE."""
    return min(max(request.args.get("page", 1, type=int) or 1, 1), LAST_PAGE)


def yuan(fen: int | None) -> str:
    """Integer fen shown as ¥12.80; the arithmetic stays in integers."""
    if fen is None:
        return ""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}¥{whole:,}.{cents:02d}"


def fen_from_yuan(text: str) -> int | None:
    """Parse an amount typed in 元 (e.g. "12.8") into fen; None when it is not a money amount."""
    try:
        amount = Decimal(text.strip().replace(",", "").removeprefix("¥"))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
        return None
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def plain_yuan(fen: int | None) -> str:
    """Fen as an editable 元 amount without the sign or separators: 12.80."""
    if fen is None:
        return ""
    whole, cents = divmod(fen, 100)
    return f"{whole}.{cents:02d}"


def is_english() -> bool:
    return str(get_locale()) == "en"


def local_name(item: Any) -> str:
    """The English name in English, the Chinese one otherwise; order lines use their product."""
    if is_english():
        english = getattr(item, "name_en", None)
        if english is None and getattr(item, "product", None) is not None:
            english = item.product.name_en
        if english:
            return str(english)
    return str(item.name)


def category_code(value: str) -> str:
    """The stable English code of a category (`tea`), for URLs and CSS classes."""
    return (Category.parse(value) or Category.OTHER).code


def lang_url(lang: str) -> str:
    """This page again, in another language."""
    args = request.args.to_dict(flat=False)
    args["lang"] = [lang]
    return f"{request.path}?{urlencode(args, doseq=True)}"


def query_url(**changes: Any) -> str:
    """This page with some query arguments changed (None drops one); filters restart at page 1."""
    args = {key: value for key, value in request.args.items() if key != "lang"}
    if "page" not in changes:
        args.pop("page", None)
    for key, value in changes.items():
        if value is None or value == "":
            args.pop(key, None)
        else:
            args[key] = str(value)
    return f"{request.path}?{urlencode(args)}" if args else request.path


def html_blueprint(name: str, import_name: str, **options: Any) -> Blueprint:
    """A blueprint of pages: a form posted with a stale CSRF token gets a page saying so."""
    bp = Blueprint(name, import_name, **options)
    bp.register_error_handler(CSRFError, render_csrf_error)
    return bp


def render_csrf_error(exc: CSRFError) -> tuple[str, int]:
    return render_template("error.html", status=400, message=None, csrf_failed=True), 400


def register_views(app: Flask) -> None:
    from shop.accounts.views import bp as accounts
    from shop.admin.views import bp as admin
    from shop.catalog.views import bp as catalog
    from shop.finance.views import bp as finance
    from shop.ledger.views import bp as ledger
    from shop.orders.views import bp as orders
    from shop.orders.views import cart_count
    from shop.procurement.views import bp as procurement

    for bp in (catalog, orders, accounts, admin, procurement, finance, ledger):
        app.register_blueprint(bp)

    app.jinja_env.filters["yuan"] = yuan
    app.jinja_env.filters["plain_yuan"] = plain_yuan
    app.jinja_env.globals.update(
        local_name=local_name, lang_url=lang_url, query_url=query_url, category_code=category_code
    )

    @app.context_processor
    def page_globals() -> dict[str, Any]:
        return {
            "cart_count": cart_count(),
            "is_admin": current_user.is_authenticated and current_user.has_role(Role.ADMIN),
        }
