"""Ledger pages (finance role): importing counter sales."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import (
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask_babel import format_datetime
from flask_babel import gettext as _
from flask_login import current_user
from werkzeug.wrappers import Response

from shop.accounts.models import Role, User
from shop.errors import InvalidInput, ServiceUnavailable
from shop.extensions import db, login_manager
from shop.ledger.offline import import_upload, recent_imports
from shop.procurement.bulk import MAX_FILE_BYTES, MAX_ROWS
from shop.procurement.views import _problem_rows
from shop.views import html_blueprint, yuan

bp = html_blueprint("ledger", __name__, url_prefix="/finance/offline-sales")

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLES = {
    "counter-sales-template.csv": "text/csv",
    "counter-sales-template.xlsx": (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    ),
}


@bp.before_request
def finance_only() -> Any:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.has_role(Role.FINANCE):
        abort(403)
    return None


def _render(status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(
        "ledger/offline_sales.html",
        imports=recent_imports(db.session),
        max_rows=MAX_ROWS,
        max_megabytes=MAX_FILE_BYTES // 1024 // 1024,
        **context,
    ), status


@bp.get("/")
def offline_sales() -> tuple[str, int]:
    return _render()


@bp.post("/")
def import_offline_sales() -> Any:
    """Check the file and import it; a bad row anywhere imports nothing and lists every problem."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _render(422, message=_("请选择要导入的柜台销售文件（CSV 或 .xlsx）。"))
    user: User = current_user._get_current_object()
    try:
        batch, created = import_upload(
            db.session,
            # One byte over the limit is enough for the reader to say the file is too big.
            upload.read(MAX_FILE_BYTES + 1),
            upload.filename,
            user,
            current_app.config["UPLOAD_DIR"],
        )
    except InvalidInput as exc:
        db.session.rollback()
        return _render(422, message=exc.message, problems=_problem_rows(exc))
    except ServiceUnavailable as exc:
        return _render(503, message=exc.message)
    if created:
        flash(
            _(
                "已导入 %(filename)s：%(rows)s 行，合计 %(amount)s。",
                filename=batch.filename,
                rows=batch.rows,
                amount=yuan(batch.total_fen),
            ),
            "success",
        )
    else:
        flash(
            _(
                "这个文件已于 %(when)s 导入过（第 %(id)s 批），没有重复导入。",
                when=format_datetime(batch.imported_at, "yyyy-MM-dd HH:mm"),
                id=batch.id,
            ),
            "success",
        )
    return redirect(url_for("ledger.offline_sales"), code=303)


@bp.get("/sample/<name>")
def sample(name: str) -> Response:
    if name not in SAMPLES:
        abort(404)
    return send_from_directory(SAMPLE_DIR, name, mimetype=SAMPLES[name], as_attachment=True)
