"""Rollouts in a real browser against simulated devices: our Mosquitto, the bridge, a Celery worker with beat
and the fleet simulator, all real processes. An operator plans a rollout in the wizard, previews it (wave
sizes, the excluded device and why), starts it, watches the detail page's charts receive points over the
websocket without a reload, and pauses it; a viewer sees the same page with no action buttons."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from audit.actors import Actor
from deployments.models import Rollout, RolloutStatus
from fleet.demo_fleet import PROFILES
from fleet.models import Device
from fleet.services import device_create, device_issue_credentials, site_create
from tests.factories import make_user
from tests.processes import wait_until

from .conftest import LAYER_REDIS_DB, off_loop, screenshot, sign_in, start_asgi_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(240)]
ACTOR = Actor.system("tests")
# three profiles that run the ONNX sample, and one (coral-dev: tflite only) that the preview must exclude
FLEET = ["rpi4", "jetson-nano", "atom-box", "rpi4", "jetson-nano", "atom-box", "rpi4", "coral-dev"]


def build_fleet() -> list[dict[str, str]]:
    sites = [site_create(actor=ACTOR, name=name, latitude=lat, longitude=lon)
             for name, lat, lon in (("Lyon", 45.76, 4.83), ("Porto", 41.15, -8.61))]  # fmt: skip
    specs = []
    for index, name in enumerate(FLEET):
        profile = PROFILES[name]
        device = device_create(
            actor=ACTOR, uid=f"sim-{name}-{index:02d}", name=f"{name} {index}", site=sites[index % 2], tier="edge",
            arch=profile.arch, cpu=profile.cpu, memory_mb=profile.memory_choices[-1], accelerator=profile.accelerator,
            runtimes=[{"name": n, "version": v} for n, v in profile.runtimes], tags=["sim"],
        )  # fmt: skip
        specs.append({"uid": device.uid, "secret": device_issue_credentials(actor=ACTOR, device=device).secret,
                      "profile": profile.name})  # fmt: skip
    return specs


@pytest.fixture
def rollout_server(processes, settings, published_version):
    """The web server, serving the signing keys that signed the published version (the devices check them)."""
    return start_asgi_server(processes, settings, SIGNING_KEY_DIR=str(settings.SIGNING_KEY_DIR))


@pytest.fixture
def device_side(rollout_server, mosquitto, processes, tmp_path):
    """Bridge, worker (with beat) and simulator on the same channel layer and Redis as the web server."""
    specs = build_fleet()
    (tmp_path / "devices.json").write_text(json.dumps(specs))
    mosquitto.sync_auth()
    redis_url = os.environ.get("REDIS_URL", "")
    env = {"PUBLIC_BASE_URL": rollout_server.url, "MQTT_URL": mosquitto.url}
    if redis_url:
        env["REDIS_URL"] = redis_url.rsplit("/", 1)[0] + f"/{LAYER_REDIS_DB}"
    bridge = processes("bridge", "manage.py", "mqtt_bridge", "--client-id", "fogdeck-browser-bridge", **env)
    worker = processes("worker", "-m", "celery", "-A", "config", "worker", "--beat", "--concurrency", "1",
                       "--loglevel", "WARNING", "-s", str(tmp_path / "beat-schedule"), "-n", "browser@%h",
                       ROLLOUT_TICK_SECONDS="1", **env)  # fmt: skip
    sim = processes("sim", "-m", "agent.simulator", "--api", rollout_server.url, "--mqtt",
                    f"mqtt://127.0.0.1:{mosquitto.port}", "--devices", str(len(specs)), "--devices-file",
                    str(tmp_path / "devices.json"), "--duration", "200", "--telemetry-interval", "1", "--rps", "20",
                    "--seed", "3")  # fmt: skip
    wait_until(lambda: Device.objects.online().count() == len(specs), 60,
               lambda: f"{Device.objects.online().count()} online\n{sim.output()[-2000:]}\n{bridge.output()[-2000:]}",
               interval=0.5)  # fmt: skip
    yield {"bridge": bridge, "worker": worker, "sim": sim}
    # quick teardown: the simulated devices and the worker have nothing to save (a cold Celery shutdown)
    sim.stop(signal.SIGKILL)
    worker.stop(signal.SIGQUIT)


def logs(side: dict) -> str:
    return "\n".join(f"--- {name}\n{proc.output()[-2500:]}" for name, proc in side.items())


def test_operator_plans_previews_starts_watches_and_pauses_a_rollout(
    rollout_server, device_side, new_page, published_version
):
    make_user("olga", "operator")
    make_user("vera", "viewer")
    version = published_version
    page = new_page()
    page.on("dialog", lambda dialog: dialog.accept("checking the canary" if dialog.type == "prompt" else None))
    sign_in(page, rollout_server, "olga")
    assert page.locator('nav a[href="/rollouts/"]').is_visible()

    # the wizard: version, target, waves, gates, then a preview before anything is sent
    page.goto(f"{rollout_server.url}/rollouts/")
    assert "No rollouts yet" in page.locator("main").inner_text()
    page.click('[data-testid="new-rollout"]')
    page.select_option('select[name="version"]', str(version.pk))
    page.fill('input[name="name"]', "sim canary")
    page.fill('input[name="target_filter"]', "tag=sim")
    page.fill('input[name="wave0_amount"]', "2")
    page.select_option('select[name="wave0_unit"]', "count")
    page.fill('input[name="wave1_amount"]', "100")
    page.fill('input[name="wave2_amount"]', "")
    page.check('input[name="health_enabled"]')
    page.fill('input[name="health_bake_seconds"]', "600")  # the canary bakes while we watch and pause
    page.fill('input[name="rate_per_minute"]', "6000")
    page.fill('input[name="install_min_finished"]', "1")
    page.click('[data-testid="preview-button"]')
    preview = page.locator('[data-testid="preview"]')
    assert preview.is_visible()
    sizes = page.locator('[data-testid="preview-waves"] tbody td:nth-child(2)').all_inner_texts()
    assert sizes == ["2", "5"]
    # every simulated device is connected: the preview says how many of each wave are online now
    online = page.locator('[data-testid="preview-waves"] [data-testid="wave-online"]').all_inner_texts()
    assert online == ["2 of 2", "5 of 5"]
    assert "needs runtime onnxruntime" in page.locator('[data-testid="excluded-reasons"]').inner_text()
    assert off_loop(Rollout.objects.count) == 0  # a preview writes nothing
    screenshot(page, "rollout-wizard-preview")

    page.click('[data-testid="start-button"]')  # confirmed by the dialog handler
    page.wait_for_url(re.compile(r".*/rollouts/\d+/$"))
    rollout_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    page.wait_for_selector('[data-testid="live-state"].live')
    chart = page.locator('[data-testid="latency-chart"]')
    before = int(chart.get_attribute("data-points"))

    # jobs go out, the two canary devices install, their telemetry reaches the chart: no reload
    try:
        page.wait_for_function(
            "() => document.querySelector('#wave-rows').innerText.includes('SUCCEEDED 2')", timeout=60_000
        )
        page.wait_for_function(
            "n => Number(document.querySelector('[data-testid=latency-chart]').dataset.points) > n",
            arg=before,
            timeout=30_000,
        )
    except Exception as exc:
        raise AssertionError(f"no live update: {exc}\n{logs(device_side)}") from None
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    page.wait_for_function("() => document.querySelector('#gate-rows').innerText.includes('install')")
    page.wait_for_function(  # a few live points make a readable chart for the screenshot (not an assertion)
        "() => Number(document.querySelector('[data-testid=latency-chart]').dataset.points) >= 4", timeout=15_000
    )
    page.wait_for_timeout(300)  # let plotly finish drawing before the screenshot (not an assertion)
    screenshot(page, "rollout-detail")

    # pause, with confirmation and a reason; the page comes back paused
    page.click('[data-testid="action-pause"]')
    page.wait_for_selector('[data-testid="action-resume"]')
    assert page.locator('[data-testid="rollout-status"]').inner_text() == "paused"
    rollout = off_loop(Rollout.objects.get, pk=rollout_id)
    assert rollout.status == RolloutStatus.PAUSED and rollout.status_reason == "checking the canary"

    page.goto(f"{rollout_server.url}/")  # the fleet overview links the active rollout
    page.click(f'[data-testid="active-rollouts"] a[href="/rollouts/{rollout_id}/"]')
    page.wait_for_selector('[data-testid="wave-chart"] .main-svg')
    page.goto(f"{rollout_server.url}/rollouts/")
    assert page.locator('[data-testid="rollout-table"] tbody tr').count() == 1
    screenshot(page, "rollout-list")

    # a viewer sees the live page but no action button, and no "New rollout"
    viewer = new_page(width=820, height=1180)
    sign_in(viewer, rollout_server, "vera")
    viewer.goto(f"{rollout_server.url}/rollouts/{rollout_id}/")
    viewer.wait_for_selector('[data-testid="live-state"].live')
    assert viewer.locator('[data-testid="rollout-actions"]').count() == 0
    assert viewer.locator("[data-testid^=action-]").count() == 0
    viewer.goto(f"{rollout_server.url}/rollouts/")
    assert viewer.locator('[data-testid="new-rollout"]').count() == 0
