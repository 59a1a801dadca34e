"""The same stack on the embedded broker: the simulator provisions itself through the API and installs a job."""

from __future__ import annotations

import pytest

from audit.actors import Actor
from deployments.models import Job
from deployments.services.jobs import deployment_create
from fleet.models import Device
from stack.mqtt import embedded_broker
from tests.factories import make_token, make_user
from tests.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(300)]


def test_simulator_provisions_through_the_api_and_runs_on_the_embedded_broker(
    live_server, processes, settings, published_version
):
    settings.PUBLIC_BASE_URL = live_server.url
    settings.MQTT_USERNAME, settings.MQTT_PASSWORD = "fogdeck-control", "embedded-e2e-secret"
    broker = embedded_broker(port=free_port())
    broker.start_in_thread()
    try:
        token = make_token(make_user("sim-admin", "admin"))
        url = f"mqtt://127.0.0.1:{broker.port}"
        processes(
            "bridge",
            "manage.py",
            "mqtt_bridge",
            "--client-id",
            "fogdeck-embedded-bridge",
            MQTT_URL=f"mqtt://fogdeck-control:embedded-e2e-secret@127.0.0.1:{broker.port}",
            PUBLIC_BASE_URL=live_server.url,
        )
        sim = processes(
            "sim",
            "-m",
            "agent.simulator",
            "--api",
            live_server.url,
            "--mqtt",
            url,
            "--token",
            token,
            "--devices",
            "12",
            "--provision",
            "--duration",
            "200",
            "--telemetry-interval",
            "2",
        )
        wait_until(
            lambda: Device.objects.filter(tag_links__tag="sim").online().count() == 12,
            90,
            lambda: f"{Device.objects.online().count()} online\n{sim.output()[-3000:]}",
            interval=0.5,
        )
        assert Device.objects.filter(tag_links__tag="sim", credential_hash__startswith="$7$").count() == 12
        target = Device.objects.filter(
            tag_links__tag="sim", runtimes__name="onnxruntime", runtimes__version="1.18"
        ).first()
        job = deployment_create(
            actor=Actor.system("tests"), device=target, version=published_version, timeout_seconds=60
        )
        wait_until(
            lambda: Job.objects.get(pk=job.pk).status == "SUCCEEDED",
            60,
            lambda: f"job {Job.objects.get(pk=job.pk).status}\n{sim.output()[-2000:]}",
        )
        assert broker.refusals.snapshot().get("bad_credentials", 0) == 0
    finally:
        broker.stop_thread()
