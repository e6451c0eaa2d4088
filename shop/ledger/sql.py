"""SQL the ledger needs on both backends: Shanghai days, months and years; table locks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Date, String, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from shop.db import DbSession


class shanghai_day(FunctionElement[Any]):
    """The Asia/Shanghai calendar day of a stored UTC timestamp."""

    type = Date()
    inherit_cache = True


@compiles(shanghai_day, "postgresql")
def _shanghai_day_pg(element: shanghai_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(({compiler.process(element.clauses, **kw)} AT TIME ZONE 'Asia/Shanghai') AS DATE)"


@compiles(shanghai_day, "sqlite")
def _shanghai_day_sqlite(element: shanghai_day, compiler: SQLCompiler, **kw: Any) -> str:
    # Stored naive in UTC; Shanghai has kept UTC+8 without daylight saving since 1991.
    return f"date({compiler.process(element.clauses, **kw)}, '+8 hours')"


class month_of(FunctionElement[Any]):
    """'YYYY-MM' of a date."""

    type = String()
    inherit_cache = True


@compiles(month_of, "postgresql")
def _month_of_pg(element: month_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)}, 'YYYY-MM')"


@compiles(month_of, "sqlite")
def _month_of_sqlite(element: month_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%Y-%m', {compiler.process(element.clauses, **kw)})"


class year_of(FunctionElement[Any]):
    """'YYYY' of a date."""

    type = String()
    inherit_cache = True


@compiles(year_of, "postgresql")
def _year_of_pg(element: year_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)}, 'YYYY')"


@compiles(year_of, "sqlite")
def _year_of_sqlite(element: year_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%Y', {compiler.process(element.clauses, **kw)})"


def lock_ledger(session: DbSession, mode: str) -> None:
    """Take a PostgreSQL table lock on the ledger for the rest of the transaction.

    Writers take ROW EXCLUSIVE before they read which months are closed; rollup and month close
    take SHARE, which waits for every writer in flight and holds new ones back until commit. So
    a month closes between writers, never under one, and the rollup never skips an entry that
    was still uncommitted under a lower id. SQLite needs nothing: BEGIN IMMEDIATE already
    serialises writers.
    """
    if mode not in ("ROW EXCLUSIVE", "SHARE"):
        raise ValueError(mode)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"LOCK TABLE ledger_entries IN {mode} MODE"))


# Room for the sort and hash of a statement over a year of entries (PostgreSQL's default of
# 4 MB sends them to disk); taken per transaction, by the few statements that need it.
BULK_WORK_MEM = "256MB"
# A table has grown enough for its statistics to be stale when this many rows, and a tenth of
# what it held, were added since they were taken.
STALE_AFTER_ROWS = 10_000


def bulk_work_mem(session: DbSession) -> None:
    """Let the rest of this transaction sort and hash in memory (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL work_mem = '{BULK_WORK_MEM}'"))


def analyze_if_grown(session: DbSession, table: str, added: int) -> None:
    """Refresh PostgreSQL's statistics of a table a bulk write has just grown a lot.

    Autovacuum gets there, but later: meanwhile the next statements are planned for the table
    as it was (a sweep's look-ups by order become scans of the whole ledger).
    """
    if added < STALE_AFTER_ROWS or session.get_bind().dialect.name != "postgresql":
        return
    known = session.scalar(
        text("SELECT reltuples FROM pg_class WHERE oid = CAST(:name AS regclass)"),
        {"name": table},
    )
    if added >= max(float(known or 0), 0.0) / 10:
        session.execute(text(f"ANALYZE {table}"))
