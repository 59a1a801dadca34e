"""Drift end to end: simulated devices at two sites report input histograms through Mosquitto and the
bridge into PostgreSQL; the scheduled drift job raises an alert for the site whose inputs were shifted
(and only that one), and resolves it once the simulator stops the drift."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time

import numpy as np
import pytest
from django.db.models import F, Sum
from django.utils import timezone

from audit.actors import Actor
from deployments.models import Job
from deployments.services.jobs import deployment_create
from fleet.demo_fleet import PROFILES
from fleet.models import Device
from fleet.services import device_create, device_issue_credentials, site_create
from protocol.sample_inputs import sample_inputs
from telemetry.drift import drift_evaluate, profile_from_samples, reference_profile_set
from telemetry.models import DriftAlert, TelemetrySample
from telemetry.tasks import evaluate_drift
from tests.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(240)]
ACTOR = Actor.system("tests")
PER_SITE = 3
MIN_COUNT = 400


def _fleet() -> list[dict[str, str]]:
    profile = PROFILES["rpi4"]
    specs = []
    for site_name, latitude in (("North", 59.3), ("South", 41.4)):
        site = site_create(actor=ACTOR, name=site_name, latitude=latitude, longitude=2.0)
        for index in range(PER_SITE):
            device = device_create(
                actor=ACTOR, uid=f"{site_name.lower()}-{index}", name=f"{site_name} {index}", site=site, tier="edge",
                arch=profile.arch, cpu=profile.cpu, memory_mb=profile.memory_choices[-1],
                accelerator=profile.accelerator, runtimes=[{"name": n, "version": v} for n, v in profile.runtimes],
            )  # fmt: skip
            secret = device_issue_credentials(actor=ACTOR, device=device).secret
            specs.append({"uid": device.uid, "secret": secret, "profile": "rpi4", "site": site_name})
    return specs


def _devices() -> list[Device]:
    return list(Device.objects.filter(site__name__in=["North", "South"]).order_by("uid"))


def _values(site: str, since: dt.datetime | None = None) -> int:
    """Input rows the devices of `site` reported (requests that did not fail)."""
    rows = TelemetrySample.objects.filter(device__site__name=site).exclude(inputs={})
    if since is not None:
        rows = rows.filter(received_at__gte=since)
    return rows.aggregate(n=Sum(F("requests") - F("errors")))["n"] or 0


def test_injected_drift_on_one_site_raises_an_alert_for_that_site_only_and_resolves_when_it_stops(
    live_server, mosquitto, processes, tmp_path, published_version, settings
):
    settings.PUBLIC_BASE_URL = live_server.url
    settings.DRIFT_MIN_COUNT = MIN_COUNT
    # the simulator draws the sample classifier's inputs from the samples' distribution: its "training data"
    training = sample_inputs(np.random.default_rng(1), 20_000)
    reference_profile_set(
        actor=ACTOR, version=published_version, features=profile_from_samples({"input": training}), sample_count=20_000
    )
    specs = _fleet()
    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps(specs))
    mosquitto.sync_auth()
    bridge = processes("bridge", "manage.py", "mqtt_bridge", "--client-id", "fogdeck-drift-bridge",
                       MQTT_URL=mosquitto.url, PUBLIC_BASE_URL=live_server.url)  # fmt: skip
    sim = processes(
        "sim", "-m", "agent.simulator", "--api", live_server.url, "--mqtt", f"mqtt://127.0.0.1:{mosquitto.port}",
        "--devices", str(len(specs)), "--devices-file", str(devices_file), "--duration", "200",
        "--telemetry-interval", "1", "--rps", "100", "--seed", "5",
        "--drift-site", "South", "--drift-shift", "1.5",
    )  # fmt: skip

    def logs() -> str:
        return f"sim:\n{sim.output()[-2000:]}\nbridge:\n{bridge.output()[-2000:]}"

    wait_until(lambda: all(d.status == "online" for d in _devices()), 60, lambda: f"devices online\n{logs()}")
    jobs = [
        deployment_create(actor=ACTOR, device=d, version=published_version, timeout_seconds=120) for d in _devices()
    ]
    wait_until(
        lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status="SUCCEEDED").count() == len(jobs),
        90,
        lambda: f"jobs {list(Job.objects.values_list('status', 'reason'))}\n{logs()}",
    )
    wait_until(
        lambda: _values("North") >= 3 * MIN_COUNT and _values("South") >= 3 * MIN_COUNT,
        60,
        lambda: f"input summaries: North {_values('North')}, South {_values('South')}\n{logs()}",
    )

    outcome = evaluate_drift.apply().get()  # the beat task, run once here

    assert outcome == {"ok": 1, "opened": 1}, outcome
    alert = DriftAlert.objects.select_related("site").get()
    assert (alert.site.name, alert.version_id, alert.status) == ("South", published_version.pk, "open")
    assert alert.psi > settings.DRIFT_PSI_THRESHOLD
    assert {f["feature"] for f in alert.features} == {f"input[{i}]" for i in range(4)}
    assert all(f["mean"] == pytest.approx(f["reference_mean"] + 1.5, abs=0.2) for f in alert.features)

    # the simulator stops the drift; once the window holds only what came after, the alert resolves
    sim.process.send_signal(signal.SIGUSR1)
    wait_until(lambda: "drift on site 'South': off" in sim.output(), 10, logs)
    stopped = timezone.now() + dt.timedelta(seconds=2)  # telemetry drawn before the signal may be in flight
    wait_until(lambda: _values("South", since=stopped) >= 2 * MIN_COUNT, 60, logs)
    time.sleep(0.5)
    now = timezone.now()
    results = {r.site: r.outcome for r in drift_evaluate(actor=ACTOR, now=now, window=now - stopped)}

    assert results == {"North": "ok", "South": "resolved"}
    alert.refresh_from_db()
    assert alert.status == "resolved" and alert.resolved_at is not None
