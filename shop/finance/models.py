"""Typed models of finance's exports: files produced by a task and downloaded when ready."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shop.db import Base, utcnow


class ExportStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ExportJob(Base):
    """A totals or detail export produced by a task; finance downloads the file when done."""

    __tablename__ = "export_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    report: Mapped[str] = mapped_column(String(16))  # totals | detail
    format: Mapped[str] = mapped_column(String(8))  # csv | xlsx
    params: Mapped[str] = mapped_column(Text)  # JSON of the query
    status: Mapped[str] = mapped_column(String(16), default=ExportStatus.QUEUED)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    filename: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
