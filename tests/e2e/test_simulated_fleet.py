"""The fleet simulator against the bridge: thousands of devices, each with its own MQTT connection and credentials."""

from __future__ import annotations

import json
import time

import pytest
from rest_framework.test import APIClient

from audit.actors import Actor
from deployments.models import Job
from deployments.services.jobs import deployment_create
from fleet.demo_fleet import PROFILES
from fleet.models import Device
from fleet.services import device_create, device_issue_credentials, site_create
from tests.factories import make_token, make_user
from tests.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(420)]
ACTOR = Actor.system("tests")
FLEET = 2000


def build_fleet(count: int) -> list[dict[str, str]]:
    site = site_create(actor=ACTOR, name="Sim Site", latitude=45.0, longitude=4.0)
    edge = [p for p in PROFILES.values() if p.tier == "edge"]
    specs = []
    for index in range(count):
        profile = edge[index % len(edge)]
        device = device_create(
            actor=ACTOR,
            uid=f"sim-{index:05d}",
            name=f"sim {index}",
            site=site,
            tier="edge",
            arch=profile.arch,
            cpu=profile.cpu,
            memory_mb=profile.memory_choices[-1],
            accelerator=profile.accelerator,
            runtimes=[{"name": n, "version": v} for n, v in profile.runtimes],
            tags=["sim"],
        )
        secret = device_issue_credentials(actor=ACTOR, device=device).secret
        specs.append({"uid": device.uid, "secret": secret, "profile": profile.name})
    return specs


def test_two_thousand_simulated_devices_show_online_through_the_api(
    live_server, mosquitto, processes, tmp_path, published_version, settings
):
    settings.PUBLIC_BASE_URL = live_server.url
    started = time.monotonic()
    specs = build_fleet(FLEET)
    print(f"fleet of {FLEET} built in {time.monotonic() - started:.1f}s")
    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps(specs))
    mosquitto.sync_auth()
    bridge = processes(
        "bridge",
        "manage.py",
        "mqtt_bridge",
        "--client-id",
        "fogdeck-sim-bridge",
        MQTT_URL=mosquitto.url,
        PUBLIC_BASE_URL=live_server.url,
    )
    sim = processes(
        "sim",
        "-m",
        "agent.simulator",
        "--api",
        live_server.url,
        "--mqtt",
        f"mqtt://127.0.0.1:{mosquitto.port}",
        "--devices",
        str(FLEET),
        "--devices-file",
        str(devices_file),
        "--duration",
        "300",
        "--telemetry-interval",
        "30",
        "--seed",
        "3",
    )
    wait_until(
        lambda: Device.objects.online().count() == FLEET,
        180,
        lambda: (
            f"{Device.objects.online().count()} of {FLEET} online\nsim:\n{sim.output()[-2000:]}\n"
            f"bridge:\n{bridge.output()[-2000:]}"
        ),
        interval=1,
    )
    print(f"all online after {time.monotonic() - started:.1f}s")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(make_user('watcher', 'viewer'))}")
    listed = client.get("/api/v1/devices/?status=online&tag=sim&page_size=1").json()
    assert listed["count"] == FLEET

    # and the simulated devices really act on jobs: a handful install the sample model
    targets = list(Device.objects.filter(runtimes__name="onnxruntime", runtimes__version="1.18").order_by("uid")[:5])
    jobs = [deployment_create(actor=ACTOR, device=d, version=published_version, timeout_seconds=120) for d in targets]
    wait_until(
        lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status="SUCCEEDED").count() == len(jobs),
        90,
        lambda: f"jobs {list(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list('status', 'reason'))}",
    )
