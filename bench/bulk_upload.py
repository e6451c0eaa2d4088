"""Bulk order upload: reading and checking a 10,000-row order file, as GBK CSV and as .xlsx.

Run `.venv/bin/python bench/bulk_upload.py [--rows 10000]`. It needs no server: it builds a SQLite
database in a temporary directory with `shop db upgrade` and `shop demo load`.

What happens: every product is given a stock that cannot run out. Two order files of `--rows`
lines are written, each line a demo SKU that is in season today, in a quantity that meets that
SKU's minimum and increment, to its own canteen in one of Huizhou's districts (so no line is a
duplicate and every line passes): a CSV in GBK, as Excel and WPS save it on Chinese Windows, and
an .xlsx with a title row above the header. Each file is then read with `read_bulk_file` and
checked and priced with `check_bulk_rows`, as an upload is, in a fresh Python process of its own
(so that neither writing the files nor the other format's run sets its memory high-water mark).

How to read it:
- seconds and rows/s are for reading and checking together, in a run without tracemalloc
  (which slows every Python allocation several times over).
- "tracemalloc peak" is the most memory Python held at once during a second, traced run of the
  same work. "ru_maxrss" is that whole process's peak resident size (interpreter, the shop,
  openpyxl, the traced run included) and, in brackets, how far it rose during the timed run; +0
  means the run fitted into memory the process already held after its imports.
- Targets: CSV ≤ 2 s, xlsx ≤ 6 s, tracemalloc peak < 200 MB for each.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from _load import ROOT, VENV_BIN, verdict
from openpyxl import Workbook
from sqlalchemy import select, update

from shop import create_app
from shop.catalog.models import District, Product
from shop.db import DbSession, utcnow
from shop.extensions import db
from shop.procurement.bulk import MAX_FILE_BYTES, check_bulk_rows, read_bulk_file
from shop.timezones import shanghai_today

HEADER = ["商品编码", "数量", "收货人", "电话", "收货地址", "区县"]
TITLE = "惠州市XX局 2026年11月消费帮扶采购单"
UNLIMITED_STOCK = 1_000_000_000
MAX_CSV_SECONDS = 2.0
MAX_XLSX_SECONDS = 6.0
MAX_PEAK_MB = 200.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Measurement:
    label: str
    file_bytes: int
    rows: int
    priced: int
    amount_fen: int
    seconds: float
    traced_peak_bytes: int
    maxrss_bytes: int
    maxrss_growth_bytes: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")

    def line(self) -> str:
        return (
            f"  {self.label:<8} {self.file_bytes / 1024:8.1f} KB   {self.seconds:6.2f} s"
            f"   {self.rows_per_second:9,.0f} rows/s"
            f"   tracemalloc peak {self.traced_peak_bytes / MB:6.1f} MB"
            f"   ru_maxrss {self.maxrss_bytes / MB:.0f} MB (+{self.maxrss_growth_bytes / MB:.1f})"
        )


def shop_command(*argv: str, database_url: str) -> None:
    env = dict(os.environ, DATABASE_URL=database_url)
    done = subprocess.run(
        [str(VENV_BIN / "shop"), *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"shop {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")


def prepare_database(database_url: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Migrate and load the demo; stock for ever; what a valid order line of each SKU is."""
    shop_command("db", "upgrade", database_url=database_url)
    shop_command("demo", "load", database_url=database_url)
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        db.session.execute(update(Product).values(stock=UNLIMITED_STOCK))
        db.session.commit()
        lines = order_lines(db.session, shanghai_today(utcnow()))
        districts = list(db.session.scalars(select(District.name).order_by(District.id)))
        db.session.remove()
        db.engine.dispose()
    return lines, districts


