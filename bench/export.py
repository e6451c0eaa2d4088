"""The detail export at a year's volume: a million ledger entries to CSV, beside PostgreSQL's COPY.

Run `.venv/bin/python bench/export.py [--entries 1000000] [--rounds 3]`. It needs PostgreSQL on
127.0.0.1:5432 (user postgres, trust auth) and uses its own database `bench_export` (created when
missing; the schema by `shop.migrate.upgrade`, then the demo data).

What happens: the ledger is emptied and `--entries` entries are written with one
INSERT … SELECT over generate_series: the demo SKUs in turn (so certified and not, cooperation
counties and 兴义市, with their suppliers), every Huizhou district and 市外, online, unit (the demo
unit's) and counter channels, one in twenty a refund, booked over the 365 days of last year
(Shanghai). The table is vacuumed and analysed. Then, `--rounds` times in turn:
  floor: `COPY (SELECT * FROM ledger_entries) TO STDOUT (FORMAT csv)` read through psycopg into a
         file, in this process;
  shop:  `write_report(session, "detail", "csv", …)` over last year, in a fresh Python process
         of its own (so its ru_maxrss is the export's, not the floor's or the data load's).
A last run of the shop's export, in another fresh process, is traced with tracemalloc.
Finally it checks the shop wrote every entry and that its 合计 row is the sum of the counted
entries as SQL computes it.

How to read it:
- rows/s is the best of the rounds for each side (the machine is shared; the best run is the
  one least disturbed). Every round is printed.
- The shop's file has the report's columns (names from three joined tables, Shanghai times,
  元 with two decimals, 是/否, formula-like text neutralised, a BOM, header and 合计 rows); the
  floor's is the table as stored. Same rows, different work: the ratio says what that work
  costs over a bare table dump.
- "tracemalloc peak" is the most memory Python held at once during the traced run; "ru_maxrss"
  is the whole export process's peak resident size (interpreter, the shop, psycopg's buffers)
  and, in brackets, how far the export raised it above what the process held after its imports.
- Targets: shop rows/s ≥ 50% of COPY's, peak < 200 MB.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import psycopg
from _load import HOST, ROOT, verdict
from sqlalchemy import text

from shop import create_app
from shop.db import utcnow
from shop.demo import load_demo_data
from shop.extensions import db
from shop.finance.exports import write_report
from shop.migrate import upgrade
from shop.timezones import shanghai_today

DATABASE = "bench_export"
DATABASE_URL = f"postgresql+psycopg://postgres@{HOST}:5432/{DATABASE}"
LIBPQ = f"host={HOST} port=5432 user=postgres"
MIN_SHARE_OF_COPY = 0.5
MAX_PEAK_MB = 200.0
MB = 1024 * 1024

GENERATE = """
INSERT INTO ledger_entries (source, source_id, line_no, day, occurred_at, reference, order_id,
    order_line_id, amount_fen, quantity, county_id, county, district, buyer_type, kind, channel,
    funding, category, sku, supplier_id, organisation_id, counted, reason, created_at)
SELECT
    CASE WHEN g.i % 20 = 0 THEN 'refund' ELSE 'payment' END,
    g.i, 1, d.day,
    (d.day + make_interval(secs => (g.i::bigint * 7919) % 86400)) AT TIME ZONE 'Asia/Shanghai',
    'HQ' || to_char(d.day, 'YYMMDD') || lpad(g.i::text, 8, '0'),
    NULL, NULL,
    (CASE WHEN g.i % 20 = 0 THEN -1 ELSE 1 END) * c.price_fen * (1 + g.i % 3),
    (CASE WHEN g.i % 20 = 0 THEN -1 ELSE 1 END) * (1 + g.i % 3),
    c.county_id, c.county,
    (ARRAY['惠城区', '惠阳区', '惠东县', '博罗县', '龙门县', '大亚湾开发区', '仲恺高新区',
           '市外'])[1 + g.i % 8],
    CASE WHEN g.i % 10 = 0 THEN u.type ELSE '个人' END,
    CASE WHEN g.i % 8 = 7 AND g.i % 10 <> 0 THEN '帮助销售' ELSE '采购' END,
    CASE WHEN g.i % 10 = 0 THEN 'unit' WHEN g.i % 25 = 1 THEN 'offline' ELSE 'online' END,
    CASE WHEN g.i % 10 = 0 THEN '财政资金' ELSE '个人' END,
    c.category, c.sku, c.supplier_id,
    CASE WHEN g.i % 10 = 0 THEN u.id END,
    c.certified AND c.cooperation,
    CASE WHEN NOT c.certified THEN '下单时商品未获消费帮扶认定'
         WHEN NOT c.cooperation THEN '产地不是协作县' ELSE '' END,
    now()
