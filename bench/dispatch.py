"""Rollout dispatch: jobs created per second, in chunks, against the one-by-one `deployment_create` loop.

    BENCH_DATABASE_NAME=fogdeck_bench_dispatch .venv/bin/python -u -m bench.dispatch [--devices 5000]
    .venv/bin/python -u -m bench --only dispatch      # the same defaults, as part of the suite's table

Works in a database of its own (`<BENCH_DATABASE_NAME>_dispatch`; kept between runs, so under
`python -m bench` it runs in a child process) with `--devices` edge devices (bulk, not audited), a
quarter of them behind a caching gateway (their job documents carry gateway mirrors with a signed token),
and the sample classifier uploaded and published through the registry. Then, in the same run:

* **one by one** (the baseline): `deployment_create` per device, a chunk of ROLLOUT_DISPATCH_CHUNK per
  transaction as `_dispatch` used to do, over `--baseline-devices` of them;
* **bulk**: `deployments_create_many`, one call and one transaction per chunk, over all of them;
* **rollout**: a one-wave 100 % rollout dispatched by `rollout_advance` ticks (the path the beat runs:
  target selection, the bulk call, RolloutTarget updates), its slowest tick against ROLLOUT_TICK_SECONDS.

Every phase starts from devices without an active job (the previous phase's jobs are canceled by a
plain UPDATE: bench data). It also prints the statements one bulk chunk takes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import time

from bench import common
from bench.report import Row, print_rows, write_rows

DB_NAME = common.own_database("dispatch")
PREFIX = "bench-dispatch"
CACHE_URL = "http://gw.bench-dispatch.example:8700"


def run(devices: int = 5000, baseline_devices: int = 1000) -> list[Row]:
    """For `python -m bench`: `measure` in a child process on this benchmark's own database (~40 s)."""
    return common.run_isolated("dispatch", "--devices", str(devices), "--baseline-devices", str(baseline_devices))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--baseline-devices", type=int, default=1000, help="devices for the one-by-one loop")
    parser.add_argument("--rows-json", help="write the rows here (for the runner, bench.__main__)")
    args = parser.parse_args()
    common.setup_django(database=DB_NAME)
    rows = measure(args.devices, min(args.baseline_devices, args.devices))
    if args.rows_json:
        write_rows(args.rows_json, rows)
    else:
        print_rows(rows)


def _published_version():  # type: ignore[no-untyped-def]
    from audit.actors import Actor
    from models_registry.models import ModelVersion, RegisteredModel
    from models_registry.samples import sample_versions
    from models_registry.services import model_create, model_version_create, model_version_publish

    actor = Actor.system("bench")
    model = RegisteredModel.objects.filter(name=PREFIX).first() or model_create(actor=actor, name=PREFIX)
    version = ModelVersion.objects.filter(model=model, status="published").select_related("model").first()
    if version is None:
        version = model_version_create(
            actor=actor, model=model, artifact=io.BytesIO(sample_versions()[0].onnx_bytes), format="onnx",
            framework="other",
            requirements={"runtime": "onnxruntime", "min_runtime_version": "1.16", "min_memory_mb": 512},
        )  # fmt: skip
        version = model_version_publish(actor=actor, version=version)
    return version


def _fleet(count: int) -> list:  # type: ignore[type-arg]
    """`count` edge devices, every fourth behind an online caching gateway and able to use its mirror."""
    from fleet.models import ConnectionStatus, Device

    uids = common.ensure_devices(count, prefix=PREFIX)
    gateway, _ = Device.objects.update_or_create(
        uid=f"{PREFIX}-gw",
        defaults={"name": "bench gateway", "tier": "fog", "arch": "aarch64", "cpu": "A72", "memory_mb": 8192,
                  "site": Device.objects.get(uid=uids[0]).site, "status": ConnectionStatus.ONLINE,
                  "reported_state": {"cache_url": CACHE_URL}},
    )  # fmt: skip
    behind = uids[::4]
    Device.objects.filter(uid__in=behind).update(parent=gateway, reported_state={"capabilities": ["artifact_mirrors"]})
    return list(Device.objects.filter(uid__in=uids).order_by("uid"))


def _free(devices: list) -> None:  # type: ignore[type-arg]
    """Cancel the devices' active jobs and stop earlier bench rollouts (bench data: a plain UPDATE)."""
    from deployments.models import ACTIVE, Job, JobStatus, Rollout, RolloutStatus
    from outbox.models import OutboxMessage

    Job.objects.filter(device__in=devices, status__in=ACTIVE).update(status=JobStatus.CANCELED)
    Rollout.objects.filter(name__startswith=PREFIX).exclude(status=RolloutStatus.ROLLED_BACK).update(
        status=RolloutStatus.ABORTED
    )
    OutboxMessage.objects.filter(topic__contains=f"/{PREFIX}-").delete()  # no bridge drains this database


