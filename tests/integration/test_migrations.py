"""`shop db upgrade` builds the whole schema on an empty database, and it matches the models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from shop import create_app
from shop.db import Base
from shop.migrate import alembic_config


@pytest.fixture
def empty_database(database_url: str, tmp_path: Path) -> Iterator[str]:
    if not database_url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    name = "shop_migration_check"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_shop_db_upgrade_creates_every_table_on_an_empty_database(empty_database: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shop.cli", "db", "upgrade"],
        env=dict(os.environ, DATABASE_URL=empty_database),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "database at head" in result.stdout
    engine = create_engine(empty_database)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert set(Base.metadata.tables) | {"alembic_version"} == tables


def test_the_migrations_match_the_models(empty_database: str) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database})
    config = alembic_config(app)
    command.upgrade(config, "head")
    command.check(config)  # raises if autogenerate would write a new migration
