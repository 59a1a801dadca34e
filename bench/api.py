"""The REST API at fleet scale: 100,000 devices in the inventory, concurrent clients, a real ASGI server.

    .venv/bin/python -u -m bench.api [--devices 100000] [--clients 8] [--seconds 15]

`manage.py serve` (uvicorn, one process) with an operator's token; `--clients` threads each keep one
HTTP/1.1 connection and send requests back to back for `--seconds` per endpoint:

* `GET /api/v1/devices/?tier=edge&status=online&page_size=100` (two filters, a page of 100; target p95 < 100 ms);
* `GET /api/v1/rollouts/{id}/` for the newest rollout (bench.fanout leaves one with 10,000 jobs);
* `GET /healthz` (touches PostgreSQL and Redis): the baseline, measured the same way in the same run.

Queries per request are counted in-process with Django's CaptureQueriesContext.
"""

from __future__ import annotations

import argparse
import http.client
import random
import threading
import time

from bench import common
from bench.report import Row, print_rows
from bench.stack import Stack

TIERS = ["edge"] * 6 + ["fog"] * 3 + ["cloud"]
SERVER_ENV: dict[str, str] = {}
DEVICE_LIST = "/api/v1/devices/?tier=edge&status=online&page_size=100"


def ensure_inventory(count: int, prefix: str = "inv") -> None:
    """`count` devices over 20 sites, tiers and online states mixed, one runtime and one tag each
    (bulk-inserted: bench data, not audited)."""
    from django.db import connection

    from fleet.models import Device, DeviceRuntime, Site

    have = Device.objects.filter(uid__startswith=f"{prefix}-").count()
    if have >= count:
        return
    started = time.monotonic()
    sites = [Site.objects.get_or_create(name=f"inv-site-{n}", defaults={"latitude": n, "longitude": n})[0]
             for n in range(20)]  # fmt: skip
    rng = random.Random(7)
    batch = 5000
    for start in range(have, count, batch):
        devices = [
            Device(
                uid=f"{prefix}-{i:06d}", name=f"{prefix} {i}", site=sites[i % len(sites)], tier=TIERS[i % len(TIERS)],
                arch="aarch64", cpu="Cortex-A72 x4", memory_mb=4096,
                status="online" if rng.random() < 0.8 else "offline",
            )
            for i in range(start, min(count, start + batch))
        ]  # fmt: skip
        created = Device.objects.bulk_create(devices, batch_size=batch)
        DeviceRuntime.objects.bulk_create(
            [DeviceRuntime(device_id=d.pk, name="onnxruntime", version="1.18") for d in created], batch_size=batch
        )
    with connection.cursor() as cursor:  # what autovacuum would do shortly after a bulk load
        cursor.execute("ANALYZE fleet_device, fleet_deviceruntime")
    print(f"  inserted {count - have:,} devices in {time.monotonic() - started:.0f} s", flush=True)


def load(port: int, token: str, path: str, clients: int, seconds: float) -> dict[str, float]:
    """Latencies (ms) and throughput of `clients` keep-alive connections hammering `path`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            conn.request("GET", path, headers={"Authorization": f"Token {token}", "Host": "127.0.0.1"})
            response = conn.getresponse()
            response.read()
            mine.append((time.perf_counter() - began) * 1000)
            if response.status != 200:
                errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    return {
        "p50": common.percentile(latencies, 50), "p95": common.percentile(latencies, 95),
        "rps": len(latencies) / elapsed, "requests": len(latencies), "errors": errors[0],
    }  # fmt: skip


def queries_per_request(path: str) -> int:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(get_user_model().objects.get(username="bench-operator"))
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, HTTP_HOST="127.0.0.1")
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status_code} {response.content[:300]!r}")
    return len(captured)


def run(devices: int = 100000, clients: int = 8, seconds: float = 15) -> list[Row]:
    from bench.fanout import operator_token
    from deployments.models import Job, Rollout

    ensure_inventory(devices)
    token = operator_token()
    rollout = Rollout.objects.order_by("-id").first()
    paths = {"device list": DEVICE_LIST}
    if rollout is not None:
        paths["rollout detail"] = f"/api/v1/rollouts/{rollout.pk}/"
        jobs = Job.objects.filter(rollout=rollout).count()
    queries = {name: queries_per_request(path) for name, path in paths.items()}
    results = {}
    with Stack("api") as stack:
        stack.broker()
        stack.server(**SERVER_ENV)
        load(stack.server_port, token, "/healthz", 2, 2)  # warm up the server
        results["healthz"] = load(stack.server_port, token, "/healthz", clients, seconds)
        for name, path in paths.items():
            results[name] = load(stack.server_port, token, path, clients, seconds)
        single = load(stack.server_port, token, DEVICE_LIST, 1, seconds / 2)
        server_rss = stack.procs[-1].peak_rss / 2**20
    for name, r in results.items():
        print(f"  {name:15} p50 {r['p50']:7.1f} ms  p95 {r['p95']:7.1f} ms  {r['rps']:6.1f} req/s  "
              f"{r['requests']} requests, {r['errors']} errors, {queries.get(name, '-')} queries/request")  # fmt: skip
    base = results["healthz"]
    rows = []
    for name in paths:
        r = results[name]
        what = f"{devices:,} devices" if name == "device list" else f"rollout of {jobs:,} jobs"
        note = f"{queries[name]} queries/request, {r['rps']:.0f} req/s vs healthz {base['rps']:.0f} req/s, " \
               f"{clients} clients, {r['errors']} errors; server peak RSS {server_rss:.0f} MiB"  # fmt: skip
        rows.append(Row("api", f"{name} p50, {what}", r["p50"], "ms", "/healthz", base["p50"]))
        listing = name == "device list"
        rows.append(Row("api", f"{name} p95, {what}", r["p95"], "ms", "/healthz", base["p95"],
                        target="< 100 ms" if listing else "",
                        met=(r["p95"] < 100 and not r["errors"]) if listing else None, note=note))  # fmt: skip
    rows.append(Row("api", f"device list p95, 1 client (service time), {devices:,} devices", single["p95"], "ms",
                    f"{clients} clients", results["device list"]["p95"], target="< 100 ms", met=single["p95"] < 100,
                    note=f"p50 {single['p50']:.0f} ms, {single['rps']:.0f} req/s"))  # fmt: skip
    if rollout is None:
        print("  no rollout in the bench database (run bench.fanout first): rollout detail not measured")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    common.setup_django()
    print_rows(run(args.devices, args.clients, args.seconds))


if __name__ == "__main__":
    main()
