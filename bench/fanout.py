"""Rollout fan-out: one 100 % wave of a small artifact to 10,000 simulated devices.

    .venv/bin/python -u -m bench.fanout [--devices 10000] [--baseline-devices 1000] [--sim-processes 4] [--bridges 2]
        [--shipped-devices 2000] [--shipped-limits shipped|debian]

The real pieces, on the real services: `manage.py serve` (API and artifact downloads), the MQTT bridge, a
Celery worker with beat (the rollout tick) on Redis, a Mosquitto of our own, and the simulator split over a
few processes (one asyncio loop each). Measured: time from `POST …/start/` to every job terminal, devices
per minute, and the peak RSS of the worker (pool included), the bridge and the simulators. Baseline in the
same run: the same rollout of an earlier version to 1,000 of the devices (the ratio of rates shows how it
scales); AWS IoT Jobs' documented cap of 1,000 devices/minute is printed for reference.

Then once more on a broker with deploy/mosquitto/mosquitto.conf's queue and in-flight window (or, with
`--shipped-limits debian`, Debian's stock 1,000 and 20, where Mosquitto drops the bridge's messages): one
100 % wave to `--shipped-devices` fresh devices, with `lost` (jobs not SUCCEEDED, TIMED_OUT among them) and
the drops Mosquitto logged next to its time. `lost` must be 0 (docs/protocol.md, "Answered job updates").
"""

from __future__ import annotations

import argparse
import io
import json
import re
import time

from bench import common
from bench.report import Row, print_rows
from bench.stack import CpuMeter, Stack, shipped_broker_limits, wait_until

MODEL = "bench-classifier"
AWS_IOT_JOBS_CAP_PER_MIN = 1000


def published_versions() -> tuple[object, object]:
    """Two published versions of the sample classifier (v1 for the baseline rollout, v2 for the big one)."""
    from audit.actors import Actor
    from models_registry.models import RegisteredModel
    from models_registry.samples import build_classifier, sample_versions
    from models_registry.services import model_create, model_version_create, model_version_publish

    actor = Actor.system("bench")
    model = RegisteredModel.objects.filter(name=MODEL).first() or model_create(
        actor=actor, name=MODEL, task="classification"
    )
    versions = list(model.versions.filter(status="published").order_by("number"))
    while len(versions) < 2:
        artifact = sample_versions()[0].onnx_bytes if not versions else build_classifier(name="bench-next")
        version = model_version_create(
            actor=actor, model=model, artifact=io.BytesIO(artifact), format="onnx", framework="other",
            requirements={"runtime": "onnxruntime", "min_runtime_version": "1.16", "min_memory_mb": 512},
        )  # fmt: skip
        versions.append(model_version_publish(actor=actor, version=version))
    return versions[0], versions[1]


def bench_token(user: object) -> str:
    """A fresh one-day token per run (keys are stored hashed, so an earlier run's cannot be read back)."""
    import secrets

    from tests.factories import make_token

    return make_token(user, name=f"bench-{secrets.token_hex(4)}", days=1)


def operator_token() -> str:
    from django.contrib.auth import get_user_model

    from tests.factories import make_user

    user = get_user_model().objects.filter(username="bench-operator").first() or make_user("bench-operator", "operator")
    return bench_token(user)


