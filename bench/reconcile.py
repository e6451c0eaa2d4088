"""The ledger at a year's volume: recognising, rolling up and reading a million order lines.

Run `.venv/bin/python bench/reconcile.py [--lines 1000000] [--day-lines 40000]`. It needs
PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and uses its own database
`bench_reconcile` (created when missing), whose schema it drops and rebuilds with
`shop.migrate.upgrade` and the demo data.

What happens: a year of paid orders is written straight in SQL (INSERT … SELECT over
generate_series, not through the ORM): `--lines` order lines in orders of 1–5 demo SKUs
(certified and not, cooperation counties and 兴义市), individual online orders delivered in
Huizhou's districts and elsewhere, unit orders of the demo unit. The orders are placed in id
order over the 365 Shanghai days before yesterday; individuals pay minutes later, the unit up
to 20 days later (by invoice). 5% of the orders are refunded (by line, by amount, in full, or
by line and then by amount) within two weeks, with the orders' refunded amounts, statuses and
refunded quantities kept consistent. Then:
  (a) `recognise_all` + `rollup` over all of it, beside its floor: one hand-written
      INSERT … SELECT … GROUP BY of the same order lines (joined to their orders, counties,
      addresses, districts and unit) into a scratch table of the same day × county × district ×
      buyer_type × kind × channel × funding × category × counted cells.
  (b) a day (yesterday) of `--day-lines` new lines, with 5% of its orders refunded the same
      day: `recognise_all` + `rollup` again, beside the same INSERT … SELECT … GROUP BY over
      that day's lines.
  (c) `totals(start, end, group_by=["county", "month"])` over the year and the day, warm: the
      median of `--runs` runs.
Finally it checks the rollups against the ledger (`daily_cells_from_ledger` ==
`daily_cells_from_table`), the ledger against the orders (its sum is every paid order's goods
less the goods part of its refunds: shipping is given back last), the floor against the
ledger's payment entries (the same cells, so both did the same work), and that no
(source, source_id, line_no) appears twice.

How to read it:
- Generating the data is not timed against anything; it is printed so a slow machine shows.
- The statement lines under (a) and (b) split the time of the shop's run by SQL statement
  (count × statement, its total seconds), so what to speed up next is plain.
- The floor runs just before the shop's run, on the same warm tables, with the work_mem the
  shop's bulk statements take (shop.ledger.sql.BULK_WORK_MEM). Each run is shown in wall time
  and in the CPU time of the PostgreSQL backends that did the work: on a machine shared with
  other work the wall times swing with its load, the CPU times much less.
- Targets: (a) ≤ 2 × its floor, (b) ≤ 5 s, (c) ≤ 200 ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from _load import CLOCK_TICKS, HOST, verdict
from flask import Flask
from sqlalchemy import Connection, Engine, create_engine, event, text

from shop import create_app
from shop.demo import load_demo_data
from shop.extensions import db
from shop.ledger.services import (
    daily_cells_from_ledger,
    daily_cells_from_table,
    recognise_all,
    rollup,
    totals,
)
from shop.ledger.sql import BULK_WORK_MEM
from shop.migrate import upgrade
from shop.timezones import SHANGHAI, shanghai_today

DATABASE = "bench_reconcile"
DATABASE_URL = f"postgresql+psycopg://postgres@{HOST}:5432/{DATABASE}"
ADMIN_URL = f"postgresql+psycopg://postgres@{HOST}:5432/postgres"
REFUND_SHARE = 0.05
UNIT_SHARE = 0.15  # of orders; each unit order is larger, so about a third of the goods
HUIZHOU_SHARE = 0.7  # of individual orders, delivered in Huizhou
MAX_A_RATIO = 2.0
MAX_B_SECONDS = 5.0
MAX_C_MS = 200.0
T = TypeVar("T")

# Where individual orders outside Huizhou are delivered: province, city, district.
ELSEWHERE = [
    ("广东省", "广州市", "天河区"),
    ("广东省", "深圳市", "南山区"),
    ("广东省", "东莞市", "南城街道"),
    ("贵州省", "贵阳市", "观山湖区"),
    ("北京市", "北京市", "朝阳区"),
    ("上海市", "上海市", "浦东新区"),
]


# --- the database -----------------------------------------------------------------------------


def fresh_schema() -> Flask:
    """Create `bench_reconcile` if needed, empty its schema, migrate it and load the demo."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DATABASE}
        )
        if not exists:
            connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    admin.dispose()
    engine = create_engine(DATABASE_URL)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    app = create_app({"SQLALCHEMY_DATABASE_URI": DATABASE_URL})
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with app.app_context():
        upgrade(app)
        load_demo_data(db.session)
        db.session.commit()
        db.session.remove()
    return app


