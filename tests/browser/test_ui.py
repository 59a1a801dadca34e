"""The operator UI in a real browser: sign in, fleet overview, filtered device list, a live device chart,
the models page; a viewer sees no action buttons. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from audit.actors import Actor
from fleet.models import Device
from fleet.services import device_report_state, group_create
from telemetry.services import telemetry_ingest_batch
from tests.factories import DeviceFactory, SiteFactory, make_user
from tests.telemetry.helpers import envelope

from .conftest import off_loop, screenshot, sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(180)]

SITES = [
    ("Lisbon", "eu-west", 38.7, -9.1),
    ("Oslo", "eu-north", 59.9, 10.7),
    ("Austin", "us-south", 30.3, -97.7),
    ("Singapore", "ap-southeast", 1.35, 103.8),
    ("São Paulo", "sa-east", -23.5, -46.6),
]


def seed_fleet(published_version) -> Device:
    """A small fleet across five sites, one device reporting the published model, with some history."""
    rng = random.Random(6)
    now = dt.datetime.now(dt.UTC)
    sites = [SiteFactory(name=n, region=r, latitude=lat, longitude=lon) for n, r, lat, lon in SITES]
    devices = []
    for i in range(36):
        tier = "fog" if i % 9 == 0 else "edge"
        devices.append(
            DeviceFactory(
                uid=f"{tier}-{SITES[i % 5][1]}-{i:03d}",
                site=sites[i % 5],
                tier=tier,
                arch="x86_64" if tier == "fog" else "aarch64",
                accelerator="npu" if i % 4 == 0 else "none",
                tags=["pilot"] if i % 3 == 0 else [],
            )
        )
    online = [d.pk for d in devices if rng.random() < 0.8]
    Device.objects.filter(pk__in=online).update(status="online", last_seen=now)
    Device.objects.filter(pk=devices[1].pk).update(status="online", last_seen=now - dt.timedelta(hours=2))
    group_create(actor=Actor.system("tests"), name="canary-pool")
    star = devices[5]
    device_report_state(
        actor=Actor.device(star.uid),
        uid=star.uid,
        agent_version="1.0.0",
        state={
            "hardware": {"arch": "aarch64", "cpu": "Cortex-A72 x4", "memory_mb": 2048, "accelerator": "none"},
            "runtimes": [{"name": "onnxruntime", "version": "1.18"}],
            "slots": {"a": {"model": "shape-classifier", "version": 1}, "b": None},
            "active": {"shape-classifier": {"version": 1, "slot": "a"}},
        },
    )
    history = []
    for step in range(30, 0, -1):
        ts = now - dt.timedelta(seconds=10 * step)
        for d in devices[:12]:
            p95 = 18 + rng.random() * 6 + (4 if d.accelerator == "none" else 0)
            history.append(
                envelope(
                    d.uid,
                    ts=ts,
                    model="shape-classifier",
                    version=1,
                    p50=p95 * 0.45,
                    p95=p95,
                    p99=p95 * 1.4,
                    max_ms=p95 * 2,
                    requests=90 + rng.randint(0, 40),
                )
            )
    telemetry_ingest_batch(history)
    return Device.objects.get(pk=star.pk)


def test_operator_signs_in_and_walks_the_main_pages_with_a_live_device_chart(asgi_server, new_page, published_version):
    device = seed_fleet(published_version)
    make_user("olga", "operator")
    expected = set(Device.objects.filter(status="online", tier="fog").values_list("uid", flat=True))
    page = new_page()
    sign_in(page, asgi_server, "olga")

    # fleet overview: counts and the site map (drawn offline by the app's own plotly.js)
    assert page.locator(".tile .n").first.inner_text() == "36"
    page.wait_for_selector('[data-testid="site-map"] .scattergeo')
    screenshot(page, "fleet-overview")

    # device list with a filter kept in the URL
    page.goto(f"{asgi_server.url}/devices/")
    page.select_option('select[name="status"]', "online")
    page.select_option('select[name="tier"]', "fog")
    page.click('[data-testid="device-filters"] button[type="submit"]')
    page.wait_for_url("**/devices/?status=online&tier=fog")  # only the chosen filters, so the URL can be shared
    uids = page.locator('[data-testid="device-table"] tbody tr td a[href^="/devices/"]').all_inner_texts()
    assert uids and set(uids) == expected
    # bulk tagging and grouping are admin changes in the API, so in the UI too: an operator gets no bulk bar
    assert page.locator('[data-testid="bulk-actions"]').count() == 0
    page.goto(f"{asgi_server.url}/devices/?tag=pilot")
    screenshot(page, "device-list")

    # device page: the chart gets new points over the websocket, without a reload
    page.goto(f"{asgi_server.url}/devices/{device.pk}/")
    chart = page.locator('[data-testid="latency-chart"]')
    page.wait_for_selector('[data-testid="live-state"].live')
    before = int(chart.get_attribute("data-points"))
    assert before == 30
    assert "shape-classifier" in page.locator('[data-testid="installed"]').inner_text()
    for step in range(1, 4):  # three quick batches: the coalescer may merge them, the newest figures win
        off_loop(
            telemetry_ingest_batch,
            [
                envelope(
                    device.uid,
                    ts=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=step),
                    model="shape-classifier",
                    version=1,
                    p95=60.0 + step,
                    p50=20,
                    p99=80,
                )
            ],
        )
    page.wait_for_function(
        "n => Number(document.querySelector('[data-testid=latency-chart]').dataset.points) > n", arg=before
    )
    page.wait_for_function(
        "() => { const d = document.querySelector('[data-testid=latency-chart]').data;"
        " return d && d[0].y[d[0].y.length - 1] === 63; }"
    )
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    page.wait_for_timeout(300)  # let plotly finish drawing before the screenshot (not an assertion)
    screenshot(page, "device-detail")

    # models: list, then the version page with compatibility, history and the rollup chart
    page.goto(f"{asgi_server.url}/models/")
    page.click("text=shape-classifier")
    page.wait_for_selector('[data-testid="version-chart"] .main-svg')
    assert "active devices can run v1" in page.locator('[data-testid="compatibility"]').inner_text()
    assert page.locator('[data-testid="upload-form"]').count() == 0  # uploads are for admins, as in the API
    screenshot(page, "model-detail")

    page.goto(f"{asgi_server.url}/audit/?object_type=device")
    assert page.locator('[data-testid="audit-table"] tbody tr').count() > 0
    screenshot(page, "audit-log")


def test_viewer_sees_no_action_buttons_on_a_tablet(asgi_server, new_page, published_version):
    DeviceFactory(uid="edge-viewer-1")
    make_user("vera", "viewer")
    page = new_page(width=820, height=1180)  # a tablet in portrait
    sign_in(page, asgi_server, "vera")
    page.goto(f"{asgi_server.url}/devices/")
    assert page.locator('[data-testid="device-table"]').is_visible()
    assert page.locator('[data-testid="bulk-actions"]').count() == 0
    assert page.locator('input[name="devices"]').count() == 0
    page.goto(f"{asgi_server.url}/models/{published_version.model_id}/")
    assert page.locator('[data-testid="versions"]').is_visible()
    assert page.locator('[data-testid="upload-form"]').count() == 0
    screenshot(page, "model-detail-viewer-tablet")
    # the server refuses a viewer's POST even when crafted by hand (with a valid CSRF token)
    status = page.evaluate(
        """async () => {
            const token = document.cookie.split('; ').find(c => c.startsWith('csrftoken=')).split('=')[1];
            const body = new URLSearchParams({action: 'tag', tag: 'x', devices: '1'});
            const r = await fetch('/devices/bulk/', {method: 'POST', body, headers: {'X-CSRFToken': token}});
            return r.status;
        }"""
    )
    assert status == 403
