"""`fogdeck-agent --dialect aws-iot-jobs` as a real process against the real bridge, on both brokers: it takes its
jobs over the AWS IoT Jobs API, verifies and activates them as in Fogdeck's dialect, and picks up a cancel
from `notify-next`."""

from __future__ import annotations

import pytest

from audit.actors import Actor
from deployments.models import Job, JobStatus
from deployments.services.job_endings import job_cancel
from deployments.services.jobs import deployment_create
from fleet.models import Device
from tests.mqttbridge.test_aws_jobs_client import bridge, mqtt_broker  # noqa: F401 - fixtures
from tests.mqttbridge.test_runtime import provision
from tests.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ACTOR = Actor.system("tests")


def start_agent(processes, live_server, broker, device: Device, secret: str, state_dir) -> object:
    return processes(
        f"agent-{device.uid}", "-m", "agent", "--api", live_server.url, "--mqtt", f"mqtt://127.0.0.1:{broker.port}",
        "--device-id", device.uid, "--state-dir", str(state_dir), "--port", str(free_port()),
        "--telemetry-interval", "1", "--dialect", "aws-iot-jobs", FOGDECK_DEVICE_SECRET=secret,
    )  # fmt: skip


def status_of(job: Job) -> str:
    return Job.objects.get(pk=job.pk).status


@pytest.mark.usefixtures("bridge")
def test_the_agent_installs_over_the_aws_dialect(
    live_server, settings, request, processes, published_version, tmp_path
):
    settings.PUBLIC_BASE_URL = live_server.url
    broker = request.getfixturevalue("mqtt_broker")  # both brokers (tests/mqttbridge/test_aws_jobs_client.py)
    device, secret = provision(broker, job_dialect="aws-iot-jobs", memory_mb=4096)
    agent = start_agent(processes, live_server, broker, device, secret, tmp_path / "agent")
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 30, lambda: agent.output()[-3000:])
    job = deployment_create(actor=ACTOR, device=device, version=published_version, timeout_seconds=120)
    wait_until(lambda: status_of(job) == JobStatus.SUCCEEDED, 60, lambda: f"{status_of(job)}\n{agent.output()[-3000:]}")
    assert [e.to_status for e in Job.objects.get(pk=job.pk).events.order_by("at", "id")] == [
        "QUEUED", "IN_PROGRESS", "SUCCEEDED"]  # fmt: skip
    state = Device.objects.get(pk=device.pk).reported_state
    assert state["active"][published_version.model.name]["version"] == published_version.number


@pytest.mark.usefixtures("bridge")
def test_a_job_canceled_before_the_agent_starts_it_is_never_installed(
    live_server, settings, request, processes, published_version, tmp_path
):
    settings.PUBLIC_BASE_URL = live_server.url
    broker = request.getfixturevalue("mqtt_broker")  # both brokers (tests/mqttbridge/test_aws_jobs_client.py)
    device, secret = provision(broker, job_dialect="aws-iot-jobs", memory_mb=4096)
    job = deployment_create(actor=ACTOR, device=device, version=published_version, timeout_seconds=120)
    job_cancel(actor=ACTOR, job=job, reason="changed our mind")
    agent = start_agent(processes, live_server, broker, device, secret, tmp_path / "agent")
    wait_until(lambda: Device.objects.get(pk=device.pk).reported_state.get("active") == {}, 30,
               lambda: agent.output()[-3000:])  # fmt: skip
    # the start-next of its connect found nothing pending; a new job still arrives and installs
    second = deployment_create(actor=ACTOR, device=device, version=published_version, timeout_seconds=120)
    wait_until(lambda: status_of(second) == JobStatus.SUCCEEDED, 60, lambda: agent.output()[-3000:])
    assert status_of(job) == JobStatus.CANCELED