# --- generating paid orders in SQL ------------------------------------------------------------

SKUS = """
CREATE TEMP TABLE bench_skus ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY p.id) - 1 AS n, p.id AS product_id, p.sku, p.name, p.pack,
       p.category, s.county_id, p.supplier_id, p.certified, c.cooperation, p.price_fen,
       cert.valid_from, cert.valid_to
FROM products p
JOIN suppliers s ON s.id = p.supplier_id
JOIN counties c ON c.id = s.county_id
LEFT JOIN LATERAL (
    SELECT min(valid_from) AS valid_from, max(valid_to) AS valid_to
    FROM certifications WHERE supplier_id = s.id
) cert ON true
"""

# Orders of 1–5 lines until `lines` lines are placed (the last order is cut short).
PLAN_ORDERS = """
CREATE TEMP TABLE plan_orders ON COMMIT DROP AS
WITH counts AS (
    SELECT k, 1 + floor(random() * 5)::int AS n FROM generate_series(1, :lines) AS k
), placed AS (
    SELECT k, n, sum(n) OVER (ORDER BY k) - n AS before FROM counts
), drawn AS (
    SELECT k, least(n, :lines - before)::int AS n, before, random() AS r_unit,
           random() AS r_where, random() AS r_who, random() AS r_refund, random() AS r_kind,
           random() AS r_amount, random() AS r_delay, random() AS r_sku, random() AS r_place,
           random() AS r_paid, :start + (k - 1 + random()) / count(*) OVER () * :seconds
               * interval '1 second' AS created_at
    FROM placed WHERE before < :lines
)
SELECT :first_order - 1 + k AS order_id, n, :first_line + before AS first_line, created_at,
       CASE WHEN r_unit < :unit_share
            THEN created_at + r_paid * least(interval '20 days', :until - created_at)
            ELSE least(created_at + (3 + r_paid * 22) * interval '1 minute', :until)
       END AS paid_at,
       r_unit < :unit_share AS unit,
       floor(r_sku * 1000)::int AS sku_base,
       floor(r_who * 4)::int AS who,
       floor(r_place * 1000)::int AS place,
       r_where < :huizhou_share AS in_huizhou,
       CASE WHEN r_refund < :refund_share THEN
           CASE WHEN r_kind < 0.45 THEN 'lines' WHEN r_kind < 0.85 THEN 'amount'
                WHEN r_kind < 0.95 THEN 'full' ELSE 'two' END
       END AS refund_kind,
       r_amount, r_delay
FROM drawn
"""

# No two lines of an order share a SKU: 7 is prime to the 33 demo SKUs.
PLAN_LINES = """
CREATE TEMP TABLE plan_lines ON COMMIT DROP AS
SELECT o.first_line + j AS line_id, o.order_id, o.unit, o.created_at, j, s.*,
       CASE WHEN o.unit THEN 5 + floor(random() * 46)::int
            ELSE 1 + floor(random() * 3)::int END AS quantity
FROM plan_orders o
CROSS JOIN LATERAL generate_series(0, o.n - 1) AS j
JOIN bench_skus s ON s.n = (o.sku_base + 7 * j) % (SELECT count(*) FROM bench_skus)
"""

