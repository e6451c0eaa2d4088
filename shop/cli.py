"""The `shop` command (also `flask --app wsgi …`): database, demo, users, tokens, jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy import select
from werkzeug.serving import run_simple

from shop.accounts.models import Role, User
from shop.extensions import db


def _create_app() -> Flask:
    from shop import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=True)
def main() -> None:
    """惠黔消费帮扶商城 command line."""


def register_commands(app: Flask) -> None:
    for command in (
        db_group,
        reference_group,
        demo_group,
        users_group,
        tokens_group,
        expire_orders,
        emulator,
        reconcile,
        close_month,
        export_group,
        import_offline,
        ledger_group,
    ):
        app.cli.add_command(command)


@click.group("db")
def db_group() -> None:
    """Database schema (Alembic)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Create or upgrade the schema to the newest migration."""
    from shop.migrate import upgrade

    upgrade(current_app._get_current_object(), revision)  # type: ignore[attr-defined]
    click.echo(f"database at {revision}: {_safe_url()}")


@db_group.command("revision")
@click.option("-m", "--message", required=True)
@with_appcontext
def db_revision(message: str) -> None:
    """Write a new migration by comparing the models with the database."""
    from shop.migrate import autogenerate

    autogenerate(current_app._get_current_object(), message)  # type: ignore[attr-defined]


def _safe_url() -> str:
    from sqlalchemy.engine import make_url

    return make_url(current_app.config["SQLALCHEMY_DATABASE_URI"]).render_as_string(
        hide_password=True
    )


@click.group("demo")
def demo_group() -> None:
    """Demo data and the demo shop."""


def _refuse_demo_in_production() -> None:
    if current_app.config["SHOP_ENV"] == "production":
        raise click.ClickException(
            "the demo data has accounts with a published password: not with SHOP_ENV=production"
            " (a production shop needs `shop reference load` and `shop users create`)"
        )


@click.group("reference")
def reference_group() -> None:
    """Reference data: Qianxinan's counties, Huizhou's districts, their pairings."""


@reference_group.command("load")
@with_appcontext
def reference_load() -> None:
    """Add the counties, districts and official pairings that are missing (run it once per shop)."""
    from shop.catalog.reference import load_reference_data
    from shop.extensions import db

    _require_schema()
    added = load_reference_data(db.session)
    db.session.commit()
    click.echo(f"reference data: {added} added" if added else "reference data already present")


def _require_schema() -> None:
    from sqlalchemy import inspect

    from shop.extensions import db

    if not inspect(db.engine).has_table("users"):
        raise click.ClickException("the database has no schema yet: run `shop db upgrade` first")


@demo_group.command("load")
@with_appcontext
def demo_load() -> None:
    """Load the demo catalogue and accounts (does nothing if they are there)."""
    from shop.demo import load_demo_data
    from shop.extensions import db

    _refuse_demo_in_production()
    _require_schema()
    created = load_demo_data(db.session)
    db.session.commit()
    click.echo("demo data loaded" if created else "demo data already present")
    _print_accounts()


def _print_accounts() -> None:
    from shop.demo import DEMO_ACCOUNTS, DEMO_MEMBERS, DEMO_PASSWORD, DEMO_UNIT

    unit_roles = dict(DEMO_MEMBERS)
    click.echo("demo accounts (demo only), password for all: " + DEMO_PASSWORD)
    for email, _, role in DEMO_ACCOUNTS:
        if email in unit_roles:
            click.echo(f"  {unit_roles[email]:<9} {email}  ({DEMO_UNIT['name']})")
        else:
            click.echo(f"  {role:<9} {email}")


@demo_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@click.option("--emulator-port", default=12111, show_default=True)
@with_appcontext
def demo_serve(host: str, port: int, emulator_port: int) -> None:
    """Migrate, load demo data and sales, start the Stripe emulator and serve the shop."""
    from shop.demo import load_demo_data, load_demo_sales
    from shop.extensions import db
    from shop.migrate import upgrade

    _refuse_demo_in_production()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///"):
        os.makedirs(os.path.dirname(app.config["SQLALCHEMY_DATABASE_URI"][10:]), exist_ok=True)
    upgrade(app)
    load_demo_data(db.session)
    db.session.commit()
    sales = load_demo_sales(db.session)
    if sales:
        click.echo(f"demo sales: {sales} paid orders spread over this year")
    db.session.remove()
    emulator_process = None
    if app.config["STRIPE_API_BASE"].startswith("http://127.0.0.1"):
        env = dict(
            os.environ,
            STRIPE_SECRET_KEY=app.config["STRIPE_SECRET_KEY"],
            STRIPE_WEBHOOK_SECRET=app.config["STRIPE_WEBHOOK_SECRET"],
            EMULATOR_WEBHOOK_URL=f"http://{host}:{port}/api/v1/stripe/webhook",
        )
        # Fixed argv, no user input.
        emulator_process = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", "shop.payments.emulator", "--port", str(emulator_port)], env=env
        )
    _start_in_process_beat(app)
    click.echo(f"\n惠黔消费帮扶商城 demo: http://{host}:{port}/")
    _print_accounts()
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        if emulator_process is not None:
            emulator_process.terminate()


def _start_in_process_beat(app: Flask, every_seconds: int = 60) -> None:
    """Without a broker there is no beat process: run the beat schedule on a thread instead."""
    if not app.config["CELERY"]["task_always_eager"]:
        return

    def loop() -> None:
        from datetime import datetime

        from shop.background import BEAT_SCHEDULE
        from shop.timezones import SHANGHAI

        celery_app = app.extensions["celery"]
        while True:
            time.sleep(every_seconds)
            minute = datetime.now(SHANGHAI).minute
            for name, entry in BEAT_SCHEDULE.items():
                if minute not in entry["schedule"].minute:
                    continue
                try:
                    celery_app.tasks[entry["task"]].delay()
                except Exception:
                    app.logger.exception("periodic job %s failed; it runs again on schedule", name)

    threading.Thread(target=loop, name="in-process-beat", daemon=True).start()


@click.group("users")
def users_group() -> None:
    """People and their roles."""


@users_group.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), default="buyer")
@click.password_option()
@with_appcontext
def users_create(email: str, name: str, role: str, password: str) -> None:
    """Create a user."""
    from shop.accounts.services import audit, create_user
    from shop.errors import ShopError
    from shop.extensions import db

    try:
        user = create_user(db.session, email=email, password=password, name=name, role=Role(role))
    except ShopError as exc:
        raise click.ClickException(exc.message) from exc
    # No signed-in person: whoever runs the command on the server; the entry says how.
    audit(
        db.session,
        None,
        "user.create",
        f"user:{user.id}",
        after={"email": user.email, "name": user.name, "role": user.role},
        about={"via": "shop users create"},
    )
    db.session.commit()
    click.echo(f"created {user.role} {user.email}")


@click.group("tokens")
def tokens_group() -> None:
    """Bearer tokens for scripts."""


@tokens_group.command("create")
@click.option("--email", required=True)
@with_appcontext
def tokens_create(email: str) -> None:
    """Issue a bearer token for a user and print it (shown once)."""
    from sqlalchemy import select

    from shop.accounts.models import User
    from shop.accounts.services import issue_token, normalise_email
    from shop.extensions import db

    user = db.session.scalar(select(User).where(User.email == normalise_email(email)))
    if user is None:
        raise click.ClickException(f"no user {email}")
    token = issue_token(db.session, user, days=current_app.config["API_TOKEN_DAYS"])
    db.session.commit()
    click.echo(token)


@click.command("expire-orders")
@with_appcontext
def expire_orders() -> None:
    """Cancel unpaid orders past their payment window now (the beat does it every minute)."""
    from workers.tasks import expire_unpaid_orders

    click.echo(f"cancelled {expire_unpaid_orders.apply().get()} expired orders")


@click.command("reconcile")
@with_appcontext
def reconcile() -> None:
    """Reconcile with Stripe now (the beat does it every 15 minutes)."""
    from shop.errors import ShopError
    from workers.tasks import reconcile_payments

    try:
        report = reconcile_payments.apply().get()
    except ShopError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(" ".join(f"{key}={value}" for key, value in report.items()))


def _finance_user(email: str) -> User:
    from shop.accounts.services import normalise_email

    user = db.session.scalar(select(User).where(User.email == normalise_email(email)))
    if user is None or not user.has_role(Role.FINANCE):
        raise click.ClickException(f"{email} is not a finance account")
    return user


@click.command("close-month")
@click.argument("month")
@click.option("--by", "email", required=True, help="the finance account closing it")
@with_appcontext
def close_month(month: str, email: str) -> None:
    """Close a month (YYYY-MM): nothing dated inside it changes afterwards."""
    from shop.errors import ShopError
    from shop.ledger.services import close_month as close

    try:
        closed = close(db.session, month, _finance_user(email))
    except ShopError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(
        f"closed {closed.month}: {closed.total_fen / 100:.2f} 元 in {closed.entries} entries"
    )


@click.group("export")
def export_group() -> None:
    """Export consumption-assistance totals or detail to CSV or xlsx."""


def _export_options(command: Any) -> Any:
    command = click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)(
        command
    )
    command = click.option(
        "--format", "fmt", type=click.Choice(["csv", "xlsx"]), default="csv", show_default=True
    )(command)
    command = click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True)(command)
    return click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True)(
        command
    )


@export_group.command("totals")
@_export_options
@click.option("--group-by", default="county,month", show_default=True)
@with_appcontext
def export_totals(start: Any, end: Any, fmt: str, output: str, group_by: str) -> None:
    """Counted totals from --from to --to (Shanghai days), grouped by --group-by."""
    _export("totals", start, end, fmt, output, group_by)


@export_group.command("detail")
@_export_options
@with_appcontext
def export_detail(start: Any, end: Any, fmt: str, output: str) -> None:
    """Every ledger entry from --from to --to, counted or not (with the reason)."""
    _export("detail", start, end, fmt, output, "")


def _export(report: str, start: Any, end: Any, fmt: str, output: str, group_by: str) -> None:
    from pathlib import Path

    from shop.errors import ShopError
    from shop.finance.exports import write_report
    from shop.ledger.services import parse_group_by

    try:
        rows = write_report(
            db.session,
            report,
            fmt,
            start=start.date(),
            end=end.date(),
            group_by=parse_group_by(group_by),
            path=Path(output),
        )
    except ShopError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"wrote {rows} rows to {output}")


@click.command("import-offline")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--by", "email", required=True, help="the finance account importing it")
@with_appcontext
def import_offline(path: str, email: str) -> None:
    """Import counter sales (消费帮扶专柜) from a CSV or xlsx file, each row once."""
    from pathlib import Path

    from shop.errors import ShopError
    from shop.ledger.offline import import_offline_sales
    from shop.spreadsheets import MAX_FILE_BYTES

    file = Path(path)
    with file.open("rb") as handle:
        # One byte over the limit is enough for the reader to refuse the file, unread.
        data = handle.read(MAX_FILE_BYTES + 1)
    try:
        batch, created = import_offline_sales(db.session, data, file.name, _finance_user(email))
    except ShopError as exc:
        for detail in exc.details:
            click.echo(f"  {detail.get('message') or detail}", err=True)
        raise click.ClickException(exc.message) from exc
    if created:
        yuan, fen = divmod(batch.total_fen, 100)
        click.echo(f"imported {batch.rows} rows, {yuan}.{fen:02d} 元")
    else:
        click.echo(f"{file.name} was imported before (import {batch.id}); nothing written")


@click.group("ledger")
def ledger_group() -> None:
    """The assistance ledger: recognition sweep, daily totals."""


@ledger_group.command("recognise")
@with_appcontext
def ledger_recognise() -> None:
    """Write the entries of paid orders and refunds that have none yet."""
    from shop.ledger.services import recognise_all

    click.echo(" ".join(f"{k}={v}" for k, v in recognise_all(db.session).items()))


@ledger_group.command("rollup")
@with_appcontext
def ledger_rollup() -> None:
    """Fold new entries into the daily totals."""
    from shop.ledger.services import rollup

    click.echo(f"folded entries up to {rollup(db.session)} ids further")


@ledger_group.command("rebuild")
@with_appcontext
def ledger_rebuild() -> None:
    """Rebuild the daily totals from the whole ledger."""
    from shop.ledger.services import rebuild_rollups

    rebuild_rollups(db.session)
    click.echo("daily totals rebuilt")


@click.command("emulator")
@click.option("--port", default=12111, show_default=True)
@click.option(
    "--webhook-url", default="http://127.0.0.1:5000/api/v1/stripe/webhook", show_default=True
)
@with_appcontext
def emulator(port: int, webhook_url: str) -> None:
    """Run the Stripe emulator (development and tests only)."""
    from shop.payments.emulator import main as run_emulator

    os.environ.setdefault("STRIPE_SECRET_KEY", current_app.config["STRIPE_SECRET_KEY"])
    os.environ.setdefault("STRIPE_WEBHOOK_SECRET", current_app.config["STRIPE_WEBHOOK_SECRET"])
    run_emulator(["--port", str(port), "--webhook-url", webhook_url])


if __name__ == "__main__":
    main()
