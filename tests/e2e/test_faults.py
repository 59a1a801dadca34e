"""Faults on the real stack (our own Mosquitto, the bridge as a process, PostgreSQL): what devices send
while the bridge is dead is applied when it comes back; the bridge's database connections dropped in the
middle of ingest lose and half-write nothing; duplicate, late and reordered job updates never move a job
backwards. Rollout-level faults (broker restart in a wave, worker killed at a gate, a device offline for
a whole wave) are in test_rollout_faults.py."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.utils import timezone

from audit.actors import Actor
from deployments.models import Installation, Job
from deployments.services.job_endings import jobs_sweep_timeouts
from deployments.services.jobs import deployment_create
from fleet.models import Device
from fleet.services import device_issue_credentials
from telemetry.models import TelemetryRollup, TelemetrySample
from tests.e2e.test_device_roundtrip import infer, provision, start_agent
from tests.factories import DeviceFactory
from tests.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.fault]


@pytest.fixture
def control_plane(live_server, settings, mosquitto, processes):
    settings.PUBLIC_BASE_URL = live_server.url

    def start_bridge():
        return processes(
            "bridge",
            "manage.py",
            "mqtt_bridge",
            "--client-id",
            "fogdeck-fault-bridge",
            MQTT_URL=mosquitto.url,
            PUBLIC_BASE_URL=live_server.url,
        )

    return {"api": live_server.url, "mosquitto": mosquitto, "start": processes, "start_bridge": start_bridge}


def test_job_updates_sent_while_the_bridge_is_dead_are_applied_after_it_restarts(
    control_plane, published_version, tmp_path
):
    bridge = control_plane["start_bridge"]()
    device, secret = provision(control_plane)
    port = free_port()
    agent = start_agent(control_plane, device, secret, tmp_path / "agent", port)
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 30, "agent online")
    agent.stop()  # the device is away when its job is published: its persistent session queues it
    job = deployment_create(actor=Actor.system("tests"), device=device, version=published_version, timeout_seconds=120)
    wait_until(lambda: _published(job), 30, "job notification published")
    bridge.stop(signal.SIGKILL)
    # the device comes back, installs and reports while no bridge listens: the broker keeps the
    # bridge's persistent session and queues the updates for it
    start_agent(control_plane, device, secret, tmp_path / "agent", port)
    wait_until(lambda: _serving(port) == published_version.number, 60, "agent serving the new version")
    assert Job.objects.get(pk=job.pk).status != "SUCCEEDED"
    control_plane["start_bridge"]()
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "SUCCEEDED", 60, "updates applied after restart")
    assert [e.to_status for e in Job.objects.get(pk=job.pk).events.all()] == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]


def _published(job: Job) -> bool:
    from outbox.models import OutboxMessage

    return OutboxMessage.objects.filter(topic__endswith="/jobs/notify", published_at__isnull=False).exists()


def _serving(port: int) -> int | None:
    try:
        return infer(port, [[0.0, 0.0, 0.0, 0.0]])["version"]
    except Exception:
        return None


# --- the bridge's database connections dropped during ingest -----------------------------------------
BRIDGE_APP = "fogdeck-fault-bridge"  # libpq's application_name for the bridge: only its backends are killed
SAMPLES_PER_MESSAGE = 3
KILLS = 8


def terminate_bridge_backends() -> int:
    """Kill the bridge's PostgreSQL backends in this test's database only (never another run's)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
            [BRIDGE_APP],
        )
        return cursor.fetchone()[0]


def telemetry_message(index: int) -> bytes:
    samples = [
        {
            "model": f"m{n}",
            "version": 1,
            "requests": 10 + index % 7,
            "errors": index % 3,
            "latency_ms": {"p50": 1.0, "p95": 2.0 + n, "p99": 3.0 + n, "max": 4.0 + n},
        }
        for n in range(SAMPLES_PER_MESSAGE)
    ]
    ts = timezone.now().isoformat()
    return json.dumps({"schema_version": 1, "ts": ts, "interval_s": 1.0, "samples": samples}).encode()