ORDERS = """
INSERT INTO orders (id, number, channel, status, user_id, funding, goods_fen, shipping_fen,
                    total_fen, refunded_fen, currency, created_at, expires_at, paid_at,
                    organisation_id, invoice_due_at)
SELECT o.order_id,
       CASE WHEN o.unit THEN 'HU' ELSE 'HQ' END
           || to_char(o.created_at AT TIME ZONE 'Asia/Shanghai', 'YYMMDD')
           || lpad(o.order_id::text, 10, '0'),
       CASE WHEN o.unit THEN 'unit' ELSE 'online' END, 'paid',
       CASE WHEN o.unit THEN :officer ELSE (CAST(:individuals AS int[]))[1 + o.who] END,
       CASE WHEN o.unit THEN (ARRAY['财政资金', '工会经费', '自有资金'])[1 + o.who % 3]
            ELSE '个人' END,
       g.goods, g.shipping, g.goods + g.shipping, 0, 'cny',
       o.created_at,
       CASE WHEN NOT o.unit THEN o.created_at + interval '30 minutes' END,
       o.paid_at,
       CASE WHEN o.unit THEN :unit END,
       CASE WHEN o.unit THEN o.created_at + interval '30 days' END
FROM plan_orders o
JOIN (
    SELECT l.order_id, sum(l.price_fen * l.quantity) AS goods,
           CASE WHEN bool_or(l.unit) OR sum(l.price_fen * l.quantity) >= 9900 THEN 0
                ELSE 1000 END AS shipping
    FROM plan_lines l GROUP BY l.order_id
) g ON g.order_id = o.order_id
"""

ADDRESSES = """
INSERT INTO order_addresses (id, order_id, name, phone, province, city, district, district_id,
                             detail)
SELECT o.order_id, o.order_id,
       CASE WHEN o.unit THEN '食堂管理员' ELSE '收货人' END || o.order_id,
       '138' || lpad((o.order_id % 100000000)::text, 8, '0'),
       CASE WHEN o.unit OR o.in_huizhou THEN '广东省' ELSE e.province END,
       CASE WHEN o.unit OR o.in_huizhou THEN '惠州市' ELSE e.city END,
       CASE WHEN o.unit OR o.in_huizhou THEN d.name ELSE e.district END,
       CASE WHEN o.unit OR o.in_huizhou THEN d.id END,
       '幸福路 ' || (o.place + 1) || ' 号'
FROM plan_orders o
JOIN (SELECT row_number() OVER (ORDER BY id) - 1 AS n, id, name FROM districts) d
    ON d.n = o.place % (SELECT count(*) FROM districts)
JOIN (
    SELECT ordinality - 1 AS n, province, city, district
    FROM unnest(CAST(:provinces AS text[]), CAST(:cities AS text[]),
                CAST(:districts AS text[]))
         WITH ORDINALITY AS e(province, city, district)
) e ON e.n = o.place % :elsewhere
"""

LINES = """
INSERT INTO order_lines (id, order_id, product_id, address_id, sku, name, pack, category,
                         county_id, supplier_id, certified, cooperation_county, unit_price_fen,
                         quantity, amount_fen, refunded_quantity)
SELECT l.line_id, l.order_id, l.product_id, l.order_id, l.sku, l.name, l.pack, l.category,
       l.county_id, l.supplier_id,
       l.certified AND coalesce(
           CAST(l.created_at AT TIME ZONE 'Asia/Shanghai' AS date)
               BETWEEN l.valid_from AND l.valid_to, false),
       l.cooperation, l.price_fen, l.quantity, l.price_fen * l.quantity, 0
FROM plan_lines l
"""

# A refund by line gives back half (rounded up) of the order's first line; by amount, up to
# half of what was paid; in full, all of it; "two" is a refund by line and then by amount.
PLAN_REFUNDS = """
CREATE TEMP TABLE plan_refunds ON COMMIT DROP AS
WITH refunded AS (
    SELECT o.order_id, o.refund_kind, o.r_amount,
           least(o.paid_at + o.r_delay * interval '14 days', :until) AS at,
           x.total_fen, l.line_id, l.price_fen, ceil(l.quantity / 2.0)::int AS half
    FROM plan_orders o
    JOIN orders x ON x.id = o.order_id
    JOIN plan_lines l ON l.line_id = o.first_line
    WHERE o.refund_kind IS NOT NULL
), parts AS (
    SELECT order_id, 1 AS step, 'lines' AS kind, price_fen * half AS amount_fen, at,
           line_id, half AS quantity
    FROM refunded WHERE refund_kind IN ('lines', 'two')
    UNION ALL
    SELECT order_id, 1, 'amount', 1 + floor(r_amount * total_fen / 2)::int, at, NULL, NULL
    FROM refunded WHERE refund_kind = 'amount'
    UNION ALL
    SELECT order_id, 1, 'full', total_fen, at, NULL, NULL
    FROM refunded WHERE refund_kind = 'full'
    UNION ALL
    SELECT order_id, 2, 'amount',
           1 + floor(r_amount * (total_fen - price_fen * half - 1))::int,
           least(at + interval '1 hour', :until), NULL, NULL
    FROM refunded WHERE refund_kind = 'two' AND total_fen - price_fen * half >= 1
)
SELECT :first_refund - 1 + row_number() OVER (ORDER BY order_id, step) AS refund_id, *
FROM parts
"""

