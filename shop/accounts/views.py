"""Signing in and out with e-mail and password (session cookie)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import login_user, logout_user
from werkzeug.wrappers import Response

from shop.accounts.services import TooManyAttempts, authenticate
from shop.errors import Unauthorized
from shop.extensions import db
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