FROM generate_series(1, :entries) AS g(i)
JOIN (
    SELECT row_number() OVER (ORDER BY p.id) - 1 AS n, p.sku, p.category, p.supplier_id,
           p.price_fen, p.certified, s.county_id, k.name AS county, k.cooperation
    FROM products p JOIN suppliers s ON s.id = p.supplier_id JOIN counties k ON k.id = s.county_id
) AS c ON c.n = g.i % (SELECT count(*) FROM products)
CROSS JOIN (SELECT id, type FROM organisations ORDER BY id LIMIT 1) AS u
CROSS JOIN LATERAL (SELECT CAST(:first AS date) + (g.i % 365) AS day) AS d
"""
FLOOR = "COPY (SELECT * FROM ledger_entries) TO STDOUT (FORMAT csv)"


@dataclass(frozen=True)
class Run:
    label: str
    rows: int
    seconds: float
    file_bytes: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")

    def line(self) -> str:
        return (
            f"    {self.label:<6} {self.rows:>9,} rows  {self.seconds:6.2f} s"
            f"  {self.rows_per_second:>9,.0f} rows/s  {self.file_bytes / MB:6.1f} MB file"
        )


@dataclass(frozen=True)
class Measured:
    rows: int
    seconds: float
    file_bytes: int
    maxrss_bytes: int
    maxrss_growth_bytes: int
    traced_peak_bytes: int | None
    total_line: str


def last_year() -> tuple[date, date]:
    year = shanghai_today(utcnow()).year - 1
    return date(year, 1, 1), date(year, 12, 31)


def prepare(entries: int) -> None:
    with psycopg.connect(f"{LIBPQ} dbname=postgres", autocommit=True) as admin:
        exists = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]
        ).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{DATABASE}"')
    app = create_app({"SQLALCHEMY_DATABASE_URI": DATABASE_URL})
    logging.getLogger("alembic").setLevel(logging.WARNING)
    upgrade(app)
    first, _last = last_year()
    with app.app_context():
        load_demo_data(db.session)
        db.session.commit()
        db.session.execute(
            text("TRUNCATE ledger_entries, ledger_daily_totals RESTART IDENTITY CASCADE")
        )
        db.session.execute(text("DELETE FROM cursors"))
        started = time.perf_counter()
        db.session.execute(text(GENERATE), {"entries": entries, "first": first})
        db.session.commit()
        seconds = time.perf_counter() - started
        print(f"  generated {entries:,} entries in {seconds:.1f} s", flush=True)
        db.session.remove()
        db.engine.dispose()
    with psycopg.connect(f"{LIBPQ} dbname={DATABASE}", autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE ledger_entries")


def copy_floor(path: Path) -> Run:
    """PostgreSQL's own dump of the table, read the way the shop reads its COPY."""
    with psycopg.connect(f"{LIBPQ} dbname={DATABASE}") as connection:
        started = time.perf_counter()
        with connection.cursor() as cursor, path.open("wb") as out:
            with cursor.copy(FLOOR) as copy:
                for data in copy:
                    out.write(data)
            rows = cursor.rowcount
        seconds = time.perf_counter() - started
    return Run("COPY", rows, seconds, path.stat().st_size)


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # in KB on Linux