REFUNDS = """
INSERT INTO refunds (id, order_id, kind, amount_fen, status, reason, created_by, created_at,
                     succeeded_at)
SELECT refund_id, order_id, kind, amount_fen, 'succeeded', '买家申请退款', :admin,
       at - interval '2 minutes', at
FROM plan_refunds
"""

REFUND_LINES = """
INSERT INTO refund_lines (refund_id, order_line_id, quantity, amount_fen)
SELECT r.refund_id, r.line_id, r.quantity, r.amount_fen
FROM plan_refunds r WHERE r.kind = 'lines'
UNION ALL
SELECT r.refund_id, l.id, l.quantity, l.amount_fen
FROM plan_refunds r JOIN order_lines l ON l.order_id = r.order_id
WHERE r.kind = 'full'
ORDER BY 1, 2
"""

REFUNDED_QUANTITIES = """
UPDATE order_lines l SET refunded_quantity = l.refunded_quantity + q.quantity
FROM (
    SELECT rl.order_line_id, sum(rl.quantity) AS quantity
    FROM refund_lines rl JOIN plan_refunds r ON r.refund_id = rl.refund_id
    GROUP BY rl.order_line_id
) q
WHERE l.id = q.order_line_id
"""

REFUNDED_ORDERS = """
UPDATE orders o
SET refunded_fen = o.refunded_fen + r.amount_fen,
    status = CASE WHEN o.refunded_fen + r.amount_fen >= o.total_fen THEN 'refunded'
                  ELSE 'partially_refunded' END
FROM (SELECT order_id, sum(amount_fen) AS amount_fen FROM plan_refunds GROUP BY order_id) r
WHERE o.id = r.order_id
"""

SEQUENCES = ("orders", "order_addresses", "order_lines", "refunds", "refund_lines")


@dataclass(frozen=True)
class Batch:
    """What one generation wrote: its order and line id ranges, its refunds and its days."""

    first_order: int
    last_order: int
    first_line: int
    last_line: int
    refunds: int
    first_day: date
    last_day: date

    @property
    def lines(self) -> int:
        return self.last_line - self.first_line + 1

    @property
    def orders(self) -> int:
        return self.last_order - self.first_order + 1


def shanghai_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=SHANGHAI).astimezone(UTC)


def generate(connection: Connection, lines: int, first_day: date, days: int) -> Batch:
    """Paid orders of `lines` lines over `days` Shanghai days from `first_day`, 5% refunded."""
    ids = {
        name: int(connection.scalar(text(f"SELECT coalesce(max(id), 0) FROM {name}")) or 0)
        for name in ("orders", "order_lines", "refunds")
    }
    users = {email: id_ for email, id_ in connection.execute(text("SELECT email, id FROM users"))}
    unit_id = connection.scalar(text("SELECT min(id) FROM organisations"))
    start = shanghai_midnight(first_day)
    end = shanghai_midnight(first_day + timedelta(days=days))
    parameters: dict[str, Any] = {
        "lines": lines,
        "start": start,
        "seconds": (end - start).total_seconds(),
        "first_order": ids["orders"] + 1,
        "first_line": ids["order_lines"] + 1,
        "first_refund": ids["refunds"] + 1,
        "until": end - timedelta(seconds=1),
        "unit_share": UNIT_SHARE,
        "huizhou_share": HUIZHOU_SHARE,
        "refund_share": REFUND_SHARE,
        "officer": users["officer@example.com"],
        "admin": users["admin@example.com"],
        "unit": unit_id,
        "individuals": [
            users[email]
            for email in (
                "buyer@example.com",
                "finance@example.com",
                "officer@example.com",
                "approver@example.com",
            )
        ],
        "provinces": [p for p, _, _ in ELSEWHERE],
        "cities": [c for _, c, _ in ELSEWHERE],
        "districts": [d for _, _, d in ELSEWHERE],
        "elsewhere": len(ELSEWHERE),
    }
    connection.execute(text("SELECT setseed(:seed)"), {"seed": (days % 97) / 100})
    for statement in (SKUS, PLAN_ORDERS, PLAN_LINES, ORDERS, ADDRESSES, LINES):
        connection.execute(text(statement), parameters)
    for statement in (PLAN_REFUNDS, REFUNDS, REFUND_LINES, REFUNDED_QUANTITIES, REFUNDED_ORDERS):
        connection.execute(text(statement), parameters)
    refunds = int(connection.scalar(text("SELECT count(*) FROM plan_refunds")) or 0)
    last_order = int(connection.scalar(text("SELECT max(order_id) FROM plan_orders")) or 0)
    for table in SEQUENCES:
        connection.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT coalesce(max(id), 1) FROM {table}))"
            )
        )
    return Batch(
        first_order=ids["orders"] + 1,
        last_order=last_order,
        first_line=ids["order_lines"] + 1,
        last_line=ids["order_lines"] + lines,
        refunds=refunds,
        first_day=first_day,
        last_day=first_day + timedelta(days=days - 1),
    )


