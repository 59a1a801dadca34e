"""Faults on the real stack: what devices send while the bridge is dead is applied when it comes back."""

from __future__ import annotations

import signal

import pytest

from audit.actors import Actor
from deployments.models import Job
from deployments.services import deployment_create
from fleet.models import Device
from tests.e2e.test_device_roundtrip import infer, provision, start_agent
from tests.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def control_plane(live_server, settings, mosquitto, processes):
    settings.PUBLIC_BASE_URL = live_server.url

    def start_bridge():
        return processes(
            "bridge",
            "manage.py",
            "mqtt_bridge",
            "--client-id",
            "fault-bridge",
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
    from mqttbridge.models import OutboxMessage

    return OutboxMessage.objects.filter(topic__endswith="/jobs/notify", published_at__isnull=False).exists()


def _serving(port: int) -> int | None:
    try:
        return infer(port, [[0.0, 0.0, 0.0, 0.0]])["version"]
    except Exception:
        return None
