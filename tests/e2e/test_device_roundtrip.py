"""Issue 4 end to end: real Mosquitto with per-device credentials, the bridge and a real agent, as processes."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from audit.actors import Actor
from deployments.models import Job
from deployments.services.job_endings import jobs_sweep_timeouts
from deployments.services.jobs import deployment_create
from fleet.models import Device
from fleet.services import device_issue_credentials
from models_registry.models import ModelVersion
from models_registry.samples import sample_versions
from models_registry.services import model_version_create, model_version_publish
from telemetry.models import TelemetrySample
from tests.factories import DeviceFactory
from tests.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ACTOR = Actor.system("tests")


@pytest.fixture
def control_plane(live_server, settings, mosquitto, processes):
    settings.PUBLIC_BASE_URL = live_server.url
    bridge = processes(
        "bridge",
        "manage.py",
        "mqtt_bridge",
        "--client-id",
        "fogdeck-e2e-bridge",
        MQTT_URL=mosquitto.url,
        PUBLIC_BASE_URL=live_server.url,
    )
    return {"api": live_server.url, "mosquitto": mosquitto, "bridge": bridge, "start": processes}


def start_agent(control_plane, device: Device, secret: str, state_dir, port: int):
    mqtt = f"mqtt://127.0.0.1:{control_plane['mosquitto'].port}"
    return control_plane["start"](
        f"agent-{device.uid}",
        "-m",
        "agent",
        "--api",
        control_plane["api"],
        "--mqtt",
        mqtt,
        "--device-id",
        device.uid,
        "--state-dir",
        str(state_dir),
        "--port",
        str(port),
        "--telemetry-interval",
        "1",
        FOGDECK_DEVICE_SECRET=secret,
    )


def provision(control_plane) -> tuple[Device, str]:
    device = DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], memory_mb=4096)
    secret = device_issue_credentials(actor=ACTOR, device=device).secret
    control_plane["mosquitto"].sync_auth()
    return device, secret


def job_status(job: Job) -> str:
    job.refresh_from_db()
    return job.status


def infer(port: int, inputs: list[list[float]]) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/infer",
        data=json.dumps({"inputs": {"input": inputs}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def publish_sample(version_index: int, model) -> ModelVersion:
    sample = sample_versions()[version_index]
    version = model_version_create(
        actor=ACTOR,
        model=model,
        artifact=io.BytesIO(sample.onnx_bytes),
        format="onnx",
        framework="other",
        requirements={"runtime": "onnxruntime"},
    )
    return model_version_publish(actor=ACTOR, version=version)


def test_deployment_reaches_a_real_agent_which_serves_the_model_and_reports_telemetry(
    control_plane, published_version, tmp_path
):
    device, secret = provision(control_plane)
    port = free_port()
    agent = start_agent(control_plane, device, secret, tmp_path / "agent", port)
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 30, f"agent online\n{agent.output()}")
    job = deployment_create(actor=ACTOR, device=device, version=published_version, timeout_seconds=120)
    from outbox.models import OutboxMessage

    wait_until(
        lambda: job_status(job) == "SUCCEEDED",
        60,
        lambda: (
            f"job SUCCEEDED, outbox {list(OutboxMessage.objects.values('topic', 'published_at', 'last_error'))}\n"
            f"agent:\n{agent.output()[-3000:]}\nbridge:\n{control_plane['bridge'].output()[-3000:]}"
        ),
    )
    assert [e.to_status for e in job.events.all()] == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]

    points = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]
    answer = infer(port, points)
    assert answer["version"] == published_version.number
    session = ort.InferenceSession(sample_versions()[0].onnx_bytes)
    expected = session.run(None, {session.get_inputs()[0].name: np.array(points, dtype=np.float32)})[0]
    (output,) = answer["outputs"].values()
    assert np.allclose(np.array(output), expected, atol=1e-5)

    wait_until(lambda: TelemetrySample.objects.filter(device=device, requests__gt=0).exists(), 30, "telemetry")
    sample = TelemetrySample.objects.filter(device=device, requests__gt=0).first()
    assert sample.model_name == published_version.model.name and sample.version_number == published_version.number
    state = Device.objects.get(pk=device.pk).reported_state
    assert state["active"][published_version.model.name]["version"] == published_version.number


def test_tampered_badly_signed_and_older_versions_are_refused_and_the_agent_keeps_serving(
    control_plane, published_version, tmp_path
):
    device, secret = provision(control_plane)
    port = free_port()
    agent = start_agent(control_plane, device, secret, tmp_path / "agent", port)
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 30, "agent online")
    model = published_version.model
    v2 = publish_sample(1, model)
    first = deployment_create(actor=ACTOR, device=device, version=v2, timeout_seconds=120)
    wait_until(lambda: job_status(first) == "SUCCEEDED", 60, f"v2 installed\n{agent.output()[-2000:]}")

    # one flipped byte in the stored artifact of a newer version
    v3 = publish_sample(2, model)
    with default_storage.open(v3.artifact_key) as handle:
        data = bytearray(handle.read())
    data[len(data) // 2] ^= 0x01
    default_storage.delete(v3.artifact_key)
    default_storage.save(v3.artifact_key, io.BytesIO(bytes(data)))
    tampered = deployment_create(actor=ACTOR, device=device, version=v3, timeout_seconds=120)
    wait_until(lambda: job_status(tampered) in {"FAILED", "REJECTED"}, 60, "tampered artifact refused")
    assert "sha256" in tampered.reason
    assert infer(port, [[0.0, 0.0, 0.0, 0.0]])["version"] == v2.number

    # a signature that doesn't verify (a version whose stored signature was replaced)
    v4 = publish_sample(0, model)
    ModelVersion.objects.filter(pk=v4.pk).update(signature=v2.signature)
    v4.refresh_from_db()
    bad_signature = deployment_create(actor=ACTOR, device=device, version=v4, timeout_seconds=120)
    wait_until(lambda: job_status(bad_signature) in {"FAILED", "REJECTED"}, 60, "bad signature refused")
    assert "signature" in bad_signature.reason
    assert infer(port, [[0.0, 0.0, 0.0, 0.0]])["version"] == v2.number

    # an older version than the active one, without saying it's a rollback
    older = deployment_create(actor=ACTOR, device=device, version=published_version, timeout_seconds=120)
    wait_until(lambda: job_status(older) == "REJECTED", 60, "older version refused")
    assert "older" in older.reason
    assert infer(port, [[0.0, 0.0, 0.0, 0.0]])["version"] == v2.number


def test_offline_device_gets_its_job_on_reconnect_and_a_silent_one_times_out(
    control_plane, published_version, tmp_path
):
    device, secret = provision(control_plane)
    port = free_port()
    agent = start_agent(control_plane, device, secret, tmp_path / "agent", port)
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 30, "agent online")
    agent.stop()
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "offline", 30, "Last Will marks it offline")
    job = deployment_create(actor=ACTOR, device=device, version=published_version, timeout_seconds=120)
    agent = start_agent(control_plane, device, secret, tmp_path / "agent", port)
    wait_until(lambda: job_status(job) == "SUCCEEDED", 60, f"job after reconnect\n{agent.output()[-2000:]}")

    silent, _ = provision(control_plane)  # never connects
    lost = deployment_create(actor=ACTOR, device=silent, version=published_version, timeout_seconds=5)
    later = timezone.now() + timezone.timedelta(seconds=6)
    assert jobs_sweep_timeouts(actor=Actor.system("celery:job-timeouts"), now=later) == [str(lost.id)]
    assert job_status(lost) == "TIMED_OUT" and "no terminal update within 5s" in lost.reason


def test_agent_and_bridge_resume_after_a_broker_restart(control_plane, published_version, tmp_path):
    device, secret = provision(control_plane)
    port = free_port()
    agent = start_agent(control_plane, device, secret, tmp_path / "agent", port)
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 30, "agent online")
    control_plane["mosquitto"].restart()
    v2 = publish_sample(1, published_version.model)
    job = deployment_create(actor=ACTOR, device=device, version=v2, timeout_seconds=120)
    wait_until(
        lambda: job_status(job) == "SUCCEEDED",
        90,
        lambda: f"job after broker restart: {job_status(job)}\n{agent.output()[-2000:]}",
    )
    assert infer(port, [[0.0, 0.0, 0.0, 0.0]])["version"] == v2.number
