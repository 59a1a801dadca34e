"""The scheduled drift evaluation over a fleet's window of raw telemetry, in seconds and rows per second.

    . /tmp/testenv.sh   # or any DATABASE_URL
    .venv/bin/python -u -m bench.drift [--devices 500] [--intervals 60] [--sites 5] [--runs 3]
    .venv/bin/python -u -m bench --only drift        # the same defaults, as part of the suite's table

Fills a database of its own (`<BENCH_DATABASE_NAME>_drift`, i.e. `fogdeck_bench_drift`; kept between runs,
so under `python -m bench` it runs in a child process) with `devices x intervals` raw telemetry samples
(each with 4 input features and their histograms on the default edges), stored through the real
ingest (`telemetry_ingest_batch`: COPY), then measures in the same run:

* **sql**: the PostgreSQL aggregate the evaluation uses (`_window_sql`);
* **python**: the fallback that streams every row's JSON to Python and adds it up there (`_window_python`,
  the baseline);
* **evaluate**: the whole `drift_evaluate` (aggregate, scoring, alerts) as Celery beat runs it.

The samples are deleted again at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from bench import common
from bench.report import Row, print_rows, write_rows

DB_NAME = common.own_database("drift")  # its samples stay out of the other benchmarks' telemetry


def setup_django() -> None:
    common.setup_django(database=DB_NAME)


def best_of(runs: int, work):  # type: ignore[no-untyped-def]
    """The shortest of `runs` timings of `work()`, and what its last call returned."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def run(devices: int = 500, intervals: int = 60, sites: int = 5, runs: int = 3) -> list[Row]:
    """For `python -m bench`: `measure` in a child process, on this benchmark's own database (30,000
    samples: ~25 s on an idle 2-core box, ~1.5 min under load)."""
    args = ["--devices", str(devices), "--intervals", str(intervals), "--sites", str(sites), "--runs", str(runs)]
    return common.run_isolated("drift", *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--intervals", type=int, default=60, help="telemetry messages per device in the window")
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the samples (to EXPLAIN the query)")
    parser.add_argument("--rows-json", help="write the rows here (for the runner, bench.__main__)")
    args = parser.parse_args()
    setup_django()
    rows = measure(args.devices, args.intervals, args.sites, args.runs, keep=args.keep)
    if args.rows_json:
        write_rows(args.rows_json, rows)
    else:
        print_rows(rows)


def measure(devices: int, intervals: int, sites: int, runs: int, *, keep: bool = False) -> list[Row]:
    """Store the window's samples, time both aggregates and the evaluation (Django set up on DB_NAME)."""
    import numpy as np
    from django.utils import timezone

    from agent.telemetry import TelemetryRecorder
    from audit.actors import Actor
    from fleet.models import Device, Site
    from models_registry.models import ModelVersion, RegisteredModel
    from protocol.messages import TelemetryMessage
    from telemetry.drift import _window_python, _window_sql, drift_evaluate, profile_from_samples
    from telemetry.models import DriftAlert, ReferenceProfile, TelemetrySample
    from telemetry.services import TelemetryEnvelope, telemetry_ingest_batch

    model, _ = RegisteredModel.objects.get_or_create(name="bench-drift", defaults={"task": "classification"})
    version = ModelVersion.objects.filter(model=model, number=1).first()
    if version is None:
        version = ModelVersion.objects.create(
            model=model,
            number=1,
            format="onnx",
            framework="other",
            sha256="0" * 64,
            size=1,
            status="published",
            artifact_key="bench/none",
        )
    rng = np.random.default_rng(0)
    ReferenceProfile.objects.update_or_create(
        version=version,
        defaults={
            "features": profile_from_samples({"input": rng.normal(0, 1, size=(20_000, 4))}),
            "updated_at": timezone.now(),
        },
    )
    site_rows = [Site.objects.get_or_create(name=f"bench-drift-{i}", defaults={"latitude": 0, "longitude": 0})[0]
                 for i in range(sites)]  # fmt: skip
    uids = [f"bench-drift-{i:05d}" for i in range(devices)]
    existing = set(Device.objects.filter(uid__in=uids).values_list("uid", flat=True))
    Device.objects.bulk_create(
        [Device(uid=u, name=u, site=site_rows[i % sites], tier="edge", arch="aarch64", cpu="A72", memory_mb=2048)
         for i, u in enumerate(uids) if u not in existing],
        batch_size=2000,
    )  # fmt: skip
    # A few hundred distinct samples (one site drifted), reused across messages: generating is not measured.
    pool: dict[bool, list] = {}
    for drifted in (False, True):
        pool[drifted] = []
        for _ in range(50):
            recorder = TelemetryRecorder()
            recorder.record_latencies(model.name, 1, np.full(20, 5.0))
            recorder.record_inputs(model.name, 1, {"input": rng.normal(1.5 if drifted else 0.0, 1, size=(20, 4))})
            pool[drifted].append(recorder.drain())
    TelemetrySample.objects.filter(device__uid__startswith="bench-drift-").delete()
    DriftAlert.objects.filter(version=version).delete()
    started = time.perf_counter()
    now = timezone.now()
    batch: list[TelemetryEnvelope] = []
    for interval in range(intervals):
        ts = now - dt.timedelta(seconds=10 * (intervals - interval))
        for i, uid in enumerate(uids):
            samples = pool[i % sites == 0][(i + interval) % 50]
            message = TelemetryMessage(schema_version=1, ts=ts, interval_s=10.0, samples=samples)
            batch.append(TelemetryEnvelope(uid, message))
            if len(batch) >= 2000:
                telemetry_ingest_batch(batch)
                batch = []
    telemetry_ingest_batch(batch)
    count = devices * intervals
    print(f"stored {count} samples ({devices} devices x {intervals} intervals, {sites} sites) "
          f"in {time.perf_counter() - started:.1f}s")  # fmt: skip

    versions = [(model.name, 1)]
    since, until = timezone.now() - dt.timedelta(hours=1), timezone.now() + dt.timedelta(minutes=1)
    sql, by_sql = best_of(runs, lambda: _window_sql(versions, since, until))
    python, by_python = best_of(runs, lambda: _window_python(versions, since, until))
    if by_sql.keys() != by_python.keys():
        raise SystemExit("the two aggregations disagree")
    evaluate, results = best_of(runs, lambda: drift_evaluate(actor=Actor.system("bench")))
    opened = sorted(r.site for r in results if r.outcome in ("opened", "still_open"))
    print(f"sql aggregate      {sql:7.3f}s  {count / sql:10.0f} samples/s")
    print(f"python aggregate   {python:7.3f}s  {count / python:10.0f} samples/s   (baseline)")
    print(f"drift_evaluate     {evaluate:7.3f}s  ({len(results)} (version, site) pairs; alerts at {opened})")
    print(f"sql vs python: {python / sql:.1f}x faster")
    if not keep:
        TelemetrySample.objects.filter(device__uid__startswith="bench-drift-").delete()
    window = f"{count:,} samples ({devices:,} devices x {intervals})"
    return [
        Row("drift", f"window aggregate in SQL, {window}", sql, "s", "Python fallback", python,
            note=f"best of {runs}; {count / sql:,.0f} vs {count / python:,.0f} samples/s"),
        Row("drift", f"drift_evaluate (aggregate, scores, alerts), {window}", evaluate, "s", "Python fallback",
            python, note=f"{len(results)} (version, site) pairs; alerts at {', '.join(map(str, opened)) or 'none'}"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
