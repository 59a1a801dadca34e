"""Nearest-endpoint resolution at 10,000 devices: requests per second and p95, uncached vs cached.

    . /tmp/testenv.sh   # DATABASE_URL (the bench uses the suite's database, fogdeck_bench, and Redis db 2 as cache)
    .venv/bin/python -u -m bench.resolve [--devices 10000] [--sites 200] [--requests 1000]
    .venv/bin/python -u -m bench --only resolve       # as part of the suite's table (300 requests per mode)

Seeds (bulk, not audited) a fleet of edge devices, fog gateways and cloud nodes over many sites, all
online and serving `bench-resolve@production`, with one telemetry sample each in the health window.
Then, for random sites, interleaves (so both see the same machine load):

* **uncached** (the baseline): ENDPOINTS_CACHE_SECONDS=0, every request runs the resolution queries;
* **cached**: after one warming request per site, answers come from the Django cache (Redis when
  REDIS_URL is set), as in production between invalidations.

each measured twice: `GET /api/v1/endpoints/resolve/?site=…` through the whole Django/DRF stack with
the test client (token auth, role check, validation, serialization; no network), and a direct call
of `endpoints_resolve_cached` (the part this feature adds). One client in a loop: requests/s is
1 / mean latency. Prints the figures and ratios and writes bench/results/resolve.json. No target (the issue
asks for the figures): the rows are requests/s and p95, cached against the uncached baseline.

It works in the suite's database (BENCH_DATABASE_NAME), so in a full `python -m bench` run the fleet
around its 10,000 devices includes the other benchmarks' devices (the note says how many in all).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from bench.common import ROOT, percentile, setup_django
from bench.report import Row, print_rows

MODEL = "bench-resolve"


def seed(devices: int, sites: int) -> list[str]:
    from django.conf import settings
    from django.contrib.auth.models import Group
    from django.utils import timezone

    from deployments.models import Installation
    from fleet.models import Device, Site
    from models_registry.models import Alias, ModelVersion, RegisteredModel
    from telemetry.models import TelemetrySample

    rng = random.Random(7)
    names = [f"bench-resolve-site-{i:04d}" for i in range(sites)]
    existing = set(Site.objects.filter(name__in=names).values_list("name", flat=True))
    Site.objects.bulk_create(
        [Site(name=n, latitude=rng.uniform(35, 60), longitude=rng.uniform(-10, 30)) for n in names if n not in existing]
    )
    site_ids = list(Site.objects.filter(name__in=names).order_by("name").values_list("pk", flat=True))
    model, _ = RegisteredModel.objects.get_or_create(name=MODEL)
    version, _ = ModelVersion.objects.get_or_create(
        model=model,
        number=1,
        defaults={
            "status": "published",
            "framework": "other",
            "format": "onnx",
            "artifact_key": "bench/none.onnx",
            "size": 1,
            "sha256": "0" * 64,
        },
    )
    Alias.objects.get_or_create(model=model, name="production", defaults={"version": version})
    prefix = "bench-rs"
    if Device.objects.filter(uid__startswith=prefix).count() != devices:
        Device.objects.filter(uid__startswith=prefix).delete()
        state = {
            "active": {MODEL: {"version": 1, "slot": "a"}},
            "slots": {"a": {"model": MODEL, "version": 1, "sha256": "0" * 64}, "b": None},
        }
        rows = []
        for i in range(devices):
            tier = "cloud" if i % 50 == 0 else "fog" if i % 8 == 0 else "edge"
            uid = f"{prefix}-{i:05d}"
            rows.append(
                Device(
                    uid=uid, name=uid, site_id=site_ids[i % len(site_ids)], tier=tier, arch="aarch64", cpu="A72",
                    memory_mb=2048, status="online", reported_state=state,
                    inference_url=f"http://{uid}.bench.invalid:8600/infer",
                )
            )  # fmt: skip
        Device.objects.bulk_create(rows, batch_size=2000)
    Device.objects.filter(uid__startswith=prefix).update(status="online", last_seen=timezone.now())
    ids = list(Device.objects.filter(uid__startswith=prefix).values_list("pk", flat=True))
    # resolve serves only what Fogdeck installed (Installation rows) at URLs whose host it trusts
    settings.ENDPOINTS_TRUSTED_INFERENCE_HOSTS = ["{uid}.bench.invalid"]
    Installation.objects.filter(device_id__in=ids).delete()
    Installation.objects.bulk_create(
        [Installation(device_id=pk, model=model, version=version, since=timezone.now()) for pk in ids], batch_size=2000
    )
    TelemetrySample.objects.filter(model_name=MODEL).delete()
    now = timezone.now()
    TelemetrySample.objects.bulk_create(
        [
            TelemetrySample(
                device_id=pk, model_name=MODEL, version_number=1, ts=now, interval_s=10, requests=100,
                errors=rng.choice([0, 0, 0, 1, 9]), p50_ms=5, p95_ms=rng.uniform(5, 60), p99_ms=70, max_ms=90,
            )
            for pk in ids
        ],
        batch_size=2000,
    )  # fmt: skip
    Group.objects.get_or_create(name="viewer")
    return names


def client() -> Any:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from rest_framework.test import APIClient

    user, _ = get_user_model().objects.get_or_create(username="bench-resolve-viewer")
    user.groups.add(Group.objects.get(name="viewer"))
    from bench.fanout import bench_token

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {bench_token(user)}")
    return api


def _summary(latencies: list[float], sizes: list[int]) -> dict[str, float]:
    total_s = sum(latencies) / 1000
    return {
        "requests": len(latencies),
        # one client in a loop: requests per second of busy time in this mode
        "requests_per_second": round(len(latencies) / total_s, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "mean_endpoints": round(statistics.mean(sizes), 1),
    }


def interleaved(
    api: Any, sites: list[str], requests: int, *, cached_ttl: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Interleaved A/B: for each random site, the same request uncached then cached, over HTTP and as a
    direct call of the selector, so both modes see the same machine load (shared CI boxes are noisy)."""
    from django.conf import settings

    from endpoints.selectors import endpoints_resolve_cached

    rng = random.Random(3)
    times: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], list[int]] = {}
    for _ in range(requests):
        site = rng.choice(sites)
        for mode, ttl in (("uncached", 0), ("cached", cached_ttl)):
            settings.ENDPOINTS_CACHE_SECONDS = ttl
            t0 = time.perf_counter()
            response = api.get("/api/v1/endpoints/resolve/", {"model": MODEL, "alias": "production", "site": site})
            times.setdefault(("http", mode), []).append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.content[:300]!r}")
            sizes.setdefault(("http", mode), []).append(len(response.json()["endpoints"]))
            t0 = time.perf_counter()
            answer = endpoints_resolve_cached(model_name=MODEL, alias="production", site=site)
            times.setdefault(("call", mode), []).append((time.perf_counter() - t0) * 1000)
            sizes.setdefault(("call", mode), []).append(len(answer["endpoints"]))  # type: ignore[arg-type]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (layer, mode), values in times.items():
        out.setdefault(layer, {})[mode] = _summary(values, sizes[(layer, mode)])
    return out


