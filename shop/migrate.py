"""Alembic, driven from the app: `shop db upgrade` and the tests build the schema this way."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from flask import Flask

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(app: Flask) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", app.config["SQLALCHEMY_DATABASE_URI"])
    config.attributes["flask_app"] = app
    return config


def upgrade(app: Flask, revision: str = "head") -> None:
    command.upgrade(alembic_config(app), revision)


def autogenerate(app: Flask, message: str) -> None:
    command.revision(alembic_config(app), message=message, autogenerate=True)
