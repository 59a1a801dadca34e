"""Rollout page load and render time in headless Chromium, at 10,000 devices against a 100-device baseline.

    . /tmp/testenv.sh   # DATABASE_URL (the bench uses its own database, fogdeck_bench)
    .venv/bin/python -u -m bench.dashboard [--devices 10000] [--baseline-devices 100] [--runs 7]

Rows are seeded directly in bulk (bench data, not audited; no live devices): two running rollouts of the
same shape (3 waves; jobs in every state; 60 gate evaluations; 6 h of per-minute telemetry rollups), one
over `--devices` devices and one over `--baseline-devices`. `manage.py serve` (uvicorn, ASGI) serves
them; Chromium (Debian's, headless) opens each page `--runs` times after a warm-up and we time
navigation start → both charts drawn (`.main-svg` in the wave chart and the latency chart). In the same
run: the fleet overview (a page with a Plotly map), and per page the server's SQL query count and
render time through Django's test client. Prints medians and the ratio big / small (target: the page
does not get slower with the rollout's size, <= 1.5x); JSON to bench/results/dashboard.json.

Its database is its own (`<BENCH_DATABASE_NAME>_dashboard`, or `BENCH_DASHBOARD_DATABASE`), kept between
runs (the devices are reused, the rollouts re-seeded), so under `python -m bench` it runs in a child process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
import uuid

from bench import common
from bench.common import ROOT, ensure_devices
from bench.report import Row, print_rows, write_rows
from bench.stack import Stack

CHROMIUM = "/usr/bin/chromium"
# a database of its own (created and migrated on first use), not the shared fogdeck_bench
DATABASE = os.environ.get("BENCH_DASHBOARD_DATABASE") or common.own_database("dashboard")
MAX_RATIO = 1.5  # the rollout page at `devices` may take at most this many times the small one's time
USER, PASSWORD = "bench-viewer", "bench-viewer-password-1!"
JOB_STATES = ["SUCCEEDED"] * 6 + ["IN_PROGRESS", "QUEUED", "FAILED", "TIMED_OUT"]


def setup_django() -> None:
    common.setup_django(database=DATABASE)


def seed_rollout(uids: list[str], tag: str):  # type: ignore[no-untyped-def]
    """A running rollout over these devices, its waves, targets, jobs, gate evaluations (bulk)."""
    from deployments.models import GateEvaluation, Job, Rollout, RolloutTarget, Wave
    from fleet.models import Device
    from models_registry.models import ModelVersion, RegisteredModel

    model, _ = RegisteredModel.objects.get_or_create(name="bench-dashboard", defaults={"task": "classification"})
    versions = []
    for number in (1, 2):
        version, _ = ModelVersion.objects.get_or_create(
            model=model, number=number,
            defaults={"status": "published", "framework": "other", "format": "onnx", "artifact_key": "bench",
                      "size": 1, "sha256": "0" * 64, "runtime": "onnxruntime"},
        )  # fmt: skip
        versions.append(version)
    baseline, version = versions
    now = dt.datetime.now(dt.UTC)
    plan = {"target": {"filter": {"tag": tag}}, "waves": [{"percent": 1}, {"percent": 10}, {"percent": 100}],
            "health_gate": {"max_p95_latency_ratio": 1.3, "bake_seconds": 600, "min_samples": 100}}  # fmt: skip
    rollout = Rollout.objects.create(name=f"bench {tag}", model=model, version=version, status="running",
                                     plan=plan, seed=1, current_wave=2, created_by="bench", started_at=now)  # fmt: skip
    devices = list(Device.objects.filter(uid__in=uids).values_list("pk", flat=True))
    sizes = [max(1, len(devices) // 100), max(1, len(devices) // 10)]
    sizes.append(len(devices) - sum(sizes))
    statuses = ("passed", "passed", "installing")
    waves = [Wave.objects.create(rollout=rollout, index=i, spec=plan["waves"][i], size=size, status=statuses[i])
             for i, size in enumerate(sizes)]  # fmt: skip
    jobs, targets, order = [], [], 0
    for wave, size in zip(waves, sizes, strict=True):
        for k in range(size):
            device_id = devices[order]
            state = "SUCCEEDED" if wave.index < 2 else JOB_STATES[k % len(JOB_STATES)]
            job = None
            if wave.index < 2 or k < size * 0.7:
                job = Job(id=uuid.uuid4(), device_id=device_id, model=model, version=version, status=state,
                          timeout_seconds=600, rollout=rollout, wave=wave, deadline_at=now + dt.timedelta(hours=1),
                          created_by="bench")  # fmt: skip
                jobs.append(job)
            targets.append(RolloutTarget(rollout=rollout, device_id=device_id, wave=wave, baseline_version=baseline,
                                         profile="aarch64|A72|none", site_id=None, tier="edge", order=order,
                                         attempts=1 if job else 0, install_job=job))  # fmt: skip
            order += 1
    Job.objects.bulk_create(jobs, batch_size=2000)
    RolloutTarget.objects.bulk_create(targets, batch_size=2000)
    GateEvaluation.objects.bulk_create(
        [GateEvaluation(rollout=rollout, wave=waves[min(i // 20, 2)], gate="health", verdict="pass", final=i % 20 == 19,
                        inputs=plan["health_gate"], figures={"samples": 1000 + i, "max_p95_ratio": 1.05},
                        reason="within limits", actor="system:gate:health") for i in range(60)]
    )  # fmt: skip
    return rollout, version


def seed_rollups(version) -> None:  # type: ignore[no-untyped-def]
    from fleet.models import Site
    from telemetry.models import TelemetryRollup

    TelemetryRollup.objects.filter(model_name=version.model.name).delete()
    site = Site.objects.get(name="bench-site")
    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=6)
    rows = []
    for minute in range(6 * 60):
        for number, p95 in ((1, 20.0), (2, 21.0)):
            for cpu in ("A72", "A57", "Atom"):
                rows.append(TelemetryRollup(minute=start + dt.timedelta(minutes=minute), model_name=version.model.name,
                                            version_number=number, site=site, arch="aarch64", cpu=cpu,
                                            accelerator="none", samples=50, requests=5000, errors=5,
                                            p50_wsum=5000 * 9.0, p95_wsum=5000 * p95, p99_wsum=5000 * 30.0,
                                            p95_max=p95 * 1.5, p99_max=40.0, max_ms=60.0))  # fmt: skip
    TelemetryRollup.objects.bulk_create(rows, batch_size=2000)


def server_figures(path: str) -> dict[str, float]:
    """SQL queries and server time for one request, through Django's test client (no browser)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(get_user_model().objects.get(username=USER))
    client.get(path)
    times = []
    for _ in range(3):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            if client.get(path).status_code != 200:
                raise RuntimeError(f"{path} did not answer 200")
            times.append(time.perf_counter() - started)
    return {"queries": len(queries), "server_ms": round(1000 * statistics.median(times), 1)}