def order_lines(session: DbSession, today: date) -> list[tuple[str, int]]:
    """Each in-season SKU with the smallest quantity its unit rules allow."""
    products = session.scalars(select(Product).where(Product.active).order_by(Product.sku))
    return [
        (p.sku, -(-p.min_order_quantity // p.quantity_increment) * p.quantity_increment)
        for p in products
        if p.in_season(today)
    ]


def order_rows(
    lines: Sequence[tuple[str, int]], districts: Sequence[str], count: int
) -> list[list[str]]:
    return [
        [
            lines[i % len(lines)][0],
            str(lines[i % len(lines)][1]),
            f"食堂管理员{i:05d}",
            f"138{i:08d}",
            f"第 {i % 40 + 1} 街道 {i} 号 第{i:05d}食堂",
            districts[i % len(districts)],
        ]
        for i in range(count)
    ]


def write_gbk_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="gb18030", newline="") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def write_xlsx(path: Path, rows: list[list[str]]) -> Path:
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet()
    sheet.append([TITLE])
    sheet.append(HEADER)
    for sku, quantity, *delivery in rows:
        sheet.append([sku, int(quantity), *delivery])  # quantities as Excel numbers
    workbook.save(path)
    return path


def upload(session: DbSession, path: Path, today: date) -> tuple[int, int, int]:
    """Read and check one file as an upload does; (rows read, lines priced, total fen)."""
    rows = read_bulk_file(path.name, path.read_bytes())
    lines = check_bulk_rows(session, rows, today=today)
    return len(rows), len(lines), sum(line.amount_fen for line in lines)


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # in KB on Linux


def timed(work: Callable[[], tuple[int, int, int]]) -> tuple[tuple[int, int, int], float, int]:
    gc.collect()
    before = maxrss_bytes()
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    return result, seconds, maxrss_bytes() - before


def traced_peak(work: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(label: str, path: Path, today: date) -> Measurement:
    def work() -> tuple[int, int, int]:
        try:
            return upload(db.session, path, today)
        finally:
            db.session.remove()  # each run starts with an empty identity map, as a request does

    (rows, priced, amount_fen), seconds, growth = timed(work)
    return Measurement(
        label=label,
        file_bytes=path.stat().st_size,
        rows=rows,
        priced=priced,
        amount_fen=amount_fen,
        seconds=seconds,
        traced_peak_bytes=traced_peak(work),
        maxrss_bytes=maxrss_bytes(),
        maxrss_growth_bytes=growth,
    )


def measure_here(label: str, path: Path, database_url: str) -> None:
    """The child's side: measure one file and print the result as JSON."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        db.session.execute(select(District.id).limit(1))  # connect before the baseline
        db.session.remove()
        print(json.dumps(asdict(measure(label, path, shanghai_today(utcnow())))))


def measure_in_child(label: str, path: Path, database_url: str) -> Measurement:
    argv = [sys.executable, __file__, "--measure", str(path), "--label", label]
    done = subprocess.run(
        [*argv, "--database-url", database_url], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(f"measuring {label} failed:\n{done.stdout}{done.stderr}")
    return Measurement(**json.loads(done.stdout.splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="order lines per file")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure_here(args.label, args.measure, args.database_url)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        folder = Path(tmp)
        database_url = f"sqlite:///{folder / 'bench.sqlite3'}"
        lines, districts = prepare_database(database_url)
        rows = order_rows(lines, districts, args.rows)
        csv_path = write_gbk_csv(folder / "采购单-gbk.csv", rows)
        xlsx_path = write_xlsx(folder / "采购单.xlsx", rows)
        print(
            f"{args.rows} rows per file, {len(lines)} in-season demo SKUs, "
            f"{len(districts)} Huizhou districts, SQLite; Python {sys.version.split()[0]} on "
            f"{os.cpu_count()} CPU cores"
        )
        print("read_bulk_file + check_bulk_rows, each file in a fresh process")
        runs = [
            measure_in_child("GBK CSV", csv_path, database_url),
            measure_in_child("xlsx", xlsx_path, database_url),
        ]
    for run in runs:
        print(run.line())
    all_priced = all(run.rows == run.priced == args.rows for run in runs)
    same_total = len({run.amount_fen for run in runs}) == 1
    print(
        f"  every row priced in both files: {'OK' if all_priced else 'MISMATCH'}; "
        f"same total in both ({runs[0].amount_fen / 100:,.2f} 元): "
        f"{'OK' if same_total else 'MISMATCH'}"
    )
    if any(run.file_bytes > MAX_FILE_BYTES for run in runs):
        print(f"  note: a file is over the {MAX_FILE_BYTES // MB} MB upload limit")
    csv_run, xlsx_run = runs
    peak = max(run.traced_peak_bytes for run in runs) / MB
    print(
        f"  CSV  {csv_run.seconds:.2f} s   target ≤ {MAX_CSV_SECONDS:g} s: "
        f"{verdict(csv_run.seconds <= MAX_CSV_SECONDS)}"
    )
    print(
        f"  xlsx {xlsx_run.seconds:.2f} s   target ≤ {MAX_XLSX_SECONDS:g} s: "
        f"{verdict(xlsx_run.seconds <= MAX_XLSX_SECONDS)}"
    )
    print(f"  peak {peak:.1f} MB   target < {MAX_PEAK_MB:g} MB: {verdict(peak < MAX_PEAK_MB)}")
    return 0 if all_priced and same_total else 1


if __name__ == "__main__":
    sys.exit(main())
