"""audit entries append-only

The database itself refuses to change or delete an audit entry; entries are read newest first
and by time, hence the index on `at`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""

from alembic import op

from shop.accounts import audit_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_entries_at", "audit_entries", ["at"], unique=False)
    for statement in audit_sql.install_statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in audit_sql.drop_statements(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_index("ix_audit_entries_at", table_name="audit_entries")