@pytest.mark.postgres_only(reason="drops the bridge's connections with pg_terminate_backend, a PostgreSQL function")
def test_bridge_recovers_when_its_database_connections_are_dropped_during_ingest_and_writes_no_half_batch(
    mosquitto, processes
):
    devices = [DeviceFactory(uid=f"pg-{n}") for n in range(4)]
    secrets = {d.uid: device_issue_credentials(actor=Actor.system("tests"), device=d).secret for d in devices}
    mosquitto.sync_auth()
    bridge = processes(
        "bridge", "manage.py", "mqtt_bridge", "--client-id", "fogdeck-pg-fault-bridge",
        MQTT_URL=mosquitto.url, PGAPPNAME=BRIDGE_APP,
    )  # fmt: skip
    wait_until(lambda: _bridge_backends() > 0, 30, lambda: f"the bridge's db connection\n{bridge.output()[-2000:]}")
    ready = mqtt_device(mosquitto.port, "pg-0", secrets["pg-0"])

    def subscribed() -> bool:  # re-sent until applied: a brand-new bridge session gets nothing before its SUBACK
        status = {"schema_version": 1, "state": "online", "agent_version": "1", "ts": timezone.now().isoformat()}
        ready.publish("fogdeck/v1/devices/pg-0/status", json.dumps(status).encode(), qos=1).wait_for_publish(10)
        return Device.objects.get(uid="pg-0").status == "online"

    wait_until(subscribed, 60, lambda: f"the bridge subscribed\n{bridge.output()[-2000:]}", interval=1)
    ready.disconnect()
    ready.loop_stop()
    published = dict.fromkeys(secrets, 0)
    enough = threading.Event()

    def publish_until_enough(uid: str) -> None:
        client = mqtt_device(mosquitto.port, uid, secrets[uid])
        while not enough.is_set():
            info = client.publish(f"fogdeck/v1/devices/{uid}/telemetry", telemetry_message(published[uid]), qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
            published[uid] += 1
            time.sleep(0.01)
        client.disconnect()
        client.loop_stop()

    senders = [threading.Thread(target=publish_until_enough, args=(uid,)) for uid in secrets]
    for sender in senders:
        sender.start()
    killed, deadline = 0, time.monotonic() + 60
    while killed < KILLS and time.monotonic() < deadline:
        killed += terminate_bridge_backends()
        time.sleep(0.3)
    enough.set()
    for sender in senders:
        sender.join()
    print(f"bridge backends terminated {killed} times while {sum(published.values())} messages were sent")
    assert killed >= KILLS, "the fault was not injected often enough to mean anything"
    expected = sum(published.values()) * SAMPLES_PER_MESSAGE

    def stored() -> int:
        return TelemetrySample.objects.filter(device__in=devices).count()

    wait_until(lambda: stored() >= expected, 60, lambda: f"{stored()}/{expected} stored\n{bridge.output()[-3000:]}")
    time.sleep(1)  # anything written twice would show up now
    assert stored() == expected  # none lost, none duplicated
    # every message is whole: each (device, ts) has exactly its samples
    per_message = Counter(TelemetrySample.objects.filter(device__in=devices).values_list("device_id", "ts"))
    assert set(per_message.values()) == {SAMPLES_PER_MESSAGE}
    # the rollups were written in the same transactions as the raw rows: they agree exactly
    raw = TelemetrySample.objects.filter(device__in=devices).aggregate(n=Count("id"), requests=Sum("requests"))
    rolled = TelemetryRollup.objects.aggregate(n=Sum("samples"), requests=Sum("requests"))
    assert rolled == raw
    assert "database error in the bridge" in bridge.output()
    assert bridge.process.poll() is None, "the bridge died"
    # and it still applies new messages with a fresh connection
    client = mqtt_device(mosquitto.port, "pg-0", secrets["pg-0"])
    status = {"schema_version": 1, "state": "offline", "agent_version": "1", "ts": timezone.now().isoformat()}
    client.publish("fogdeck/v1/devices/pg-0/status", json.dumps(status).encode(), qos=1).wait_for_publish(10)
    wait_until(lambda: Device.objects.get(uid="pg-0").status == "offline", 20, "status after the faults")
    client.disconnect()
    client.loop_stop()


def _bridge_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [BRIDGE_APP],
        )
        return cursor.fetchone()[0]


def mqtt_device(port: int, uid: str, secret: str) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"{uid}-{uuid.uuid4().hex[:6]}"
    )
    client.username_pw_set(uid, secret)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(10), f"{uid} could not connect"
    return client


