"""The backup routine of the README, drilled: pg_dump the shop's database, restore it into a fresh
database with pg_restore, and the restored shop reports the same totals, holds the same ledger and
audit trail, and still refuses to edit the audit trail."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from shop.accounts.models import AuditEntry
from shop.accounts.services import audit
from shop.db import utcnow
from shop.demo import load_demo_sales
from shop.extensions import db
from shop.ledger.models import LedgerEntry
from shop.ledger.services import recognise_all, rollup, totals
from shop.timezones import shanghai_today
from tests.conftest import make_app


def libpq(url: str) -> str:
    """The SQLAlchemy URL as pg_dump and pg_restore take it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def figures(app: Flask) -> dict[str, Any]:
    today = shanghai_today(utcnow())
    with app.app_context():
        year = totals(
            db.session,
            start=date(today.year, 1, 1),
            end=today,
            group_by=["county", "month", "channel"],
        )
        found = {
            "rows": year.rows,
            "total_fen": year.total_fen,
            "entries": db.session.scalar(select(func.count()).select_from(LedgerEntry)),
            "ledger_fen": db.session.scalar(select(func.sum(LedgerEntry.amount_fen))),
            "audit": db.session.scalar(select(func.count()).select_from(AuditEntry)),
        }
        db.session.remove()
    return found


@pytest.fixture
def restored_url(database_url: str) -> Iterator[str]:
    if not database_url.startswith("postgresql"):
        pytest.skip("pg_dump and pg_restore drill a PostgreSQL database")
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump / pg_restore are not installed")
    name = f"restore_drill_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_dump_restored_into_a_fresh_database_gives_the_same_totals(
    app: Flask, database_url: str, emulator: str, restored_url: str, tmp_path: Path
) -> None:
    with app.app_context():
        load_demo_sales(db.session, orders=25)
        audit(db.session, None, "ledger.close_month", "month:drill", after={"total_fen": 1})
        db.session.commit()
        recognise_all(db.session)
        rollup(db.session)
        db.session.commit()
        db.session.remove()
    before = figures(app)
    assert before["total_fen"] > 0 and before["entries"] > 0 and before["audit"] > 0

    dump = tmp_path / "shop.dump"
    subprocess.run(
        ["pg_dump", "--format=custom", f"--file={dump}", libpq(database_url)],
        check=True,
        timeout=120,
    )
    subprocess.run(
        ["pg_restore", "--no-owner", "--exit-on-error", "-d", libpq(restored_url), str(dump)],
        check=True,
        timeout=120,
    )

    restored = make_app(restored_url, emulator)
    try:
        assert figures(restored) == before
        with restored.app_context(), pytest.raises(DBAPIError):
            db.session.execute(text("UPDATE audit_entries SET action = 'edited'"))
    finally:
        with restored.app_context():
            db.session.remove()
            db.engine.dispose()
