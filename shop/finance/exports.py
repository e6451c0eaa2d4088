"""Totals and detail exports to CSV (UTF-8 with BOM) and xlsx, run by a task for large files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from shop.db import DbSession
from shop.finance.models import ExportJob


def write_report(
    session: DbSession,
    report: str,
    fmt: str,
    *,
    start: date,
    end: date,
    group_by: list[str],
    path: Path,
) -> int:
    raise NotImplementedError


def run_export(session: DbSession, job_id: str) -> ExportJob:
    raise NotImplementedError
