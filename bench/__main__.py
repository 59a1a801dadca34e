"""Run every benchmark and print one table: `.venv/bin/python -m bench` (or `make bench`).

    .venv/bin/python -u -m bench                 # all of BENCHMARKS, fresh fogdeck_bench database
    .venv/bin/python -u -m bench --only api      # some of them (repeat --only)
    .venv/bin/python -u -m bench --keep-db       # reuse the database (skips re-creating 100k devices)

Each benchmark is a module of this package with a `run() -> list[Row]`; add one by appending its module
name to BENCHMARKS. Results go to bench/results/latest.json (and a timestamped copy).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import signal
import time
import traceback

from bench import common
from bench.report import Row, machine, print_rows, table, write_json

# Order matters a little: `api` adds 100,000 devices and reads the rollout `fanout` leaves behind; `resolve`
# shares that database; `dashboard`, `drift` and `dispatch` keep databases of their own (each runs in a child
# process).
BENCHMARKS = ["ingest", "latency", "fanout", "api", "resolve", "dashboard", "drift", "dispatch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these (repeatable)")
    parser.add_argument("--keep-db", action="store_true", help="don't drop and re-create fogdeck_bench first")
    args = parser.parse_args()
    # a TERM unwinds like Ctrl-C, so every Stack stops the processes it started
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    common.setup_django(fresh=not args.keep_db)
    about = machine()
    print(f"machine: {about}", flush=True)
    rows: list[Row] = []
    durations: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name in args.only or BENCHMARKS:
        print(f"\n== {name}", flush=True)
        begun = time.monotonic()
        module = importlib.import_module(f"bench.{name}")
        try:
            found = module.run()
        except Exception:
            failures[name] = traceback.format_exc()
            print(f"  {name} FAILED:\n{failures[name]}", flush=True)
            found = []
        durations[name] = round(time.monotonic() - begun, 1)
        print_rows(found)
        print(f"  ({durations[name]:.0f} s)", flush=True)
        rows += found
    total = time.monotonic() - started
    print(f"\n== all figures ({total / 60:.1f} min in total)\n{table(rows)}", flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {
        "finished_at": stamp,
        "machine": about,
        "seconds": round(total, 1),
        "durations": durations,
        "rows": [r.as_dict() for r in rows],
        "failures": failures,
        "table": table(rows),
    }
    write_json(common.ROOT / "bench" / "results" / "latest.json", payload)
    write_json(common.ROOT / "bench" / "results" / f"bench-{stamp}.json", payload)
    if failures:
        raise SystemExit(f"failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
