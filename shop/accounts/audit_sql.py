"""The database triggers that keep audit_entries append-only, for PostgreSQL and SQLite.

Migration 0004 installs them. The test suite, which empties every table between tests, lifts
and restores them with these same statements, so what it checks is what the migration made.
"""

from __future__ import annotations

REFUSED = "audit_entries is append-only"

_POSTGRESQL_INSTALL = (
    f"""
    CREATE OR REPLACE FUNCTION audit_entries_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING
            MESSAGE = '{REFUSED}, ' || TG_OP || ' refused',
            ERRCODE = 'restrict_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_entries_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_append_only()
    """,
    # TRUNCATE fires no row trigger: it needs one of its own.
    """
    CREATE TRIGGER audit_entries_no_truncate
    BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_append_only()
    """,
)

_POSTGRESQL_DROP = (
    "DROP TRIGGER IF EXISTS audit_entries_no_truncate ON audit_entries",
    "DROP TRIGGER IF EXISTS audit_entries_no_update_or_delete ON audit_entries",
    "DROP FUNCTION IF EXISTS audit_entries_append_only()",
)

_SQLITE_INSTALL = tuple(
    f"""
    CREATE TRIGGER audit_entries_no_{operation.lower()}
    BEFORE {operation} ON audit_entries
    BEGIN
        SELECT RAISE(ABORT, '{REFUSED}, {operation} refused');
    END
    """
    for operation in ("UPDATE", "DELETE")
)

_SQLITE_DROP = (
    "DROP TRIGGER IF EXISTS audit_entries_no_update",
    "DROP TRIGGER IF EXISTS audit_entries_no_delete",
)

_STATEMENTS = {
    "postgresql": (_POSTGRESQL_INSTALL, _POSTGRESQL_DROP),
    "sqlite": (_SQLITE_INSTALL, _SQLITE_DROP),
}


def _for(dialect: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        return _STATEMENTS[dialect]
    except KeyError:
        raise NotImplementedError(
            f"append-only audit triggers exist for PostgreSQL and SQLite, not {dialect}"
        ) from None


def install_statements(dialect: str) -> tuple[str, ...]:
    """What makes audit_entries refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL)."""
    return _for(dialect)[0]


def drop_statements(dialect: str) -> tuple[str, ...]:
    """What takes those triggers away again (the migration's downgrade)."""
    return _for(dialect)[1]
