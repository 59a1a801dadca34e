"""A staged rollout over a mixed fleet: simulated devices in Fogdeck's dialect, simulated devices in the AWS IoT
Jobs dialect (`fogdeck-sim --dialect aws-iot-jobs`) and things driven by the unmodified `awsiotsdk` jobs
client, all on our Mosquitto, with the bridge and a real Celery worker (with beat) on Redis db 12. A good
version completes its waves on every kind; a slow one fails its canary's health gate and is rolled back on
every kind.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from typing import Any

import pytest
import redis
from awscrt import io as crt_io
from awscrt import mqtt as crt_mqtt
from awsiot import iotjobs

from agent.simulator import PROFILES as SIM_PROFILES
from audit.actors import Actor
from deployments.models import GateEvaluation, Job, JobKind, Rollout, RolloutTarget
from fleet.demo_fleet import PROFILES
from fleet.models import Device
from fleet.services import device_create, device_issue_credentials, site_create
from tests.deployments.rollout_helpers import publish_next_version
from tests.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(900)]
ACTOR = Actor.system("tests")
REDIS_URL = "redis://127.0.0.1:6379/12"  # a database of our own (CI's e2e runs use 11 and 14)
MODEL = "shape-classifier"
EDGE = ["rpi4", "jetson-nano", "atom-box"]
QOS = crt_mqtt.QoS.AT_LEAST_ONCE
SIMULATED = 120  # across three sites, half in each dialect
CANARY_SIMS = 8  # on the canary's own site, with the SDK things: all rpi4, half in each dialect
SDK_THINGS = 3


class SdkThing:
    """An unmodified AWS IoT jobs client that installs whatever it is given: notify-next → start-next → read
    the jobDocument → UpdateJobExecution SUCCEEDED with statusDetails."""

    def __init__(self, port: int, uid: str, secret: str) -> None:
        self.uid = uid
        self.documents: list[dict[str, Any]] = []
        self.rejections: list[str] = []
        self._lock = threading.Lock()
        loop = crt_io.EventLoopGroup(1)
        bootstrap = crt_io.ClientBootstrap(loop, crt_io.DefaultHostResolver(loop))
        self.connection = crt_mqtt.Connection(
            client=crt_mqtt.Client(bootstrap, None), host_name="127.0.0.1", port=port, client_id=uid,
            clean_session=True, keep_alive_secs=30, username=uid, password=secret, disable_metrics=True,
        )  # fmt: skip
        self.connection.connect().result(20)
        self.jobs = iotjobs.IotJobsClient(self.connection)
        thing = uid
        for future, _ in (
            self.jobs.subscribe_to_next_job_execution_changed_events(
                iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), QOS, self._on_next
            ),
            self.jobs.subscribe_to_start_next_pending_job_execution_accepted(
                iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), QOS, self._on_started
            ),
            self.jobs.subscribe_to_update_job_execution_rejected(
                iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id="+"), QOS, self._on_rejected
            ),
        ):
            future.result(20)
        # an AWS client has no status topic: it says it is online the Fogdeck way, or dispatch defers it as
        # offline (docs/protocol.md, "Telemetry, status and state")
        status = {"schema_version": 1, "state": "online", "agent_version": "awsiotsdk",
                  "ts": dt.datetime.now(dt.UTC).isoformat()}  # fmt: skip
        self.connection.publish(f"fogdeck/v1/devices/{uid}/status", json.dumps(status), QOS, retain=True)[0].result(20)
        self._start_next()

    def _start_next(self) -> None:
        request = iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.uid, client_token="next")
        self.jobs.publish_start_next_pending_job_execution(request, QOS)  # not awaited: may run on a CRT thread

    def _on_next(self, event: iotjobs.NextJobExecutionChangedEvent) -> None:
        if event.execution is not None:
            self._start_next()

    def _on_started(self, response: iotjobs.StartNextJobExecutionResponse) -> None:
        execution = response.execution
        if execution is None:
            return
        document = execution.job_document
        with self._lock:
            self.documents.append(document)
        details = {"installedVersion": str(document["version"]), "kind": document["kind"]}
        request = iotjobs.UpdateJobExecutionRequest(
            thing_name=self.uid, job_id=execution.job_id, status="SUCCEEDED", status_details=details,
            expected_version=execution.version_number, client_token=f"done-{execution.job_id[:8]}",
        )  # fmt: skip
        self.jobs.publish_update_job_execution(request, QOS)

    def _on_rejected(self, error: iotjobs.RejectedError) -> None:
        with self._lock:
            self.rejections.append(f"{error.code}: {error.message}")

    def close(self) -> None:
        self.connection.disconnect().result(20)


def make_device(uid: str, site: Any, profile_name: str, dialect: str) -> tuple[Device, str]:
    profile = PROFILES[profile_name]
    device = device_create(
        actor=ACTOR, uid=uid, name=uid, site=site, tier="edge", arch=profile.arch, cpu=profile.cpu,
        memory_mb=profile.memory_choices[-1], accelerator=profile.accelerator,
        runtimes=[{"name": n, "version": v} for n, v in profile.runtimes], tags=["mixed"], job_dialect=dialect,
    )  # fmt: skip
    return device, device_issue_credentials(actor=ACTOR, device=device).secret


def build_fleet() -> tuple[Any, dict[str, list[dict[str, str]]], list[tuple[Device, str]]]:
    """(canary site, devices file rows per dialect, SDK things with their secrets)."""
    canary_site = site_create(actor=ACTOR, name="Canary plant", latitude=45.0, longitude=4.0)
    sites = [site_create(actor=ACTOR, name=f"Plant {n}", latitude=46.0 + n, longitude=4.0) for n in range(3)]
    rows: dict[str, list[dict[str, str]]] = {"fogdeck": [], "aws-iot-jobs": []}
    for index in range(SIMULATED + CANARY_SIMS):
        dialect = "fogdeck" if index % 2 == 0 else "aws-iot-jobs"
        canary = index >= SIMULATED
        profile = "rpi4" if canary else EDGE[(index // 2) % len(EDGE)]
        site = canary_site if canary else sites[index % len(sites)]
        device, secret = make_device(f"mx-{index:04d}", site, profile, dialect)
        rows[dialect].append({"uid": device.uid, "secret": secret, "profile": PROFILES[profile].name})
    things = [make_device(f"mx-sdk-{n}", canary_site, "rpi4", "aws-iot-jobs") for n in range(SDK_THINGS)]
    return canary_site, rows, things


def rollout_body(version_id: int, canary_site: int, **overrides: Any) -> dict[str, Any]:
    body = {
        "version": version_id,
        "target": {"filter": {"tag": "mixed"}},
        # the canary is the canary plant: both simulated dialects and the SDK things
        "waves": [{"count": CANARY_SIMS + SDK_THINGS, "site": canary_site}, {"percent": 50}, {"percent": 100}],
        "install_gate": {"min_success_pct": 95, "max_failure_pct": 10, "min_finished": 3},
        "health_gate": {"max_p95_latency_ratio": 1.3, "max_error_rate": 0.02, "bake_seconds": 8, "min_samples": 50},
        "rate_per_minute": 3000,
        "job_timeout_seconds": 60,
        "seed": 3,
    }
    body.update(overrides)
    return body


def create_and_start(client: Any, body: dict[str, Any]) -> int:
    created = client.post("/api/v1/rollouts/", body, format="json")
    assert created.status_code == 201, created.json()
    rollout_id = created.json()["id"]
    assert client.post(f"/api/v1/rollouts/{rollout_id}/start/", format="json").status_code == 200
    return rollout_id


def jobs_by_dialect(rollout_id: int, kind: str) -> Counter[tuple[str, str]]:
    rows = Job.objects.filter(rollout_id=rollout_id, kind=kind).values_list("device__job_dialect", "status")
    return Counter(rows)


def test_a_mixed_fleet_completes_its_waves_and_a_slow_version_rolls_back_on_every_kind(
    live_server, mosquitto, processes, tmp_path, published_version, settings, operator_client
):
    settings.PUBLIC_BASE_URL = live_server.url
    redis.Redis.from_url(REDIS_URL).flushdb()
    v2 = publish_next_version(published_version)
    canary_site, rows, things = build_fleet()
    mosquitto.sync_auth()
    profile_file = tmp_path / "profiles.json"
    # v2 computes exactly what v1 does, but runs 4x slower on the Raspberry Pi 4 profile only (the simulators time
    # each version once on this loaded machine: 2x left too little margin over the gate's 1.3)
    profile_file.write_text(json.dumps({"rpi4": {"versions": {f"{MODEL}@2": 4 * SIM_PROFILES["rpi4"].speed_factor}}}))
    bridge = processes("bridge", "manage.py", "mqtt_bridge", "--client-id", "fogdeck-mx-bridge",
                       MQTT_URL=mosquitto.url, PUBLIC_BASE_URL=live_server.url, REDIS_URL="")  # fmt: skip
    worker = processes(
        "worker", "-m", "celery", "-A", "config", "worker", "--beat", "--concurrency", "2", "--loglevel", "INFO",
        "-s", str(tmp_path / "beat-schedule"), "-n", "mx-worker@%h",
        REDIS_URL=REDIS_URL, PUBLIC_BASE_URL=live_server.url, ROLLOUT_TICK_SECONDS="2",
    )  # fmt: skip
    for dialect, dialect_rows in rows.items():
        (tmp_path / f"{dialect}.json").write_text(json.dumps(dialect_rows))
        processes(
            f"sim-{dialect}", "-m", "agent.simulator", "--api", live_server.url,
            "--mqtt", f"mqtt://127.0.0.1:{mosquitto.port}", "--devices", str(len(dialect_rows)),
            "--devices-file", str(tmp_path / f"{dialect}.json"), "--duration", "800", "--telemetry-interval", "3",
            "--rps", "10", "--seed", "5", "--profile-file", str(profile_file), "--dialect", dialect,
        )  # fmt: skip
    simulated = SIMULATED + CANARY_SIMS
    wait_until(lambda: Device.objects.online().count() == simulated, 180,
               lambda: f"{Device.objects.online().count()} online", interval=1)  # fmt: skip
    sdk = [SdkThing(mosquitto.port, device.uid, secret) for device, secret in things]
    wait_until(lambda: Device.objects.online().count() == simulated + SDK_THINGS, 60, "the SDK things online")

    def wait_status(rollout_id: int, timeout: float) -> Rollout:
        def describe() -> str:
            rollout = Rollout.objects.get(pk=rollout_id)
            waves = list(rollout.waves.values_list("index", "status"))
            jobs = Counter(Job.objects.filter(rollout=rollout).values_list("kind", "device__job_dialect", "status"))
            logs = "\n".join(p.output()[-2500:] for p in (worker, bridge))
            return f"rollout {rollout.status} ({rollout.status_reason}) waves {waves} jobs {jobs}\n{logs}"

        final = {"completed", "aborted", "rolled_back", "paused"}
        wait_until(lambda: Rollout.objects.get(pk=rollout_id).status in final, timeout, describe, interval=0.5)
        return Rollout.objects.get(pk=rollout_id)

    try:
        # 1. v1 everywhere: the first install, so the absolute p95 threshold applies
        first = create_and_start(operator_client, rollout_body(
            published_version.pk, canary_site.pk,
            health_gate={"max_p95_ms": 500, "max_error_rate": 0.02, "bake_seconds": 5, "min_samples": 50},
        ))  # fmt: skip
        done = wait_status(first, 400)
        assert done.status == "completed", done.status_reason
        every = simulated + SDK_THINGS
        assert jobs_by_dialect(first, JobKind.INSTALL) == {
            ("fogdeck", "SUCCEEDED"): simulated // 2,
            ("aws-iot-jobs", "SUCCEEDED"): simulated // 2 + SDK_THINGS,
        }, every
        sdk_jobs = Job.objects.filter(rollout_id=first, device__uid__startswith="mx-sdk-")
        assert {tuple(sorted(job.status_details.items())) for job in sdk_jobs} == {
            (("installedVersion", "1"), ("kind", "install"))
        }
        assert all(thing.documents[0]["sha256"] == published_version.sha256 for thing in sdk)

        # 2. v2 is 4x slower on rpi4, the canary plant's profile: its health gate fails, the canary rolls back
        second = create_and_start(operator_client, rollout_body(v2.pk, canary_site.pk))
        done = wait_status(second, 300)
        gates = list(
            GateEvaluation.objects.filter(rollout=done).values_list("wave__index", "gate", "verdict", "figures")
        )
        assert done.status == "rolled_back", f"{done.status_reason}: {gates}"
        gate = GateEvaluation.objects.get(rollout=done, gate="health", final=True)
        assert gate.verdict == "fail" and gate.wave.index == 0
        canary = RolloutTarget.objects.filter(rollout=done, wave__index=0)
        assert canary.count() == CANARY_SIMS + SDK_THINGS
        rollbacks = jobs_by_dialect(second, JobKind.ROLLBACK)
        assert rollbacks == {
            ("fogdeck", "SUCCEEDED"): CANARY_SIMS // 2,
            ("aws-iot-jobs", "SUCCEEDED"): CANARY_SIMS // 2 + SDK_THINGS,
        }
        assert not Job.objects.filter(rollout=done, wave__index__gt=0).exists()
        for thing in sdk:
            assert [(d["kind"], d["version"]) for d in thing.documents] == [("install", 1), ("install", 2),
                                                                           ("rollback", 1)]  # fmt: skip
            assert thing.rejections == []
    finally:
        for thing in sdk:
            thing.close()