def api(base: str, token: str, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 (our own server, http://)
        base + path, method=method, data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path}: HTTP {exc.code} {exc.read()[:500]!r}") from None


def roll_out(
    base: str, token: str, version_id: int, uids: list[str], meter: CpuMeter | None = None
) -> dict[str, float]:
    """Create and start a one-wave rollout; wait until every job is terminal. Returns the figures; with
    `meter`, prints the CPU each process spent from the start to the last job terminal."""
    from django.db.models import Count

    from deployments.models import TERMINAL, Job, Rollout
    from fleet.models import Device

    expected = len(uids)

    body = {
        "version": version_id,
        "target": {"devices": list(Device.objects.filter(uid__in=uids).values_list("pk", flat=True))},
        "waves": [{"percent": 100}],
        "install_gate": {"min_success_pct": 95, "max_failure_pct": 10, "min_finished": 5},
        # no health gate: the simulators report every 60 s, so a bake would only add a minute; the fan-out
        # measures dispatch and install (health gates are tested end to end in tests/e2e/test_rollouts.py)
        "health_gate": None,
        "rate_per_minute": 100000,
        "job_timeout_seconds": 600,
    }
    rollout_id = api(base, token, "POST", "/api/v1/rollouts/", body)["id"]
    if meter is not None:
        meter.start()
    started = time.monotonic()
    api(base, token, "POST", f"/api/v1/rollouts/{rollout_id}/start/")
    jobs = Job.objects.filter(rollout_id=rollout_id)
    last_report = [started]

    def all_terminal() -> bool:
        done = jobs.filter(status__in=TERMINAL).count()
        if time.monotonic() - last_report[0] > 15:
            last_report[0] = time.monotonic()
            print(f"    {time.monotonic() - started:5.0f} s: {jobs.count()} jobs created, {done} terminal", flush=True)
        return done >= expected

    wait_until(all_terminal, 900, f"{expected} jobs of rollout {rollout_id} to finish", interval=0.5)
    seconds = time.monotonic() - started
    if meter is not None:
        print(f"    {meter.stop()}", flush=True)
    statuses = dict(jobs.values("status").annotate(n=Count("id")).values_list("status", "n"))
    # the next rollout of this model may start only once this one is over: wait for its gates, then abort
    over = {"completed", "aborted", "rolled_back"}
    try:
        wait_until(lambda: Rollout.objects.get(pk=rollout_id).status in over, 90, "the rollout's gates")
    except RuntimeError:
        api(base, token, "POST", f"/api/v1/rollouts/{rollout_id}/abort/", {"reason": "benchmark done"})
    rollout = Rollout.objects.get(pk=rollout_id)
    print(f"    rollout {rollout_id}: {expected} jobs terminal in {seconds:.1f} s {statuses}, rollout {rollout.status}")
    return {"seconds": seconds, "per_minute": expected / seconds * 60, "rollout": rollout_id,
            "succeeded": statuses.get("SUCCEEDED", 0)}  # fmt: skip


def run(
    devices: int = 10000, baseline_devices: int = 1000, sim_processes: int = 4, bridges: int = 2, aws_share: float = 0.5
) -> list[Row]:
    """The single-dialect fan-out, then (unless `aws_share` is 0) the same on a fleet where that share speaks
    the AWS IoT Jobs dialect."""
    single, rows = measure(devices, baseline_devices, sim_processes, bridges)
    if not aws_share:
        return rows
    mixed, _ = measure(devices, baseline_devices, sim_processes, bridges, aws_share=aws_share)
    lost = lambda figures: devices - figures["succeeded"]  # noqa: E731
    share = f"{aws_share:.0%} AWS IoT Jobs dialect"
    return [
        *rows,
        Row("fanout", f"start → all jobs terminal, {devices:,} devices, {share}", mixed["seconds"], "s",
            "single dialect", single["seconds"], note=f"lost (not SUCCEEDED): {lost(mixed)} with {share}, "
            f"{lost(single)} single-dialect; {mixed['per_minute']:,.0f} vs {single['per_minute']:,.0f} devices/min"),
    ]  # fmt: skip


def measure(
    devices: int, baseline_devices: int, sim_processes: int, bridges: int, *, aws_share: float = 0.0
) -> tuple[dict[str, float], list[Row]]:
    """One fan-out on a fresh fleet (`aws_share` of the simulator processes in the AWS IoT Jobs dialect):
    the big rollout's figures and the rows."""
    from fleet.models import Device

    # fresh devices each run: the earlier ones already run both versions
    run_id = time.strftime("%H%M%S") + (f"x{round(aws_share * 100)}" if aws_share else "")
    small = common.ensure_devices(baseline_devices, prefix=f"fanout{run_id}-a")
    rest = common.ensure_devices(devices - baseline_devices, prefix=f"fanout{run_id}-b")
    uids = small + rest
    Device.objects.filter(uid__in=uids).update(status="offline")  # left over from an interrupted run
    v1, v2 = published_versions()
    from deployments.models import Rollout

    # an interrupted earlier run may have left a rollout of this model running, which blocks a new one
    Rollout.objects.filter(model=v1.model, status__in=["running", "paused"]).update(status="aborted")
    token = operator_token()
    with Stack("fanout") as stack:
        stack.broker()
        base = stack.server()
        # N bridges sharing the device topics (MQTT_BRIDGE_SHARED_GROUP), as docs/operations.md scales them out
        for index in range(bridges):
            stack.bridge(
                f"fogdeck-bench-fanout-bridge-{index}",
                f"bridge-{index}",
                MQTT_BRIDGE_SHARED_GROUP="bench",
                MQTT_BRIDGE_AWS_JOBS="true" if index == 0 else "false",
            )  # the $aws topics are not shared
        worker = stack.worker()
        since = time.monotonic()
        sims = []
        aws_processes = round(sim_processes * aws_share)
        for index in range(sim_processes):
            chunk = uids[index::sim_processes]
            dialect = "aws-iot-jobs" if index < aws_processes else "fogdeck"
            Device.objects.filter(uid__in=chunk).update(job_dialect=dialect)
            devices_file = stack.directory / f"devices-{index}.json"
            devices_file.write_text(json.dumps([{"uid": u, "secret": "x", "profile": "rpi4"} for u in chunk]))
            sims.append(stack.python(
                f"sim-{index}", "-m", "agent.simulator", "--api", base, "--mqtt", f"mqtt://127.0.0.1:{stack.broker_port}",
                "--devices", str(len(chunk)), "--devices-file", str(devices_file), "--telemetry-interval", "60",
                "--rps", "1", "--seed", str(index), "--dialect", dialect,
            ))  # fmt: skip
        online = lambda: Device.objects.filter(uid__in=uids, status="online").count()  # noqa: E731
        wait_until(lambda: online() >= devices, 900, f"{devices} simulated devices online", interval=1)
        connected_s = time.monotonic() - since
        print(f"  {devices} simulated devices online after {connected_s:.0f} s "
              f"({sim_processes} simulator processes, {bridges} bridges)", flush=True)  # fmt: skip
        baseline = roll_out(base, token, v1.pk, small)
        for proc in stack.procs:
            proc.peak_rss = 0  # peaks of the big rollout only
        big = roll_out(base, token, v2.pk, uids, meter=CpuMeter(stack.procs))
        resent = sum(last_resent(sim.output(4000)) for sim in sims)
        print(f"  job updates re-sent by the simulated devices (unanswered within their wait): about {resent:,}",
              flush=True)  # fmt: skip
        rss = {p.name: p.peak_rss / 2**20 for p in stack.procs}
        sim_rss = sum(rss[s.name] for s in sims)
        bridge_rss = max(v for k, v in rss.items() if k.startswith("bridge"))
        print(f"  peak RSS MiB: {', '.join(f'{k} {v:.0f}' for k, v in rss.items())}", flush=True)
        del worker
    memory = f"peak RSS: worker {rss['worker']:.0f} MiB, bridge {bridge_rss:.0f} MiB (each of {bridges}), " \
             f"server {rss['server']:.0f} MiB, simulators {sim_rss:.0f} MiB in {sim_processes} processes"  # fmt: skip
    if aws_share:
        print(f"  with {aws_processes} of {sim_processes} simulator processes in the AWS IoT Jobs dialect: "
              f"{devices - big['succeeded']} jobs lost (not SUCCEEDED)", flush=True)  # fmt: skip
    return big, [
        Row("fanout", f"start → all jobs terminal, {devices:,} devices", big["seconds"], "s",
            f"{baseline_devices:,} devices", baseline["seconds"], target="< 60 s", met=big["seconds"] < 60,
            note=f"{big['succeeded']:,} succeeded; about {resent:,} updates re-sent; {memory}"),
        Row("fanout", f"devices per minute, {devices:,} devices", big["per_minute"], "/min",
            f"{baseline_devices:,} devices", baseline["per_minute"], target=">= 5,000/min",
            met=big["per_minute"] >= 5000, note=f"AWS IoT Jobs caps a rollout at {AWS_IOT_JOBS_CAP_PER_MIN:,}/min: "
            f"{big['per_minute'] / AWS_IOT_JOBS_CAP_PER_MIN:.1f}x that"),
        Row("fanout", f"connect storm: {devices:,} devices online", devices / connected_s * 60, "/min",
            "rollout rate", big["per_minute"], note=f"{connected_s:.0f} s from simulator start to all online"),
    ]  # fmt: skip


def last_resent(output: str) -> int:
    """The newest 're-sent N' of a simulator's status lines (each line is the count so far)."""
    found = re.findall(r"re-sent (\d+)", output)
    return int(found[-1]) if found else 0


DEBIAN_STOCK = {"max_queued_messages": "1000", "max_inflight_messages": "20"}
DROPPED = "Outgoing messages are being dropped"


def run_shipped(devices: int = 2000, limits_name: str = "shipped", sim_processes: int = 2) -> list[Row]:
    """One 100 % wave on a broker with the shipped (or Debian's) limits; lost = jobs not SUCCEEDED."""
    from deployments.models import Job

    limits = shipped_broker_limits() if limits_name == "shipped" else DEBIAN_STOCK
    uids = common.ensure_devices(devices, prefix=f"fanout{time.strftime('%H%M%S')}-s")
    v1, _ = published_versions()
    token = operator_token()
    with Stack("fanout-shipped") as stack:
        stack.broker(limits)
        base = stack.server()
        stack.bridge("fogdeck-bench-shipped-bridge", "bridge")
        stack.worker()
        sims = []
        for index in range(sim_processes):
            chunk = uids[index::sim_processes]
            devices_file = stack.directory / f"devices-{index}.json"
            devices_file.write_text(json.dumps([{"uid": u, "secret": "x", "profile": "rpi4"} for u in chunk]))
            sims.append((len(chunk), stack.python(
                f"sim-{index}", "-m", "agent.simulator", "--api", base, "--mqtt", f"mqtt://127.0.0.1:{stack.broker_port}",
                "--devices", str(len(chunk)), "--devices-file", str(devices_file), "--telemetry-interval", "60",
                "--rps", "1", "--seed", str(index),
            )))  # fmt: skip
        # not "online in the database": the broker may drop status messages, which nothing re-sends
        wait_until(lambda: all(f"all {n} devices connected" in sim.output(100000) for n, sim in sims), 900,
                   "the simulators to connect", interval=1)  # fmt: skip
        figures = roll_out(base, token, v1.pk, uids)
        jobs = Job.objects.filter(rollout_id=figures["rollout"])
        lost = devices - jobs.filter(status="SUCCEEDED").count()
        timed_out = jobs.filter(status="TIMED_OUT").count()
        drops = (stack.directory / "mosquitto.log").read_text(errors="replace").count(DROPPED)
    limits_text = f"max_queued_messages {limits['max_queued_messages']}, max_inflight_messages " \
                  f"{limits['max_inflight_messages']}"  # fmt: skip
    print(f"  {limits_name} broker limits ({limits_text}): {devices} jobs terminal in {figures['seconds']:.1f} s, "
          f"lost = {lost}, TIMED_OUT = {timed_out}, Mosquitto drop episodes logged: {drops}", flush=True)  # fmt: skip
    return [
        Row("fanout", f"start → all jobs terminal, {devices:,} devices, {limits_name} broker limits",
            figures["seconds"], "s", "lost jobs", lost, target="lost = 0", met=lost == 0,
            note=f"{limits_text}; lost = {lost}, TIMED_OUT = {timed_out}, drop episodes {drops}"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--baseline-devices", type=int, default=1000)
    parser.add_argument("--sim-processes", type=int, default=4)
    parser.add_argument("--bridges", type=int, default=2)
    parser.add_argument("--shipped-devices", type=int, default=2000, help="0: skip the shipped-limits pass")
    parser.add_argument("--shipped-limits", choices=["shipped", "debian"], default="shipped")
    parser.add_argument("--only-shipped", action="store_true", help="only the shipped-limits pass")
    parser.add_argument("--aws-share", type=float, default=0.5, help="share of a second run in the AWS IoT Jobs "
                        "dialect (0: only the single-dialect run)")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="drop and re-create the bench database first: an "
                        "interrupted run's jobs would be swept by the timeout task during this one, and earlier runs' "
                        "devices make the tables larger (`make bench` always starts fresh)")  # fmt: skip
    args = parser.parse_args()
    common.setup_django(fresh=args.fresh)
    rows = (
        []
        if args.only_shipped
        else run(args.devices, args.baseline_devices, args.sim_processes, args.bridges, args.aws_share)
    )
    if args.shipped_devices:
        rows += run_shipped(args.shipped_devices, args.shipped_limits)
    print_rows(rows)


if __name__ == "__main__":
    main()
