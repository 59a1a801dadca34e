"""The scheduled drift evaluation over a fleet's window of raw telemetry, in seconds and rows per second.

    . /tmp/testenv.sh   # or any DATABASE_URL
    .venv/bin/python -m bench.drift [--devices 500] [--intervals 60] [--sites 5]

Fills a database of its own (`fogdeck_bench_drift`) with `devices x intervals` raw telemetry samples
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
import os
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

from bench.common import ROOT

DB_NAME = "fogdeck_bench_drift"  # not shared with the other benchmarks: this branch adds migrations


def setup_django() -> None:
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/fogdeck"
    url = urlunsplit(urlsplit(base)._replace(path=f"/{DB_NAME}"))
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", "fogdeck-bench-secret-key-not-for-production-0123456789")
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
    sys.path.insert(0, str(ROOT))
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            conn.execute(f"CREATE DATABASE {DB_NAME}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env=os.environ)
    import django

    django.setup()


def best_of(runs: int, work):  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--intervals", type=int, default=60, help="telemetry messages per device in the window")
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the samples (to EXPLAIN the query)")
    args = parser.parse_args()
    setup_django()

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
    sites = [Site.objects.get_or_create(name=f"bench-drift-{i}", defaults={"latitude": 0, "longitude": 0})[0]
             for i in range(args.sites)]  # fmt: skip
    uids = [f"bench-drift-{i:05d}" for i in range(args.devices)]
    existing = set(Device.objects.filter(uid__in=uids).values_list("uid", flat=True))
    Device.objects.bulk_create(
        [Device(uid=u, name=u, site=sites[i % len(sites)], tier="edge", arch="aarch64", cpu="A72", memory_mb=2048)
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
    for interval in range(args.intervals):
        ts = now - dt.timedelta(seconds=10 * (args.intervals - interval))
        for i, uid in enumerate(uids):
            samples = pool[i % len(sites) == 0][(i + interval) % 50]
            message = TelemetryMessage(schema_version=1, ts=ts, interval_s=10.0, samples=samples)
            batch.append(TelemetryEnvelope(uid, message))
            if len(batch) >= 2000:
                telemetry_ingest_batch(batch)
                batch = []
    telemetry_ingest_batch(batch)
    rows = args.devices * args.intervals
    print(f"stored {rows} samples ({args.devices} devices x {args.intervals} intervals, {args.sites} sites) "
          f"in {time.perf_counter() - started:.1f}s")  # fmt: skip

    versions = [(model.name, 1)]
    since, until = timezone.now() - dt.timedelta(hours=1), timezone.now() + dt.timedelta(minutes=1)
    sql = best_of(args.runs, lambda: _window_sql(versions, since, until))
    python = best_of(args.runs, lambda: _window_python(versions, since, until))
    if _window_sql(versions, since, until).keys() != _window_python(versions, since, until).keys():
        raise SystemExit("the two aggregations disagree")
    evaluate = best_of(args.runs, lambda: drift_evaluate(actor=Actor.system("bench")))
    results = drift_evaluate(actor=Actor.system("bench"))
    opened = sorted(r.site for r in results if r.outcome in ("opened", "still_open"))
    print(f"sql aggregate      {sql:7.3f}s  {rows / sql:10.0f} samples/s")
    print(f"python aggregate   {python:7.3f}s  {rows / python:10.0f} samples/s   (baseline)")
    print(f"drift_evaluate     {evaluate:7.3f}s  ({len(results)} (version, site) pairs; alerts at {opened})")
    print(f"sql vs python: {python / sql:.1f}x faster")
    if not args.keep:
        TelemetrySample.objects.filter(device__uid__startswith="bench-drift-").delete()


if __name__ == "__main__":
    main()
