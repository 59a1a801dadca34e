"""Staged rollouts end to end: 1,000 simulated devices, our Mosquitto, the bridge and a real Celery worker
(with beat) on Redis. Nothing is mocked: jobs go out through the outbox, devices install and report,
telemetry flows back and the gates read it.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from typing import Any

import psutil
import pytest
import redis
from django.db.models import Count

from agent.simulator import PROFILES as SIM_PROFILES
from audit.actors import Actor
from deployments.models import GateEvaluation, Installation, Job, JobKind, Rollout, RolloutTarget
from fleet.demo_fleet import PROFILES
from fleet.models import Device
from fleet.services import device_create, device_issue_credentials, site_create
from tests.deployments.rollout_helpers import publish_next_version
from tests.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(600)]
ACTOR = Actor.system("tests")
FLEET = 1000
REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of our own: no other run's tasks, none of ours left to them
MODEL = "shape-classifier"
# three edge profiles that can run the ONNX sample, one (coral-dev: tflite only) that cannot
EDGE = ["rpi4", "jetson-nano", "atom-box", "coral-dev"]
RPI4 = "aarch64|Cortex-A72 x4|none"


def build_fleet(count: int) -> list[dict[str, str]]:
    sites = [site_create(actor=ACTOR, name=f"Plant {n}", latitude=45.0 + n, longitude=4.0) for n in range(4)]
    specs = []
    for index in range(count):
        profile = PROFILES[EDGE[index % len(EDGE)]]
        device = device_create(
            actor=ACTOR, uid=f"ro-{index:05d}", name=f"ro {index}", site=sites[(index // len(EDGE)) % len(sites)],
            tier="edge", arch=profile.arch, cpu=profile.cpu, memory_mb=profile.memory_choices[-1],
            accelerator=profile.accelerator, runtimes=[{"name": n, "version": v} for n, v in profile.runtimes],
            tags=["sim"],
        )  # fmt: skip
        secret = device_issue_credentials(actor=ACTOR, device=device).secret
        specs.append({"uid": device.uid, "secret": secret, "profile": profile.name})
    return specs


class Stack:
    def __init__(self, live_server: Any, mosquitto: Any, processes: Any, tmp_path: Any, sim_args: list[str]) -> None:
        self.processes, self.tmp_path, self.live = processes, tmp_path, live_server
        redis.Redis.from_url(REDIS_URL).flushdb()
        specs = build_fleet(FLEET)
        (tmp_path / "devices.json").write_text(json.dumps(specs))
        mosquitto.sync_auth()
        self.bridge = processes("bridge", "manage.py", "mqtt_bridge", "--client-id", "fogdeck-ro-bridge",
                                MQTT_URL=mosquitto.url, PUBLIC_BASE_URL=live_server.url, REDIS_URL="")  # fmt: skip
        self.workers = [self.start_worker("worker")]
        self.sim = processes(
            "sim", "-m", "agent.simulator", "--api", live_server.url, "--mqtt", f"mqtt://127.0.0.1:{mosquitto.port}",
            "--devices", str(FLEET), "--devices-file", str(tmp_path / "devices.json"), "--duration", "500",
            "--telemetry-interval", "3", "--rps", "10", "--seed", "5", *sim_args,
        )  # fmt: skip
        wait_until(lambda: Device.objects.online().count() == FLEET, 180,
                   lambda: f"{Device.objects.online().count()} online\n{self.sim.output()[-2000:]}",
                   interval=1)  # fmt: skip

    def start_worker(self, name: str) -> Any:
        return self.processes(
            name, "-m", "celery", "-A", "config", "worker", "--beat", "--concurrency", "2", "--loglevel", "INFO",
            "-s", str(self.tmp_path / f"{name}-beat-schedule"), "-n", f"{name}@%h",
            REDIS_URL=REDIS_URL, PUBLIC_BASE_URL=self.live.url, ROLLOUT_TICK_SECONDS="2",
        )  # fmt: skip

    def logs(self) -> str:
        return "\n".join(f"--- {w.log.name}\n{w.output()[-3000:]}" for w in [*self.workers, self.bridge])

    def wait_status(self, rollout_id: int, statuses: set[str], timeout: float) -> Rollout:
        def describe() -> str:
            r = Rollout.objects.get(pk=rollout_id)
            waves = list(r.waves.values_list("index", "status"))
            jobs = Counter(Job.objects.filter(rollout=r).values_list("kind", "status"))
            return f"rollout {r.status} ({r.status_reason}) waves {waves} jobs {jobs}\n{self.logs()}"

        wait_until(lambda: Rollout.objects.get(pk=rollout_id).status in statuses, timeout, describe, interval=0.5)
        return Rollout.objects.get(pk=rollout_id)


def kill_tree(process: Any) -> None:
    """SIGKILL a worker and its pool children at once: a crash, not a shutdown."""
    parent = psutil.Process(process.process.pid)
    for proc in [*parent.children(recursive=True), parent]:
        proc.send_signal(signal.SIGKILL)
    process.process.wait(10)


def health_checks(rollout: Any) -> list[tuple[int, str, bool, dict]]:
    """Each health check of a rollout with the figures it judged: what a failed assertion should show."""
    return [
        (g.wave.index, g.verdict, g.final, {
            "samples": g.figures.get("samples"), "worst": g.figures.get("worst_profile"),
            "ratio": g.figures.get("max_p95_ratio"),
            "profiles": {p: (e.get("p95_ratio"), (e.get("candidate") or {}).get("p95_ms"),
                             (e.get("baseline") or {}).get("p95_ms"))
                         for p, e in g.figures.get("profiles", {}).items()},
        })
        for g in GateEvaluation.objects.filter(rollout=rollout, gate="health").select_related("wave").order_by("id")
    ]  # fmt: skip


def rollout_body(version_id: int, **overrides: Any) -> dict[str, Any]:
    body = {
        "version": version_id,
        "target": {"filter": {"tag": "sim"}},
        "waves": [{"percent": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}],
        "install_gate": {"min_success_pct": 95, "max_failure_pct": 10, "min_finished": 5},
        "health_gate": {"max_p95_latency_ratio": 1.3, "max_error_rate": 0.02, "bake_seconds": 8, "min_samples": 100},
        "rate_per_minute": 3000,
        "job_timeout_seconds": 45,
        "seed": 11,
    }
    body.update(overrides)
    return body


def create_and_start(client: Any, body: dict[str, Any]) -> int:
    created = client.post("/api/v1/rollouts/", body, format="json")
    assert created.status_code == 201, created.json()
    rollout_id = created.json()["id"]
    started = client.post(f"/api/v1/rollouts/{rollout_id}/start/", format="json")
    assert started.status_code == 200, started.json()
    return rollout_id


def assert_devices_run(expected: dict[int, int | None]) -> None:
    """Installation rows and the devices' reported state agree with what the rollout's outcome says."""
    current = dict(Installation.objects.filter(until=None).values_list("device_id", "version__number"))
    assert Counter(current.get(pk) for pk in expected) == Counter(expected.values())
    assert all(current.get(pk) == number for pk, number in expected.items())
    counts = Counter(Installation.objects.filter(until=None).values_list("device_id", flat=True))
    assert max(counts.values(), default=1) == 1

    def reported() -> bool:
        states = dict(Device.objects.filter(pk__in=list(expected)).values_list("pk", "reported_state"))
        return all(
            ((states[pk] or {}).get("active", {}).get(MODEL) or {}).get("version") == number
            for pk, number in expected.items()
        )

    wait_until(reported, 30, "devices' reported state to match their installations")


def test_good_version_completes_despite_a_killed_worker_then_a_slow_one_rolls_back_at_canary(
    live_server, mosquitto, processes, tmp_path, published_version, settings, operator_client
):
    settings.PUBLIC_BASE_URL = live_server.url
    v2 = publish_next_version(published_version)
    profile_file = tmp_path / "profiles.json"
    # v2 computes exactly what v1 does, but runs 2x slower on the Raspberry Pi 4 profile only
    profile_file.write_text(json.dumps({"rpi4": {"versions": {f"{MODEL}@2": 2 * SIM_PROFILES["rpi4"].speed_factor}}}))
    stack = Stack(live_server, mosquitto, processes, tmp_path, ["--profile-file", str(profile_file)])

    # 1. the first install of v1: no baseline, so the absolute p95 threshold applies
    first = create_and_start(operator_client, rollout_body(
        published_version.pk,
        health_gate={"max_p95_ms": 500, "max_error_rate": 0.02, "bake_seconds": 5, "min_samples": 50},
    ))  # fmt: skip
    # kill the worker in the middle of the 50 % wave, then bring up another one
    wait_until(
        lambda: Job.objects.filter(rollout_id=first, wave__index=2).exists(), 240,
        lambda: f"wave 2 of rollout {first} to start\n{stack.logs()}", interval=0.1,
    )  # fmt: skip
    kill_tree(stack.workers[0])
    killed_at = Job.objects.filter(rollout_id=first, wave__index=2).count()
    stack.workers.append(stack.start_worker("worker2"))
    done = stack.wait_status(first, {"completed", "aborted", "rolled_back", "paused"}, 300)
    assert done.status == "completed", done.status_reason
    print(f"worker killed with {killed_at} jobs of wave 2 created")
    eligible = list(RolloutTarget.objects.filter(rollout=done, wave__isnull=False).values_list("device_id", flat=True))
    assert len(eligible) == 750
    per_wave = Job.objects.filter(rollout=done).values("device", "wave").annotate(n=Count("id"))
    assert len(per_wave) == 750 and {row["n"] for row in per_wave} == {1}
    detail = operator_client.get(f"/api/v1/rollouts/{first}/").json()
    assert [w["status"] for w in detail["waves"]] == ["passed"] * 4
    assert sum(w["jobs"].get("SUCCEEDED", 0) for w in detail["waves"]) == 750
    assert detail["excluded"]["count"] == 250
    everyone = {pk: None for pk in Device.objects.values_list("pk", flat=True)} | {pk: 1 for pk in eligible}
    assert_devices_run(everyone)

    # 2. v2 is 2x slower on one profile: the canary's health gate fails and the canary rolls back
    second = create_and_start(operator_client, rollout_body(v2.pk))
    done = stack.wait_status(second, {"rolled_back", "completed", "paused", "aborted"}, 180)
    assert done.status == "rolled_back", (done.status_reason, health_checks(done))
    gate = GateEvaluation.objects.get(rollout=done, gate="health", final=True)
    assert gate.verdict == "fail" and gate.wave.index == 0 and gate.actor == "system:gate:health"
    assert gate.figures["worst_profile"] == RPI4 and gate.figures["max_p95_ratio"] > 1.3
    assert gate.figures["samples"] >= 100
    canary = RolloutTarget.objects.filter(rollout=done, wave__index=0)
    assert Job.objects.filter(rollout=done, kind=JobKind.ROLLBACK, status="SUCCEEDED").count() == canary.count()
    assert not Job.objects.filter(rollout=done, wave__index__gt=0).exists()
    assert_devices_run(everyone)
    history = operator_client.get(f"/api/v1/devices/{canary.first().device_id}/history/").json()["results"]
    assert [row["version_number"] for row in history] == [1, 2, 1]
    assert history[0]["job_kind"] == "rollback" and "health gate failed" in history[0]["reason"]


def test_install_failures_above_the_abort_threshold_abort_the_rollout(
    live_server, mosquitto, processes, tmp_path, published_version, settings, operator_client
):
    settings.PUBLIC_BASE_URL = live_server.url
    stack = Stack(live_server, mosquitto, processes, tmp_path, ["--install-failure-rate", "0.5"])
    rollout_id = create_and_start(operator_client, rollout_body(
        published_version.pk, health_gate={"max_p95_ms": 500, "bake_seconds": 5, "min_samples": 50},
    ))  # fmt: skip
    done = stack.wait_status(rollout_id, {"aborted", "completed", "rolled_back", "paused"}, 180)
    assert done.status == "aborted" and "install gate failed at wave 0" in done.status_reason
    gate = GateEvaluation.objects.get(rollout=done, gate="install")
    assert gate.verdict == "fail" and gate.figures["failure_pct"] > 10 and gate.actor == "system:gate:install"
    wait_until(lambda: not Job.objects.filter(rollout=done, status__in=["QUEUED", "IN_PROGRESS"]).exists(), 60,
               "the canary's jobs to finish")  # fmt: skip
    assert not Job.objects.filter(rollout=done, wave__index__gt=0).exists()
    succeeded = set(Job.objects.filter(rollout=done, status="SUCCEEDED").values_list("device_id", flat=True))
    assert_devices_run({pk: (1 if pk in succeeded else None) for pk in Device.objects.values_list("pk", flat=True)})