# --- duplicate, late and reordered job updates -------------------------------------------------------
def test_duplicate_late_and_reordered_job_updates_never_move_a_job_backwards(control_plane, published_version):
    control_plane["start_bridge"]()
    actor = Actor.system("tests")
    runtimes = [{"name": "onnxruntime", "version": "1.18"}]
    device = DeviceFactory(uid="reorder-1", runtimes=runtimes, memory_mb=4096)
    late = DeviceFactory(uid="reorder-2", runtimes=runtimes, memory_mb=4096)
    secrets = {d.uid: device_issue_credentials(actor=actor, device=d).secret for d in (device, late)}
    control_plane["mosquitto"].sync_auth()
    job = deployment_create(actor=actor, device=device, version=published_version, timeout_seconds=120)
    lost = deployment_create(actor=actor, device=late, version=published_version, timeout_seconds=1)
    clients = {uid: mqtt_device(control_plane["mosquitto"].port, uid, secret) for uid, secret in secrets.items()}
    seen: list[str] = []

    def send(uid: str, suffix: str, body: dict) -> None:
        topic = f"fogdeck/v1/devices/{uid}/{suffix}"
        clients[uid].publish(topic, json.dumps(body), qos=1).wait_for_publish(10)

    def update(seq: int, status: str, **extra: object) -> None:
        body = {"schema_version": 1, "job_id": str(job.id), "seq": seq, "status": status, "ts": _now(), **extra}
        send(device.uid, f"jobs/{job.id}/update", body)
        time.sleep(0.15)
        seen.append(Job.objects.get(pk=job.pk).status)

    def barrier(uid: str, mark: str) -> None:
        """A state message after the updates is applied only once they have all been handled (one queue)."""
        send(uid, "state", {
            "schema_version": 1, "ts": _now(), "agent_version": mark,
            "hardware": {"arch": "aarch64", "cpu": "A72", "memory_mb": 4096, "accelerator": "none"},
            "runtimes": runtimes, "slots": {"a": None, "b": None}, "active": {},
        })  # fmt: skip
        wait_until(lambda: Device.objects.get(uid=uid).agent_version == mark, 30, f"barrier {mark}")

    def online(uid: str) -> bool:  # re-sent until applied: a brand-new bridge session gets nothing before its SUBACK
        send(uid, "status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": _now()})
        return Device.objects.get(uid=uid).status == "online"

    for uid in clients:
        wait_until(lambda uid=uid: online(uid), 60, f"the bridge to hear {uid}", interval=1)
    update(2, "IN_PROGRESS", step="verifying", progress=0.5)  # seq 1 is late: it comes after seq 2
    update(1, "IN_PROGRESS", step="downloading", progress=0.1)  # late
    update(2, "IN_PROGRESS", step="verifying", progress=0.5)  # duplicate (a QoS 1 redelivery)
    update(3, "QUEUED")  # a backward move, with a newer seq
    update(5, "SUCCEEDED")
    update(4, "IN_PROGRESS", step="activating")  # late, after the terminal state
    update(5, "SUCCEEDED")  # duplicate of the terminal update
    update(6, "FAILED", reason="late failure")  # a terminal job stays terminal
    barrier(device.uid, "barrier-1")
    job.refresh_from_db()
    assert job.status == "SUCCEEDED" and job.last_seq == 5
    assert list(job.events.order_by("id").values_list("to_status", "seq")) == [
        ("QUEUED", None), ("IN_PROGRESS", 2), ("SUCCEEDED", 5),
    ]  # fmt: skip
    order = ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen), f"moved backwards: {seen}"
    assert Installation.objects.filter(job=job).count() == 1

    # a job the control plane timed out stays TIMED_OUT when the device's late success arrives
    time.sleep(1.1)
    assert jobs_sweep_timeouts(actor=Actor.system("celery:job-timeouts")) == [str(lost.id)]
    body = {"schema_version": 1, "job_id": str(lost.id), "seq": 1, "status": "SUCCEEDED", "ts": _now()}
    send(late.uid, f"jobs/{lost.id}/update", body)
    barrier(late.uid, "barrier-2")
    lost.refresh_from_db()
    assert lost.status == "TIMED_OUT" and not Installation.objects.filter(job=lost).exists()
    assert list(lost.events.values_list("to_status", flat=True)) == ["QUEUED", "TIMED_OUT"]
    for client in clients.values():
        client.disconnect()
        client.loop_stop()


def _now() -> str:
    return timezone.now().isoformat()
