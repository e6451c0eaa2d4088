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
    authenticate,
    employer_choices,
    set_employer,
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
        current_app.extensions["login_throttle"].hit(request.remote_addr or "")
    except TooManyAttempts:
        return render_template(
            "accounts/login.html",
            email=email,
            next_url=next_url,
            error=_("登录尝试过于频繁，请稍后再试。"),
        ), 429
    try:
        user = authenticate(db.session, email, request.form.get("password", "")[:1024])
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
    return render_template("accounts/account.html", units=employer_choices(db.session))


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
        return render_template(
            "accounts/account.html",
            units=employer_choices(db.session),
            error=_("没有这个采购单位，请从列表中选择。"),
        ), 422
    db.session.commit()
    flash(_("工作单位已保存。"), "success")
    return redirect(url_for("accounts.account"), code=303)
