"""`shop db upgrade` builds the whole schema on an empty database, and it matches the models; a
production shop starts from there with `shop reference load` and its first administrator."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url

from shop import create_app
from shop.accounts.models import User
from shop.catalog.models import County, District, Pairing
from shop.config import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from shop.db import Base
from shop.demo import demo_credit_code
from shop.extensions import db
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


def shop_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`shop …` as an operator runs it on a production host."""
    env = dict(
        os.environ,
        SHOP_ENV="production",
        SECRET_KEY="a-production-secret",
        DATABASE_URL=database_url,
        STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
    )
    return subprocess.run(
        [sys.executable, "-m", "shop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_production_shop_starts_with_reference_data_an_administrator_and_no_demo(
    empty_database: str,
) -> None:
    assert shop_cli(empty_database, "db", "upgrade").returncode == 0
    # The demo's accounts have a published password: refused, and nothing is written.
    demo = shop_cli(empty_database, "demo", "load")
    assert demo.returncode != 0
    assert "SHOP_ENV=production" in demo.stderr

    loaded = shop_cli(empty_database, "reference", "load")
    assert loaded.returncode == 0, loaded.stderr
    assert "reference data: 17 added" in loaded.stdout  # 8 counties, 7 districts, 2 pairings
    again = shop_cli(empty_database, "reference", "load")
    assert "reference data already present" in again.stdout
    admin = shop_cli(
        empty_database,
        *("users", "create", "--role", "admin", "--email", "it@example.org"),
        *("--name", "管理员", "--password", "a-long-admin-password"),
    )
    assert admin.returncode == 0, admin.stderr

    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 1
        assert db.session.scalar(select(func.count()).select_from(County)) == 8
        assert db.session.scalar(select(func.count()).select_from(District)) == 7
        pairs = {
            (p.district.name, p.county.name, p.demo) for p in db.session.scalars(select(Pairing))
        }
        assert pairs == {("龙门县", "普安县", False), ("惠东县", "望谟县", False)}
        db.session.remove()
    # The administrator can register the first supplier, in a county the reference data holds.
    client = app.test_client()
    token = client.post(
        "/api/v1/auth/tokens", json={"email": "it@example.org", "password": "a-long-admin-password"}
    ).get_json()["token"]
    created = client.post(
        "/api/v1/admin/suppliers",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "name": "普安县江西坡茶叶专业合作社",
            "credit_code": demo_credit_code("93", "522323", 1),
            "county": "普安县",
        },
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["county"] == "普安县"
    with app.app_context():
        db.engine.dispose()