def vacuum_analyze(engine: Engine, tables: tuple[str, ...]) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in tables:
            connection.execute(text(f"VACUUM ANALYZE {table}"))


# --- the floor --------------------------------------------------------------------------------

FLOOR_TABLE = """
CREATE TABLE IF NOT EXISTS bench_floor_cells (
    day date, county varchar(32), district varchar(32), buyer_type varchar(16),
    kind varchar(8), channel varchar(8), funding varchar(16), category varchar(16),
    counted boolean, amount_fen bigint, lines bigint, orders bigint
)
"""

FLOOR = """
INSERT INTO bench_floor_cells
SELECT CAST(o.paid_at AT TIME ZONE 'Asia/Shanghai' AS date), c.name,
       CASE WHEN o.channel = 'unit' THEN ud.name WHEN ad.name IS NOT NULL THEN ad.name
            ELSE '市外' END,
       CASE WHEN o.channel = 'unit' THEN org.type ELSE '个人' END,
       CASE WHEN o.channel = 'unit' OR a.district_id IS NOT NULL THEN '采购'
            ELSE '帮助销售' END,
       o.channel, o.funding, l.category, l.certified AND l.cooperation_county,
       sum(l.amount_fen), count(*), count(DISTINCT o.id)
FROM order_lines l
JOIN orders o ON o.id = l.order_id
JOIN counties c ON c.id = l.county_id
LEFT JOIN organisations org ON org.id = o.organisation_id
LEFT JOIN districts ud ON ud.id = org.district_id
LEFT JOIN order_addresses a ON a.id = l.address_id
LEFT JOIN districts ad ON ad.id = a.district_id
WHERE o.paid_at IS NOT NULL AND l.id BETWEEN :first_line AND :last_line
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""


@dataclass(frozen=True)
class Timing:
    seconds: float
    server_cpu: float  # CPU seconds of the database backends that did the work


class ServerCpu:
    """CPU time of the PostgreSQL backends an engine's connections are served by.

    On a machine shared with other work, wall time swings with the load; the backends' own CPU
    time much less, so both are printed.
    """

    def __init__(self, engine: Engine) -> None:
        self.pids: set[int] = set()
        event.listen(engine, "checkout", self._checkout)

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self.pids.add(int(dbapi_connection.info.backend_pid))

    def seconds(self) -> float:
        used = 0.0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        return used


def timed_on(cpu: ServerCpu, work: Callable[[], T]) -> tuple[T, Timing]:
    cpu_before = cpu.seconds()
    result, seconds = timed(work)
    return result, Timing(seconds, cpu.seconds() - cpu_before)


def floor(engine: Engine, cpu: ServerCpu, batch: Batch) -> Timing:
    """The hand-written INSERT … SELECT … GROUP BY of the batch's lines, with the same
    work_mem the shop's bulk statements take."""
    with engine.begin() as connection:
        connection.execute(text(FLOOR_TABLE))
        connection.execute(text("TRUNCATE bench_floor_cells"))
    with engine.begin() as connection:
        connection.execute(text(f"SET LOCAL work_mem = '{BULK_WORK_MEM}'"))
        lines = {"first_line": batch.first_line, "last_line": batch.last_line}
        _, timing = timed_on(cpu, lambda: connection.execute(text(FLOOR), lines))
    return timing