def _line(name: str, r: dict[str, float]) -> str:
    return f"  {name:22} {r['requests_per_second']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms"


def run(devices: int = 10000, sites: int = 200, requests: int = 300) -> list[Row]:
    """Seed, warm the cache, measure both modes interleaved; rows, and bench/results/resolve.json.
    The suite's default is 300 requests per mode (the CLI's 1,000 take ~4 minutes on a loaded 2-core box)."""
    from django.conf import settings

    from core.resolve_cache import resolve_cache_bump
    from fleet.models import Device

    t0 = time.perf_counter()
    site_names = seed(devices, sites)
    print(f"seeded {devices} devices over {sites} sites in {time.perf_counter() - t0:.1f} s")
    api = client()
    cache_backend = settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1]
    ttl = max(settings.ENDPOINTS_CACHE_SECONDS, 300)  # the run must not outlive its cache entries
    saved = settings.ENDPOINTS_CACHE_SECONDS, settings.DEVICE_STALE_AFTER_SECONDS
    try:
        # the seeded heartbeats must not go stale mid-run (both modes must answer the same endpoints)
        settings.DEVICE_STALE_AFTER_SECONDS = 3600
        resolve_cache_bump()  # answers of earlier runs become unreachable
        settings.ENDPOINTS_CACHE_SECONDS = ttl
        for site in site_names:  # one miss per site, then hits
            api.get("/api/v1/endpoints/resolve/", {"model": MODEL, "alias": "production", "site": site})
        results = interleaved(api, site_names, requests, cached_ttl=ttl)
    finally:  # in the runner's process, the next benchmark gets the settings it would have had
        settings.ENDPOINTS_CACHE_SECONDS, settings.DEVICE_STALE_AFTER_SECONDS = saved
    in_database = Device.objects.count()
    rows = []
    for layer, title in (("http", "GET over the API"), ("call", "selector call")):
        print(f"{title} (cache: {cache_backend}):")
        uncached, cached = results[layer]["uncached"], results[layer]["cached"]
        print(_line("uncached (baseline)", uncached))
        print(_line("cached", cached))
        ratio = cached["requests_per_second"] / uncached["requests_per_second"]
        lower = uncached["p95_ms"] / cached["p95_ms"]
        print(f"  cached / uncached = {ratio:.1f}x requests per second; p95 {lower:.1f}x lower")
        results[layer]["ratio_requests_per_second"] = round(ratio, 1)  # type: ignore[assignment]
        what = "resolve GET (Django test client)" if layer == "http" else "endpoints_resolve_cached call"
        note = f"{requests} requests per mode, interleaved; one client; p50 {cached['p50_ms']:.1f} vs " \
               f"{uncached['p50_ms']:.1f} ms; {cached['mean_endpoints']:.0f} endpoints per answer"  # fmt: skip
        rows.append(Row("resolve", f"{what} cached, {devices:,} devices", cached["requests_per_second"], "req/s",
                        "uncached", uncached["requests_per_second"], note=note))  # fmt: skip
        rows.append(Row("resolve", f"{what} cached p95, {devices:,} devices", cached["p95_ms"], "ms",
                        "uncached", uncached["p95_ms"],
                        note=f"cache: {cache_backend}; {in_database:,} devices in the database"))  # fmt: skip
    result = {
        "benchmark": "endpoints.resolve",
        "devices": devices,
        "devices_in_database": in_database,
        "sites": sites,
        "requests_per_mode": requests,
        "cache_backend": cache_backend,
        **results,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = ROOT / "bench" / "results" / "resolve.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {out.relative_to(ROOT)}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1000, help="per mode")
    args = parser.parse_args()
    setup_django()
    print_rows(run(args.devices, args.sites, args.requests))


if __name__ == "__main__":
    main()
