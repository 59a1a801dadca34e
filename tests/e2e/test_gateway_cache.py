"""Issue 8, gateway artifact cache, end to end: our Mosquitto, the bridge, the Django live server as the cloud,
a real `fogdeck-agent --gateway` and real edge agents behind it, all as processes.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from django.core.signals import request_started

from audit.actors import Actor
from deployments.models import Job
from deployments.services.jobs import deployment_create
from deployments.services.rollout_drafts import rollout_create
from fleet.models import ArtifactTransfer, Device
from fleet.services import device_issue_credentials
from tests.factories import DeviceFactory
from tests.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(300)]
ACTOR = Actor.system("tests")
ARTIFACT_PATH = "/api/v1/artifacts/"


class CloudDownloads:
    """Counts artifact downloads the live server (the cloud) answers, by watching Django's request_started."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, sender: object, environ: dict | None = None, **kwargs: object) -> None:
        if environ and environ.get("PATH_INFO", "").startswith(ARTIFACT_PATH):
            with self._lock:
                self.count += 1


@pytest.fixture
def cloud_downloads():
    counter = CloudDownloads()
    request_started.connect(counter, weak=False)
    yield counter
    request_started.disconnect(counter)


@pytest.fixture
def stack(live_server, settings, mosquitto, processes, tmp_path):
    settings.PUBLIC_BASE_URL = live_server.url
    bridge = processes("bridge", "manage.py", "mqtt_bridge", "--client-id", "fogdeck-gw-e2e-bridge",
                       MQTT_URL=mosquitto.url, PUBLIC_BASE_URL=live_server.url)  # fmt: skip

    def agent(device: Device, secret: str, *extra: str):
        return processes(
            f"agent-{device.uid}", "-m", "agent", "--api", live_server.url,
            "--mqtt", f"mqtt://127.0.0.1:{mosquitto.port}", "--device-id", device.uid,
            "--state-dir", str(tmp_path / device.uid), "--port", str(free_port()), *extra,
            FOGDECK_DEVICE_SECRET=secret,
        )  # fmt: skip

    return {"bridge": bridge, "agent": agent, "mosquitto": mosquitto}


def provision(stack, **fields) -> tuple[Device, str]:
    device = DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], memory_mb=4096, **fields)
    secret = device_issue_credentials(actor=ACTOR, device=device).secret
    return device, secret


def reported(device: Device, key: str) -> object:
    return Device.objects.get(pk=device.pk).reported_state.get(key)


def finished(job: Job) -> Job:
    wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, 60, f"job {job.pk} finished")
    job.refresh_from_db()
    return job


def test_edge_devices_get_artifacts_from_their_gateway_verify_them_and_fall_back_to_the_cloud(
    stack, published_version, operator_client, cloud_downloads, tmp_path
):
    gateway, gateway_secret = provision(stack, tier="fog")
    edges = [provision(stack, parent=gateway, tags=["behind-gw"]) for _ in range(4)]
    stack["mosquitto"].sync_auth()
    cache_dir = tmp_path / "gateway-cache"
    gateway_agent = stack["agent"](
        gateway, gateway_secret, "--gateway", "--cache-host", "127.0.0.1", "--cache-port", str(free_port()),
        "--cache-dir", str(cache_dir),
    )  # fmt: skip
    wait_until(lambda: reported(gateway, "cache_url"), 30, lambda: f"gateway state\n{gateway_agent.output()[-2000:]}")
    agents = {device.uid: stack["agent"](device, secret) for device, secret in edges}
    for device, _ in edges:
        wait_until(lambda d=device: reported(d, "capabilities"), 30, f"{device.uid} state")

    plan = {"target": {"filter": {"tag": "behind-gw"}}, "waves": [{"percent": 100}], "seed": 3}
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan)
    wave = rollout.waves.get()

    def deploy(device: Device) -> Job:
        return deployment_create(
            actor=ACTOR, device=device, version=published_version, timeout_seconds=120, rollout_id=rollout.pk,
            wave_id=wave.pk,
        )  # fmt: skip

    def transfer_of(job: Job) -> ArtifactTransfer:
        found = wait_until(lambda: ArtifactTransfer.objects.filter(job_id=job.pk).first(), 30, "transfer stored")
        assert isinstance(found, ArtifactTransfer)
        return found

    # 1. two devices behind the gateway: both served by it, the cloud sends the artifact once
    first = [finished(deploy(device)) for device, _ in edges[:2]]
    for job in first:
        assert job.status == "SUCCEEDED", f"{job.reason}\n{agents[job.device.uid].output()[-2000:]}"
        assert (transfer_of(job).source, transfer_of(job).gateway_id) == ("gateway", gateway.pk)
    assert cloud_downloads.count == 1
    size = published_version.size

    # 2. a tampered cached copy (same size and mtime, so the gateway's own check passes): refused, cloud used
    cached = cache_dir / published_version.sha256
    before = cached.stat()
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(cached, "r+b") as handle:
        handle.write(bytes(data))
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))
    tampered = finished(deploy(edges[2][0]))
    assert tampered.status == "SUCCEEDED"
    assert "gateway copy refused: sha256 mismatch" in tampered.reason
    transfer = transfer_of(tampered)
    assert transfer.source == "cloud" and transfer.refused[0]["source"] == "gateway"
    assert cloud_downloads.count == 2

    # 3. the gateway is down (frozen: connections hang until the timeout): the device falls back to the cloud
    gateway_agent.process.send_signal(signal.SIGSTOP)
    try:
        down = finished(deploy(edges[3][0]))
    finally:
        gateway_agent.process.send_signal(signal.SIGCONT)
    assert down.status == "SUCCEEDED", down.reason
    assert transfer_of(down).source == "cloud" and "gateway copy refused: download failed" in down.reason
    assert cloud_downloads.count == 3

    answer = operator_client.get(f"/api/v1/rollouts/{rollout.pk}/")
    assert answer.status_code == 200
    assert answer.json()["artifact_transfer"] == {
        "cloud_bytes": 2 * size,
        "gateway_bytes": 2 * size,
        "cloud_downloads": 2,
        "gateway_downloads": 2,
        "refused_gateway_copies": 2,
        "gateway_fill_bytes_max": size,
        "gateways": [{"uid": gateway.uid, "bytes": 2 * size, "downloads": 2}],
    }