def browser_times(base: str, paths: dict[str, str], runs: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {name: [] for name in paths}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(f"{base}/login/")
        page.fill('input[name="username"]', USER)
        page.fill('input[name="password"]', PASSWORD)
        page.click('button[type="submit"]')
        page.wait_for_url(f"{base}/")
        for run in range(runs + 1):  # the first round warms caches (plotly.js, templates, the database)
            for name, path in paths.items():
                ready = "#site-map .main-svg" if path == "/" else "#wave-chart .main-svg"
                started = time.perf_counter()
                page.goto(base + path, wait_until="load")
                page.wait_for_selector(ready, state="attached")
                if path != "/":
                    page.wait_for_selector("#cohort-chart .main-svg", state="attached")
                elapsed = time.perf_counter() - started
                if run:
                    out[name].append(elapsed)
        browser.close()
    return out


def run(devices: int = 10000, baseline_devices: int = 100, runs: int = 7) -> list[Row]:
    """For `python -m bench`: `measure` in a child process, on this benchmark's own database."""
    return common.run_isolated(
        "dashboard", "--devices", str(devices), "--baseline-devices", str(baseline_devices), "--runs", str(runs)
    )


def measure(devices: int = 10000, baseline_devices: int = 100, runs: int = 7) -> list[Row]:
    """Seed both rollouts, time the pages (Django set up on DATABASE); rows and bench/results/dashboard.json."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from deployments.models import Job, Rollout

    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    # the previous run's rollouts go; the model and its versions stay (versions are protected, and immutable)
    Rollout.objects.filter(model__name="bench-dashboard").delete()
    Job.objects.filter(model__name="bench-dashboard").delete()
    big_uids = ensure_devices(devices, prefix="dash")
    small_uids = ensure_devices(baseline_devices, prefix="dashsmall")  # own devices: one active job each
    big, version = seed_rollout(big_uids, "big")
    small, _ = seed_rollout(small_uids, "small")
    seed_rollups(version)
    user, _ = get_user_model().objects.get_or_create(username=USER)
    user.set_password(PASSWORD)
    user.save()
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    small_key, big_key = f"rollout {baseline_devices}", f"rollout {devices}"
    paths = {"overview": "/", small_key: f"/rollouts/{small.pk}/", big_key: f"/rollouts/{big.pk}/"}
    server = {name: server_figures(path) for name, path in paths.items()}

    with Stack("dashboard") as stack:  # the server on this database (Stack defaults to fogdeck_bench's)
        base = stack.server(DATABASE_URL=os.environ["DATABASE_URL"], DEBUG="true")
        times = browser_times(base, paths, runs)
    medians = {name: 1000 * statistics.median(times[name]) for name in paths}
    results: dict[str, object] = {"runs": runs, "pages": {}}
    print(f"Rollout page, load + both charts drawn in headless Chromium (median of {runs}, after a warm-up)")
    for name in paths:
        results["pages"][name] = {"median_ms": round(medians[name], 1), "max_ms": round(1000 * max(times[name]), 1),
                                  **server[name]}  # type: ignore[index]  # fmt: skip
        print(f"  {name:>16}: {medians[name]:7.1f} ms in the browser; server {server[name]['server_ms']:6.1f} ms, "
              f"{server[name]['queries']} SQL queries")  # fmt: skip
    ratio = medians[big_key] / medians[small_key]
    results["ratio_big_to_small"] = round(ratio, 2)
    results["ratio_big_to_overview"] = round(medians[big_key] / medians["overview"], 2)
    print(f"  {big_key} / {small_key} = {ratio:.2f}x; {big_key} / overview = {results['ratio_big_to_overview']:.2f}x")
    (ROOT / "bench" / "results" / "dashboard.json").write_text(json.dumps(results, indent=2) + "\n")

    big_server, small_server = server[big_key], server[small_key]
    figure = f"rollout page load + charts, {devices:,} devices"
    return [
        Row("dashboard", figure, medians[big_key], "ms", f"{baseline_devices:,} devices", medians[small_key],
            target=f"<= {MAX_RATIO}x", met=ratio <= MAX_RATIO,
            note=f"headless Chromium, median of {runs}; SQL queries {big_server['queries']} vs "
                 f"{small_server['queries']}"),
        Row("dashboard", figure, medians[big_key], "ms", "fleet overview", medians["overview"],
            note=f"overview: a Plotly map, {server['overview']['queries']} SQL queries"),
        Row("dashboard", f"rollout page server time, {devices:,} devices", big_server["server_ms"], "ms",
            f"{baseline_devices:,} devices", small_server["server_ms"],
            note="Django test client, median of 3, no browser"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--baseline-devices", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rows-json", help="write the rows here (for the runner, bench.__main__)")
    args = parser.parse_args()
    setup_django()
    rows = measure(args.devices, args.baseline_devices, args.runs)
    if args.rows_json:
        write_rows(args.rows_json, rows)
    else:
        print_rows(rows)


if __name__ == "__main__":
    main()