# --- timing the shop --------------------------------------------------------------------------


class StatementClock:
    """Wall time per SQL statement the shop sends, summed by the statement's opening words."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.running = False

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started = conn.info["bench_started"].pop()
        if self.running:
            words = " ".join(statement.split())
            key = words[:72]
            if words.startswith("INSERT"):
                key += " … SELECT" if " SELECT " in words else " … VALUES"
            self.seconds[key] += time.perf_counter() - started
            self.calls[key] += 1

    @contextmanager
    def watching(self) -> Iterator[None]:
        self.seconds.clear()
        self.calls.clear()
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        self.running = True
        try:
            yield
        finally:
            self.running = False
            event.remove(self.engine, "before_cursor_execute", self._before)
            event.remove(self.engine, "after_cursor_execute", self._after)

    def lines(self, top: int = 6) -> list[str]:
        ranked = sorted(self.seconds.items(), key=lambda item: -item[1])[:top]
        return [f"      {seconds:7.3f} s  {self.calls[key]:5d} × {key}" for key, seconds in ranked]


def timed(work: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


@dataclass(frozen=True)
class Recognised:
    payment_entries: int
    refund_entries: int
    recognise: Timing
    rollup: Timing

    @property
    def seconds(self) -> float:
        return self.recognise.seconds + self.rollup.seconds

    @property
    def server_cpu(self) -> float:
        return self.recognise.server_cpu + self.rollup.server_cpu


def recognise_and_roll_up(clock: StatementClock, cpu: ServerCpu) -> Recognised:
    with clock.watching():
        written, recognise_timing = timed_on(cpu, lambda: recognise_all(db.session))
        _, rollup_timing = timed_on(cpu, lambda: rollup(db.session))
    db.session.remove()
    return Recognised(
        written["payment_entries"], written["refund_entries"], recognise_timing, rollup_timing
    )


def report(run: Recognised, floor_timing: Timing, clock: StatementClock) -> None:
    print(
        f"    recognise_all {run.recognise.seconds:6.2f} s + rollup {run.rollup.seconds:5.2f} s"
        f" = {run.seconds:6.2f} s (server CPU {run.server_cpu:6.2f} s);"
        f" {run.payment_entries:,} payment and {run.refund_entries:,} refund entries"
    )
    print(
        f"    floor                                 {floor_timing.seconds:6.2f} s"
        f" (server CPU {floor_timing.server_cpu:6.2f} s)"
    )
    print(
        f"    ratio {run.seconds / floor_timing.seconds:.2f} by wall time,"
        f" {run.server_cpu / max(floor_timing.server_cpu, 1e-9):.2f} by server CPU"
    )
    print("    the shop's time by statement (wall):")
    for line in clock.lines():
        print(line)


# --- checks -----------------------------------------------------------------------------------

EXPECTED_LEDGER_SUM = """
SELECT coalesce(sum(goods_fen - least(refunded_fen, goods_fen)), 0)
FROM orders WHERE paid_at IS NOT NULL
"""

FLOOR_AGAINST_LEDGER = """
SELECT count(*) FROM (
    (SELECT * FROM bench_floor_cells
     EXCEPT ALL
     SELECT day, county, district, buyer_type, kind, channel, funding, category, counted,
            sum(amount_fen), count(*), count(DISTINCT source_id)
     FROM ledger_entries WHERE source = 'payment' AND order_line_id BETWEEN :first AND :last
     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9)
    UNION ALL
    (SELECT day, county, district, buyer_type, kind, channel, funding, category, counted,
            sum(amount_fen), count(*), count(DISTINCT source_id)
     FROM ledger_entries WHERE source = 'payment' AND order_line_id BETWEEN :first AND :last
     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
     EXCEPT ALL
     SELECT * FROM bench_floor_cells)
) AS differing
"""


def ok(good: bool) -> str:
    return "OK" if good else "MISMATCH"


def check(engine: Engine, day: Batch) -> bool:
    from_ledger = daily_cells_from_ledger(db.session)
    from_table = daily_cells_from_table(db.session)
    db.session.remove()
    with engine.connect() as connection:
        ledger_sum = int(connection.scalar(text("SELECT sum(amount_fen) FROM ledger_entries")))
        expected = int(connection.scalar(text(EXPECTED_LEDGER_SUM)))
        duplicates = int(
            connection.scalar(
                text(
                    "SELECT count(*) FROM (SELECT 1 FROM ledger_entries"
                    " GROUP BY source, source_id, line_no HAVING count(*) > 1) AS twice"
                )
            )
        )
        floor_differs = int(
            connection.scalar(
                text(FLOOR_AGAINST_LEDGER), {"first": day.first_line, "last": day.last_line}
            )
        )
    cells_agree = from_ledger == from_table
    sums_agree = ledger_sum == expected
    print("correctness")
    print(
        f"  daily_cells_from_ledger == daily_cells_from_table ({len(from_table):,} cells):"
        f" {ok(cells_agree)}"
    )
    print(
        f"  ledger sum {ledger_sum / 100:,.2f} 元 == paid goods − refunds' goods parts"
        f" {expected / 100:,.2f} 元: {ok(sums_agree)}"
    )
    print(f"  duplicate (source, source_id, line_no): {duplicates} ({ok(duplicates == 0)})")
    print(
        f"  the day's floor cells == its payment entries summed: {ok(floor_differs == 0)}"
        f" ({floor_differs} differing cells)"
    )
    return cells_agree and sums_agree and duplicates == 0 and floor_differs == 0


# --- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="order lines over the year")
    parser.add_argument("--day-lines", type=int, default=40_000, help="order lines of the day")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of the totals query")
    args = parser.parse_args(argv)

    print(
        f"PostgreSQL database {DATABASE}; this machine has {os.cpu_count()} CPU cores, shared"
        " with whatever else runs: compare each figure with its floor from the same run."
    )
    app = fresh_schema()
    engine = create_engine(DATABASE_URL)
    today = shanghai_today(datetime.now(UTC))
    day = today - timedelta(days=1)
    year_start = day - timedelta(days=365)

    with engine.begin() as connection:
        year, seconds = timed(lambda: generate(connection, args.lines, year_start, 365))
    vacuum_analyze(engine, ("orders", "order_addresses", "order_lines", "refunds", "refund_lines"))
    print(
        f"generated {year.lines:,} order lines in {year.orders:,} paid orders and {year.refunds:,}"
        f" refunds from {year.first_day} to {year.last_day} in {seconds:.1f} s (SQL)"
    )

    floor_cpu = ServerCpu(engine)
    with app.app_context():
        clock = StatementClock(db.engine)
        shop_cpu = ServerCpu(db.engine)
        print("(a) the year: recognise every payment and refund, build the daily totals")
        floor_a = floor(engine, floor_cpu, year)
        run_a = recognise_and_roll_up(clock, shop_cpu)
        report(run_a, floor_a, clock)
        ratio = run_a.seconds / floor_a.seconds
        print(f"    target ≤ {MAX_A_RATIO:g} × floor: {verdict(ratio <= MAX_A_RATIO)}")

        with engine.begin() as connection:
            batch, seconds = timed(lambda: generate(connection, args.day_lines, day, 1))
        print(
            f"(b) {day}: {batch.lines:,} new order lines in {batch.orders:,} orders,"
            f" {batch.refunds:,} refunds (generated in {seconds:.1f} s)"
        )
        floor_b = floor(engine, floor_cpu, batch)
        run_b = recognise_and_roll_up(clock, shop_cpu)
        report(run_b, floor_b, clock)
        print(f"    target ≤ {MAX_B_SECONDS:g} s: {verdict(run_b.seconds <= MAX_B_SECONDS)}")

        print(f"(c) totals by county × month, {year_start} to {day}, warm")

        def read() -> int:
            found = totals(db.session, start=year_start, end=day, group_by=["county", "month"])
            db.session.rollback()
            return len(found.rows)

        rows = read()
        samples = [timed(read)[1] * 1000 for _ in range(args.runs)]
        db.session.remove()
        median = statistics.median(samples)
        print(
            f"    {rows} rows; median {median:.1f} ms of {args.runs} runs"
            f" (min {min(samples):.1f}, max {max(samples):.1f})"
            f"   target ≤ {MAX_C_MS:g} ms: {verdict(median <= MAX_C_MS)}"
        )
        correct = check(engine, batch)
    engine.dispose()
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