def export_here(path: Path, traced: bool) -> Measured:
    """The child's side: one detail export, timed (or traced), measured from inside."""
    first, last = last_year()
    app = create_app({"SQLALCHEMY_DATABASE_URI": DATABASE_URL})
    with app.app_context():
        db.session.execute(text("SELECT 1"))  # connect before the baseline
        db.session.rollback()

        def work() -> int:
            return write_report(
                db.session, "detail", "csv", start=first, end=last, group_by=[], path=path
            )

        gc.collect()
        before = maxrss_bytes()
        peak = None
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        try:
            rows = work()
            seconds = time.perf_counter() - started
            if traced:
                peak = tracemalloc.get_traced_memory()[1]
        finally:
            if traced:
                tracemalloc.stop()
        db.session.remove()
    with path.open("rb") as f:
        f.seek(-400, os.SEEK_END)
        total_line = f.read().decode("utf-8", "replace").splitlines()[-1]
    return Measured(
        rows=rows,
        seconds=seconds,
        file_bytes=path.stat().st_size,
        maxrss_bytes=maxrss_bytes(),
        maxrss_growth_bytes=maxrss_bytes() - before,
        traced_peak_bytes=peak,
        total_line=total_line,
    )


def export_in_child(path: Path, *, traced: bool = False) -> Measured:
    argv = [sys.executable, __file__, "--export-to", str(path)]
    done = subprocess.run(
        [*argv, *(["--traced"] if traced else [])], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(f"the export failed:\n{done.stdout}{done.stderr}")
    return Measured(**json.loads(done.stdout.splitlines()[-1]))


def counted_sum_fen() -> tuple[int, int]:
    first, last = last_year()
    with psycopg.connect(f"{LIBPQ} dbname={DATABASE}") as connection:
        row = connection.execute(
            "SELECT count(*), coalesce(sum(amount_fen) FILTER (WHERE counted), 0)"
            " FROM ledger_entries WHERE day BETWEEN %s AND %s",
            [first, last],
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda run: run.rows_per_second)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--export-to", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_to:
        print(json.dumps(asdict(export_here(args.export_to, args.traced))))
        return 0

    first, last = last_year()
    print(
        f"{args.entries:,} ledger entries over {first} – {last}, PostgreSQL {DATABASE}; "
        f"Python {sys.version.split()[0]} on {os.cpu_count()} CPU cores (shared)",
        flush=True,
    )
    prepare(args.entries)
    floors: list[Run] = []
    shops: list[Run] = []
    measured: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        folder = Path(tmp)
        for _round in range(args.rounds):
            floors.append(copy_floor(folder / "floor.csv"))
            measured.append(export_in_child(folder / "detail.csv"))
        traced = export_in_child(folder / "traced.csv", traced=True)
    for run in measured:
        shops.append(Run("shop", run.rows, run.seconds, run.file_bytes))
    print("  rounds (floor, then shop):")
    for floor, shop in zip(floors, shops, strict=True):
        print(floor.line())
        print(shop.line())

    entries, counted_fen = counted_sum_fen()
    whole, cents = divmod(counted_fen, 100)
    expected_total = f"{whole}.{cents:02d}"
    every_row = all(run.rows == entries for run in measured)
    total_right = all(f",{expected_total}," in run.total_line for run in measured)
    print(
        f"  every entry written: {'OK' if every_row else 'MISMATCH'}; 合计 row = SQL's counted "
        f"sum ({expected_total} 元): {'OK' if total_right else 'MISMATCH'}"
    )

    floor, shop = best(floors), best(shops)
    share = shop.rows_per_second / floor.rows_per_second
    print(
        f"  best: COPY {floor.rows_per_second:,.0f} rows/s, shop {shop.rows_per_second:,.0f} "
        f"rows/s = {share:.0%} of COPY   target ≥ {MIN_SHARE_OF_COPY:.0%}: "
        f"{verdict(share >= MIN_SHARE_OF_COPY)}"
    )
    rss = max(run.maxrss_bytes for run in measured)
    growth = max(run.maxrss_growth_bytes for run in measured)
    peak = (traced.traced_peak_bytes or 0) / MB
    print(
        f"  memory: tracemalloc peak {peak:.1f} MB, ru_maxrss {rss / MB:.0f} MB "
        f"(+{growth / MB:.1f})   target < {MAX_PEAK_MB:g} MB: "
        f"{verdict(peak < MAX_PEAK_MB and rss < MAX_PEAK_MB * MB)}"
    )
    return 0 if every_row and total_right else 1


if __name__ == "__main__":
    sys.exit(main())
