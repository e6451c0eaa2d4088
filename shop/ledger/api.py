"""Ledger JSON API (finance role): counter-sale imports."""

from __future__ import annotations

from typing import Any

from flask import current_app
from pydantic import BaseModel, Field
from werkzeug.datastructures import FileStorage

from shop.accounts.models import Role, User
from shop.api import api_blueprint, endpoint
from shop.errors import InvalidInput
from shop.extensions import db
from shop.ledger.offline import import_upload, recent_imports
from shop.procurement.bulk import MAX_FILE_BYTES

bp = api_blueprint("ledger_api", __name__)


class OfflineUploadForm(BaseModel):
    """A counter-sales file in the multipart part `file`; nothing else is sent."""


class OfflineImportResult(BaseModel):
    import_id: int
    rows: int
    total_fen: int
    created: bool = Field(description="false: this very file was imported before; nothing written")


class OfflineImportOut(BaseModel):
    id: int
    filename: str
    sha256: str
    rows: int
    total_fen: int
    counted_fen: int = Field(description="what of it counts toward the totals")
    imported_by: str | None
    imported_at: str


class OfflineImportListOut(BaseModel):
    items: list[OfflineImportOut]


@endpoint(
    bp,
    "/finance/offline-sales",
    "POST",
    summary=(
        "Import counter sales (消费帮扶专柜) from CSV or xlsx: 201 when imported, "
        "200 with created false when this very file was imported before"
    ),
    form=OfflineUploadForm,
    response=OfflineImportResult,
    status=201,
    roles=(Role.FINANCE,),
    errors=(503,),
)
def import_offline(
    user: User, form: OfflineUploadForm, upload: FileStorage | None
) -> OfflineImportResult | tuple[dict[str, Any], int]:
    if upload is None:
        raise InvalidInput(
            "请上传文件（字段名 file）。",
            code="invalid_file",
            details=[{"row": None, "column": None, "message": "缺少文件。"}],
        )
    batch, created = import_upload(
        db.session,
        # One byte over the limit is enough for the reader to refuse the file.
        upload.read(MAX_FILE_BYTES + 1),
        upload.filename or "upload.csv",
        user,
        current_app.config["UPLOAD_DIR"],
    )
    result = OfflineImportResult(
        import_id=batch.id, rows=batch.rows, total_fen=batch.total_fen, created=created
    )
    if created:
        return result
    return result.model_dump(), 200


@endpoint(
    bp,
    "/finance/offline-sales",
    "GET",
    summary="Counter-sales imports, newest first",
    response=OfflineImportListOut,
    roles=(Role.FINANCE,),
)
def list_offline_imports(user: User) -> OfflineImportListOut:
    return OfflineImportListOut(
        items=[
            OfflineImportOut(
                id=item.batch.id,
                filename=item.batch.filename,
                sha256=item.batch.sha256,
                rows=item.batch.rows,
                total_fen=item.batch.total_fen,
                counted_fen=item.counted_fen,
                imported_by=item.imported_by,
                imported_at=item.batch.imported_at.isoformat(),
            )
            for item in recent_imports(db.session)
        ]
    )
