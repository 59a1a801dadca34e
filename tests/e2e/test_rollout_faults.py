"""Staged rollouts that keep their promises while things break, on the real stack: our own Mosquitto,
the bridge, a Celery worker with beat on Redis, the live API and a simulated fleet.

- Mosquitto is restarted in the middle of the second wave: the bridge and every device reconnect
  (persistent sessions, QoS 1), the rollout completes, no job is lost or doubled; in the same rollout
  the Celery worker is SIGKILLed while the last wave bakes (the health gate is evaluated on every
  tick) and another one takes over: each wave is decided exactly once;
- one compatible device is offline for the whole rollout: the planner puts it in the last wave (offline
  devices are picked last), where it is sent its job anyway; the job is TIMED_OUT still QUEUED after the
  plan's timeout (`queued_timeout_seconds`, capped by `job_timeout_seconds`), the install gate counts it
  as not started and names it, apart from failures, and it is sent nothing more (no retry policy).

(A worker killed during dispatch is covered in test_rollouts.py.)
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import redis
from django.db.models import Count

from deployments.models import GateEvaluation, Job, Rollout, RolloutEvent, RolloutTarget, Wave
from fleet.models import Device
from tests.e2e.test_rollouts import assert_devices_run, build_fleet, create_and_start, kill_tree
from tests.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.fault, pytest.mark.timeout(420)]
JOB_TIMEOUT = 12

REDIS_URL = "redis://127.0.0.1:6379/14"  # a Celery database of our own (test_rollouts.py uses 11)
HEALTH_GATE = {"max_p95_ms": 500, "max_error_rate": 0.02, "bake_seconds": 6, "min_samples": 30}


class Stack:
    def __init__(self, live_server: Any, mosquitto: Any, processes: Any, tmp_path: Any, *, fleet: int,
                 offline: int = 0) -> None:  # fmt: skip
        """`fleet` devices (every fourth cannot run the sample); the first `offline` never connect."""
        self.processes, self.tmp_path, self.live, self.mosquitto = processes, tmp_path, live_server, mosquitto
        redis.Redis.from_url(REDIS_URL).flushdb()
        specs = build_fleet(fleet)
        self.offline_uids = [spec["uid"] for spec in specs[: offline * 4 : 4]]  # rpi4s: compatible
        online = [spec for spec in specs if spec["uid"] not in self.offline_uids]
        (tmp_path / "devices.json").write_text(json.dumps(online))
        mosquitto.sync_auth()
        self.bridge = processes("bridge", "manage.py", "mqtt_bridge", "--client-id", "fogdeck-rf-bridge",
                                MQTT_URL=mosquitto.url, PUBLIC_BASE_URL=live_server.url, REDIS_URL="")  # fmt: skip
        self.workers = [self.start_worker("worker")]
        self.sim = processes(
            "sim", "-m", "agent.simulator", "--api", live_server.url, "--mqtt", f"mqtt://127.0.0.1:{mosquitto.port}",
            "--devices", str(len(online)), "--devices-file", str(tmp_path / "devices.json"), "--duration", "400",
            "--telemetry-interval", "2", "--rps", "10", "--seed", "7",
        )  # fmt: skip
        self.online = len(online)
        self.wait_online(120)

    def wait_online(self, timeout: float) -> None:
        wait_until(lambda: Device.objects.online().count() == self.online, timeout,
                   lambda: f"{Device.objects.online().count()}/{self.online} online\n{self.sim.output()[-2000:]}",
                   interval=1)  # fmt: skip

    def start_worker(self, name: str) -> Any:
        return self.processes(
            name, "-m", "celery", "-A", "config", "worker", "--beat", "--concurrency", "2", "--loglevel", "INFO",
            "-s", str(self.tmp_path / f"{name}-beat-schedule"), "-n", f"{name}@%h",
            REDIS_URL=REDIS_URL, PUBLIC_BASE_URL=self.live.url, ROLLOUT_TICK_SECONDS="1",
        )  # fmt: skip

    def describe(self, rollout_id: int) -> str:
        r = Rollout.objects.get(pk=rollout_id)
        waves = list(r.waves.values_list("index", "status"))
        jobs = Counter(Job.objects.filter(rollout=r).values_list("wave__index", "status"))
        logs = "\n".join(f"--- {p.log.name}\n{p.output()[-2500:]}" for p in [*self.workers, self.bridge, self.sim])
        return f"rollout {r.status} ({r.status_reason}) waves {waves} jobs {jobs}\n{logs}"

    def wait_done(self, rollout_id: int, timeout: float) -> Rollout:
        final = {"completed", "aborted", "rolled_back", "paused"}
        wait_until(lambda: Rollout.objects.get(pk=rollout_id).status in final, timeout,
                   lambda: self.describe(rollout_id), interval=0.5)  # fmt: skip
        return Rollout.objects.get(pk=rollout_id)


def start_rollout(
    client: Any, version: Any, job_timeout: int, install_gate: dict[str, Any]
) -> tuple[Rollout, dict[int, int]]:
    rollout_id = create_and_start(client, {
        "version": version.pk,
        "target": {"filter": {"tag": "sim"}},
        "waves": [{"percent": 10}, {"percent": 50}, {"percent": 100}],
        "install_gate": install_gate,
        "health_gate": HEALTH_GATE,
        "rate_per_minute": 3000,
        "job_timeout_seconds": job_timeout,
        "seed": 3,
    })  # fmt: skip
    rollout = Rollout.objects.get(pk=rollout_id)
    targets = RolloutTarget.objects.filter(rollout=rollout, wave__isnull=False)
    return rollout, dict(targets.values_list("device_id", "wave__index"))


def assert_one_forward_job_per_device(rollout: Rollout, eligible: dict[int, int], offline: set[int]) -> list[Job]:
    """Nothing lost, nothing doubled: one job per eligible device, each with a forward-only history."""
    jobs = list(Job.objects.filter(rollout=rollout))
    assert Counter(job.device_id for job in jobs) == Counter(list(eligible))
    for job in jobs:
        history = list(job.events.order_by("id").values_list("to_status", flat=True))
        expected = ["QUEUED", "TIMED_OUT"] if job.device_id in offline else ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]
        assert history == expected, (job.device_id, history)
    return jobs


def assert_each_wave_decided_once(rollout: Rollout) -> None:
    """One final install and one final health verdict per wave, and one PASSED transition."""
    finals = GateEvaluation.objects.filter(rollout=rollout, final=True).values_list("wave__index", "gate", "verdict")
    assert Counter(finals) == Counter({(w, g, "pass"): 1 for w in range(3) for g in ("install", "health")})
    passed = RolloutEvent.objects.filter(rollout=rollout, to_status="passed").values("wave__index")
    assert {row["wave__index"]: row["n"] for row in passed.annotate(n=Count("id"))} == {0: 1, 1: 1, 2: 1}


def test_rollout_completes_through_a_broker_restart_and_a_worker_killed_at_a_gate(
    live_server, mosquitto, processes, tmp_path, published_version, settings, operator_client
):
    settings.PUBLIC_BASE_URL = live_server.url
    stack = Stack(live_server, mosquitto, processes, tmp_path, fleet=80)
    rollout, eligible = start_rollout(
        operator_client, published_version, job_timeout=120,
        install_gate={"min_success_pct": 100, "max_failure_pct": 0, "min_finished": 1},
    )  # fmt: skip
    assert len(eligible) == 60

    # 1. Mosquitto restarted while the second wave installs
    wait_until(lambda: Job.objects.filter(rollout=rollout, wave__index=1).exists(), 120,
               lambda: f"wave 1 to start\n{stack.describe(rollout.pk)}", interval=0.1)  # fmt: skip
    mosquitto.restart()
    unfinished = Job.objects.filter(rollout=rollout, wave__index=1).exclude(status="SUCCEEDED").count()

    # 2. the worker SIGKILLed while the last wave bakes (health gate checks on every tick)
    def last_wave_checked() -> bool:
        return GateEvaluation.objects.filter(rollout=rollout, wave__index=2, gate="health", final=False).exists()

    wait_until(last_wave_checked, 180, lambda: f"wave 2 to bake\n{stack.describe(rollout.pk)}", interval=0.1)
    assert Wave.objects.get(rollout=rollout, index=2).status == "baking"
    kill_tree(stack.workers[0])
    stack.workers.append(stack.start_worker("worker2"))

    rollout = stack.wait_done(rollout.pk, 180)
    assert rollout.status == "completed", stack.describe(rollout.pk)
    print(f"broker restarted with {unfinished} unfinished jobs in wave 1; worker killed while wave 2 baked")
    assert_one_forward_job_per_device(rollout, eligible, offline=set())
    assert_each_wave_decided_once(rollout)
    assert_devices_run(dict.fromkeys(eligible, 1))
    stack.wait_online(30)  # the broker restart cost no device its connection for good


def test_a_device_offline_for_the_whole_rollout_times_out_is_named_by_its_wave_and_gets_nothing_more(
    live_server, mosquitto, processes, tmp_path, published_version, settings, operator_client
):
    settings.PUBLIC_BASE_URL = live_server.url
    stack = Stack(live_server, mosquitto, processes, tmp_path, fleet=40, offline=1)
    offline = Device.objects.get(uid=stack.offline_uids[0])
    rollout, eligible = start_rollout(
        operator_client, published_version, job_timeout=JOB_TIMEOUT,
        # the smallest wave has 3 devices: one timed out of 3 must still pass, so that the rollout goes on
        install_gate={"min_success_pct": 60, "max_failure_pct": 40, "min_finished": 5},
    )  # fmt: skip
    assert len(eligible) == 30 and offline.pk in eligible
    rollout = stack.wait_done(rollout.pk, 180)
    assert rollout.status == "completed", stack.describe(rollout.pk)
    jobs = assert_one_forward_job_per_device(rollout, eligible, offline={offline.pk})
    assert_each_wave_decided_once(rollout)

    # TIMED_OUT per the plan (by the rollout's queued timeout or the job timeout sweep, whichever ticks
    # first: both are JOB_TIMEOUT here), named by its wave's install gate as never started, not failed
    lost = next(job for job in jobs if job.device_id == offline.pk)
    assert lost.status == "TIMED_OUT" and lost.started_at is None
    assert f"still QUEUED after {JOB_TIMEOUT}s" in lost.reason or f"no terminal update within {JOB_TIMEOUT}s" in (
        lost.reason
    )
    # never connected: planned last, and replaced in an earlier wave if it landed there, so in the last wave
    final = dict(
        RolloutTarget.objects.filter(rollout=rollout, wave__isnull=False).values_list("device_id", "wave__index")
    )
    wave = final[offline.pk]
    assert wave == 2
    gate = GateEvaluation.objects.get(rollout=rollout, wave__index=wave, gate="install", final=True)
    wave_size = sum(1 for index in final.values() if index == wave)
    assert gate.figures["not_started"] == 1 and gate.figures["failed"] == 0
    assert gate.figures["succeeded"] == wave_size - 1 and gate.figures["success_pct"] == 100
    assert [d["device"] for d in gate.figures["not_started_devices"]] == [offline.uid]
    assert offline.uid in Wave.objects.get(rollout=rollout, index=wave).offline_at_dispatch["dispatched"]
    assert_devices_run({pk: (None if pk == offline.pk else 1) for pk in eligible})

    # and it gets nothing later: a few more ticks, still its one timed-out job and one attempt
    time.sleep(3)
    assert Job.objects.filter(device=offline).count() == 1
    assert RolloutTarget.objects.get(rollout=rollout, device=offline).attempts == 1