def _chunks(items: list, size: int) -> list[list]:  # type: ignore[type-arg]
    return [items[i : i + size] for i in range(0, len(items), size)]


def measure(devices: int, baseline_devices: int) -> list[Row]:
    from django.conf import settings
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from audit.actors import Actor
    from deployments.models import Job, RolloutTarget
    from deployments.services.jobs import JobRequest, deployment_create, deployments_create_many
    from deployments.services.rollout_drafts import rollout_create
    from deployments.services.rollouts import rollout_start
    from deployments.services.tick import rollout_advance

    chunk = settings.ROLLOUT_DISPATCH_CHUNK
    actor = Actor.system("bench")
    version = _published_version()
    fleet = _fleet(devices)
    print(f"{len(fleet)} devices ({len(fleet[::4])} behind a gateway), chunk {chunk}", flush=True)

    _free(fleet)
    started = time.perf_counter()
    for part in _chunks(fleet[:baseline_devices], chunk):
        with transaction.atomic():
            for device in part:
                deployment_create(actor=actor, device=device, version=version, timeout_seconds=600)
    one_by_one = baseline_devices / (time.perf_counter() - started)
    print(f"one by one   {one_by_one:8.0f} jobs/s  ({baseline_devices} devices)", flush=True)

    _free(fleet)
    started, chunk_seconds, statements = time.perf_counter(), [], 0
    for index, part in enumerate(_chunks(fleet, chunk)):
        begun = time.perf_counter()
        with CaptureQueriesContext(connection) as queries, transaction.atomic():
            batch = deployments_create_many(
                actor=actor, requests=[JobRequest(d) for d in part], version=version, timeout_seconds=600
            )
        chunk_seconds.append(time.perf_counter() - begun)
        if index == 0:
            statements = len(queries.captured_queries)
        if batch.refused:
            raise SystemExit(f"refused: {next(iter(batch.refused.values())).reason}")
    bulk = len(fleet) / (time.perf_counter() - started)
    print(f"bulk         {bulk:8.0f} jobs/s  ({len(fleet)} devices; {statements} statements per chunk of {chunk}; "
          f"slowest chunk {max(chunk_seconds):.2f}s)", flush=True)  # fmt: skip

    _free(fleet)
    rollout = rollout_create(actor=actor, version=version, name=f"{PREFIX} {time.time():.0f}", plan={
        "target": {"devices": [d.pk for d in fleet]}, "waves": [{"percent": 100}],
        "rate_per_minute": 1_000_000, "job_timeout_seconds": 600, "seed": 1,
    })  # fmt: skip
    rollout = rollout_start(actor=actor, rollout=rollout)
    tick = dt.timedelta(seconds=settings.ROLLOUT_TICK_SECONDS)
    now, ticks, started = rollout.started_at or dt.datetime.now(dt.UTC), [], time.perf_counter()
    while RolloutTarget.objects.filter(rollout=rollout, install_job__isnull=True, skip_reason="").exists():
        now += tick
        begun = time.perf_counter()
        rollout_advance(rollout_id=rollout.pk, now=now)
        ticks.append(time.perf_counter() - begun)
        if len(ticks) > 10 * (len(fleet) // chunk + 2):
            raise SystemExit("the rollout does not dispatch")
    via_rollout = len(fleet) / (time.perf_counter() - started)
    dispatched = Job.objects.filter(rollout=rollout).count()
    print(f"rollout      {via_rollout:8.0f} jobs/s  ({dispatched} jobs in {len(ticks)} ticks, "
          f"slowest tick {max(ticks):.2f}s)", flush=True)  # fmt: skip
    _free(fleet)

    load = os.getloadavg()[0]
    note = f"{len(fleet):,} devices (1/4 behind a gateway), chunks of {chunk}; load average {load:.1f}"
    return [
        Row("dispatch", f"jobs created by deployments_create_many, {len(fleet):,} devices", bulk, "jobs/s",
            "deployment_create one by one", one_by_one,
            note=f"{note}; {statements} statements per chunk; slowest chunk {max(chunk_seconds):.2f} s"),
        Row("dispatch", f"a 100 % wave dispatched by rollout_advance ticks, {len(fleet):,} devices", via_rollout,
            "jobs/s", "deployment_create one by one", one_by_one,
            note=f"{len(ticks)} ticks, slowest {max(ticks):.2f} s (a tick is {settings.ROLLOUT_TICK_SECONDS} s)"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
