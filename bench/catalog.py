"""The catalogue under load: GET /api/v1/products against its own SELECT served bare.

Run `.venv/bin/python bench/catalog.py [--duration 20] [--clients 32]`. It needs PostgreSQL on
127.0.0.1:5432 (user postgres, trust auth) and drops and recreates its own database `bench`,
built with `shop db upgrade` and `shop demo load`.

Two pages are measured: page 1 of the whole catalogue, and page 1 of one county (普安县). The
shop is served by gunicorn; `--clients` keep-alive connections request the page back to back
for `--duration` seconds. Then the same load, with the same gunicorn settings, hits the floor
(bench/floor_app.py): an endpoint that runs the SELECT `shop.catalog.services.catalogue_query`
compiles to, and answers its rows as JSON. For the county page the shop first looks the
county up by name, a second query the floor does not make: that is part of what is measured.

How to read it:
- req/s counts 200 answers; p50/p99 are over every answer; errors are all other answers and
  transport failures, with their statuses in brackets.
- "same products" checks, once before the load, that shop and floor list the same SKUs, so
  both really do the same query.
- The CPU line splits the machine's cores (100% = all of them) between the load generator,
  gunicorn, PostgreSQL, "everything else" (processes not started here, such as someone's test
  run, short-lived database connections, the kernel) and idle. When everything else takes over
  15% of a run, a note says the comparison is skewed: rerun on a quiet machine.
- Target: shop req/s ≥ 60% of the floor's, for each page.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlencode

from _load import (
    Call,
    Gunicorn,
    LoadResult,
    disturbance_note,
    free_port,
    fresh_database,
    machine_note,
    postgres_processes,
    process_tree,
    request_json,
    run_load,
    verdict,
)
from sqlalchemy import Engine, create_engine

MIN_SHARE_OF_FLOOR = 0.6


@dataclass(frozen=True)
class Page:
    query: dict[str, str]

    @property
    def shop_path(self) -> str:
        return "/api/v1/products?" + urlencode({**self.query, "page": "1"})

    @property
    def floor_path(self) -> str:
        return "/products?" + urlencode(self.query)


PAGES = [Page({}), Page({"county": "普安县"})]


def listed_skus(port: int, path: str) -> list[str]:
    status, body = request_json(port, "GET", path)
    if status != 200:
        raise SystemExit(f"GET {path} answered {status}: {body[:500]!r}")
    found = json.loads(body)
    rows = found["items"] if isinstance(found, dict) else found
    return [row["sku"] for row in rows]


def measure_pages(
    engine: Engine, port: int, paths: list[str], gunicorn: int, args: argparse.Namespace
) -> tuple[list[LoadResult], list[list[str]]]:
    listed = [listed_skus(port, path) for path in paths]
    watch = {
        "gunicorn": lambda: process_tree(gunicorn),
        "PostgreSQL": lambda: postgres_processes(engine),
    }
    results = []
    for path in paths:
        call = Call("GET", path)
        run_load(port, call, clients=args.clients, duration=args.warmup)
        results.append(
            run_load(port, call, clients=args.clients, duration=args.duration, watch=watch)
        )
    return results, listed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    args = parser.parse_args(argv)
    server = Gunicorn(args.workers, args.threads)

    print(machine_note("gunicorn and PostgreSQL"))
    print(f"{args.clients} clients × {args.duration:g} s per run, {server}")
    engine = create_engine(fresh_database())
    try:
        with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
            logs = Path(tmp)
            port = free_port()
            with server.shop(port, logs) as gunicorn:
                shop, shop_skus = measure_pages(
                    engine, port, [page.shop_path for page in PAGES], gunicorn.pid, args
                )
            port = free_port()
            with server.floor(port, logs) as gunicorn:
                floor, floor_skus = measure_pages(
                    engine, port, [page.floor_path for page in PAGES], gunicorn.pid, args
                )
    finally:
        engine.dispose()

    all_same = True
    for page, shop_run, floor_run, skus, bare_skus in zip(
        PAGES, shop, floor, shop_skus, floor_skus, strict=True
    ):
        same = skus == bare_skus
        all_same &= same
        share = shop_run.rate(200) / floor_run.rate(200) if floor_run.rate(200) else 0.0
        print()
        print(f"GET {unquote(page.shop_path)} vs its SELECT only (floor)")
        for label, run in (("shop", shop_run), ("floor", floor_run)):
            print(run.line(label, 200, "req/s"))
            print(run.cpu_line())
        print(f"  same {len(skus)} products on both: {'yes' if same else 'NO'}")
        if note := disturbance_note({"shop": shop_run, "floor": floor_run}):
            print(note)
        print(
            f"  shop/floor {share:.0%}   target ≥ {MIN_SHARE_OF_FLOOR:.0%}: "
            f"{verdict(share >= MIN_SHARE_OF_FLOOR)}"
        )
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
