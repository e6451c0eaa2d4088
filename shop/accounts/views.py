"""Signing in and out with e-mail and password (session cookie); my account page."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_user, logout_user
from werkzeug.wrappers import Response

from shop.accounts.models import User
from shop.accounts.services import (
    TooManyAttempts,
    employer_choices,
    live_tokens,
    revoke_token,
    set_employer,
    sign_in,
)
from shop.errors import InvalidInput, Unauthorized
from shop.extensions import db, login_manager
from shop.views import html_blueprint

bp = html_blueprint("accounts", __name__)


def _safe_next(target: str | None) -> str:
    """Only a path on this site, so the login form cannot bounce people elsewhere."""
    if target:
        parts = urlsplit(target)
        if (
            not parts.scheme
            and not parts.netloc
            and target.startswith("/")
            and not target.startswith("//")
        ):
            return target
    return url_for("catalog.index")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    next_url = request.values.get("next", "")
    if request.method == "GET":
        return render_template("accounts/login.html", email="", next_url=next_url)
    email = request.form.get("email", "")[:254]
    try:
        user = sign_in(
            db.session,
            current_app.extensions["login_throttle"],
            address=request.remote_addr or "",
            email=email,
            password=request.form.get("password", "")[:1024],
        )
    except TooManyAttempts as exc:
        page = render_template(
            "accounts/login.html",
            email=email,
            next_url=next_url,
            error=_("登录尝试过于频繁，请 %(seconds)s 秒后再试。", seconds=exc.retry_after),
        )
        return page, 429, {"Retry-After": str(exc.retry_after)}
    except Unauthorized:
        return render_template(
            "accounts/login.html", email=email, next_url=next_url, error=_("邮箱或密码不正确。")
        ), 401
    login_user(user)
    flash(_("欢迎回来，%(name)s。", name=user.name), "success")
    return redirect(_safe_next(next_url))


@bp.post("/logout")
def logout() -> Response:
    logout_user()
    flash(_("你已退出登录。"), "success")
    return redirect(url_for("catalog.index"))


@bp.get("/account")
def account() -> Any:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    return _account_page()


def _account_page(**context: Any) -> str:
    user: User = current_user._get_current_object()
    return render_template(
        "accounts/account.html",
        units=employer_choices(db.session),
        tokens=live_tokens(db.session, user),
        **context,
    )


@bp.post("/account/employer")
def change_employer() -> Any:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    user: User = current_user._get_current_object()
    raw = request.form.get("organisation_id", "")
    try:
        set_employer(db.session, user, int(raw) if raw.isdigit() else None)
    except InvalidInput:
        db.session.rollback()
        return _account_page(error=_("没有这个采购单位，请从列表中选择。")), 422
    db.session.commit()
    flash(_("工作单位已保存。"), "success")
    return redirect(url_for("accounts.account"), code=303)


@bp.post("/account/tokens/<int:token_id>/revoke")
def revoke_my_token(token_id: int) -> Any:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    revoke_token(db.session, current_user._get_current_object(), token_id)
    db.session.commit()
    flash(_("令牌已撤销，使用它的脚本将无法再访问。"), "success")
    return redirect(url_for("accounts.account", _anchor="tokens"), code=303)
