"""The quick start's main journey, as a newcomer meets it: `manage.py demo` on the embedded default.

The demo runs as it does for `./dev demo` (SQLite, the in-process MQTT broker, the in-memory channel
layer with its relay, Celery on the filesystem transport), in a data directory of its own and on free
ports, with a small simulated fleet, whichever services the rest of the suite uses: no service variable
reaches it. Headless Chromium then does what the operator does: sign in, plan a rollout of the demo
model's next version in the wizard, preview it, start it, watch its page update live until it completes,
and open a device of the rollout to see the new version and its latency arriving. Screenshots go to
test-artifacts/screenshots/quickstart-*.png.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.processes import ROOT, free_port

from .conftest import ARTIFACTS, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

DEVICES = 30  # enough for a canary and a second wave on every hardware profile, small enough for 2 cores
PASSWORD = "quick-start-operator-1"
MODEL = "demo-classifier"
NEXT_VERSION = 2  # the demo model's next version after the baseline v1
# What a newcomer's shell does not have: the services (the point of the test), and the settings the test
# suite exports for its own servers (`./dev demo` runs with DEBUG=true and relies on its defaults).
NOT_INHERITED = (
    "DATABASE_URL", "REDIS_URL", "MQTT_URL", "MQTT_PUBLIC_URL", "S3_ENDPOINT_URL", "S3_BUCKET",
    "SECRET_KEY", "SECRET_KEY_FILE", "ALLOWED_HOSTS", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
    "PUBLIC_BASE_URL", "SIGNING_KEY", "SIGNING_KEY_FILE", "SIGNING_KEY_DIR", "CHANNEL_RELAY_SOCKET",
    "TEST_DATABASE_NAME", "CELERY_TASK_ALWAYS_EAGER", "DEBUG",
)  # fmt: skip


@dataclass
class Demo:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback server
            return response.status == 200
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 40) -> None:
    """SIGTERM to the demo's whole process group (web server, worker and its pool, bridge, simulator),
    as Ctrl-C would; SIGKILL to whatever still runs after `timeout`."""
    pgid = process.pid  # start_new_session: the demo leads its own group, and its children stay in it
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # reap the leader first: until it is waited for, the exited leader is a zombie that still counts
        # as a member of its group, and the teardown waited out the whole timeout for nothing
        if process.poll() is not None and not _group_alive(pgid):
            break
        time.sleep(0.2)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(10)
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture
def demo() -> Iterator[Demo]:
    # a short path: the channel relay's Unix socket lives in the data directory (~100 characters at most)
    data_dir = Path(tempfile.mkdtemp(prefix="fogdeck-quickstart-"))
    port, broker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(
        DEBUG="true",
        DEMO_PASSWORD=PASSWORD,
        FOGDECK_DATA_DIR=str(data_dir),
        EMBEDDED_MQTT_PORT=str(broker_port),
        PYTHONUNBUFFERED="1",
    )
    log = data_dir / "demo.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "demo", "--devices", str(DEVICES), "--port", str(port)],
            cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    stack = Demo(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 180  # migrate, seed, generate and sign the sample models, then serve
        while not _answers(f"{stack.url}/login/"):
            assert process.poll() is None, f"the demo exited ({process.returncode}):\n{stack.output()}"
            assert time.monotonic() < deadline, f"the demo did not serve within 180 s:\n{stack.output()}"
            time.sleep(0.5)
        yield stack
    finally:
        _stop_group(process)
        survivors = _group_alive(process.pid)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, ARTIFACTS.parent / "quickstart-demo.log")  # the console, for a failure's reader
        shutil.rmtree(data_dir, ignore_errors=True)
        assert not survivors, "a process of the demo outlived it"


def number(text: str) -> int:
    match = re.search(r"\d+", text)
    assert match, f"no number in {text!r}"
    return int(match.group())


def wave_rows(page: Page) -> list[list[str]]:
    """The wave table as a person reads it: [wave, status, devices, online at dispatch, jobs] per row."""
    rows: list[list[str]] = page.locator("#wave-rows tr").evaluate_all(
        "rows => rows.map(row => Array.from(row.cells, cell => cell.innerText.trim()))"
    )
    return rows


def shown_points(page: Page, chart: str, trace: str) -> tuple[list[dt.datetime], list[float]]:
    """A chart trace's points (UTC, naive like plotly's axis) and values."""
    xs, ys = page.evaluate(
        "([id, name]) => { const t = document.getElementById(id).data.find(t => t.name === name);"
        " return t ? [t.x, t.y] : [[], []]; }",
        [chart, trace],
    )
    return [dt.datetime.fromisoformat(x).astimezone(dt.UTC).replace(tzinfo=None) for x in xs], ys


def assert_on_screen(page: Page, chart: str, times: list[dt.datetime]) -> None:
    """The chart's time axis shows these points: drawn, not just held in its data."""
    low, high = (dt.datetime.fromisoformat(v) for v in page.evaluate(f"() => document.getElementById('{chart}')"
                                                                     "._fullLayout.xaxis.range"))  # fmt: skip
    assert times and low <= min(times) and max(times) <= high, (low, high, times)


def test_quick_start_operator_rolls_out_the_next_version_and_watches_it_live(demo: Demo, new_page: Any) -> None:
    started = time.monotonic()
    page = new_page()
    server_errors: list[str] = []
    page.on("response", lambda r: server_errors.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # "Create the rollout and send the first wave now?"

    # sign in with the password the demo printed
    page.goto(f"{demo.url}/login/")
    page.fill('input[name="username"]', "operator")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{demo.url}/")

    # the fleet overview fills in as the simulated devices connect (reloaded as a person would)
    online, seen = 0, -1
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen, online = online, number(page.locator('a.tile[href="/devices/?status=online"]').inner_text())
        if online == seen and online >= DEVICES * 0.8:  # the demo keeps 5 % offline by design; settled
            break
        page.wait_for_timeout(2000)
        page.reload()
    assert online >= DEVICES * 0.8, f"{online} of {DEVICES} online\n{demo.output()}"
    screenshot(page, "quickstart-overview")

    # the wizard: the next version of the demo model to the online devices; a 2-device canary with a
    # 10 s bake on errors, then everyone
    page.click('nav a[href="/rollouts/"]')
    page.click('[data-testid="new-rollout"]')
    option = page.locator('select[name="version"] option', has_text=re.compile(rf"^{MODEL} v{NEXT_VERSION}\b"))
    label = option.first.inner_text()
    page.select_option('select[name="version"]', label=label)
    page.fill('input[name="name"]', "quick start")
    page.fill('input[name="target_filter"]', "status=online")
    page.fill('input[name="wave0_amount"]', "2")
    page.select_option('select[name="wave0_unit"]', "count")
    page.fill('input[name="wave1_amount"]', "100")
    page.fill('input[name="wave2_amount"]', "")
    page.check('input[name="health_enabled"]')
    # this journey is about seeing a rollout through, not about v2's speed (it is the slower one)
    page.fill('input[name="health_max_p95_latency_ratio"]', "")
    page.fill('input[name="health_max_error_rate"]', "0.2")
    page.fill('input[name="health_min_samples"]', "10")
    page.fill('input[name="health_bake_seconds"]', "10")
    page.fill('input[name="rate_per_minute"]', "6000")
    page.click('[data-testid="preview-button"]')
    preview = page.locator('[data-testid="preview"]')
    assert f"{MODEL} v{NEXT_VERSION}" in preview.inner_text()
    sizes = [int(s) for s in page.locator('[data-testid="preview-waves"] tbody td:nth-child(2)').all_inner_texts()]
    assert len(sizes) == 2 and sizes[0] == 2 and sizes[1] >= 10, sizes
    online = page.locator('[data-testid="preview-waves"] [data-testid="wave-online"]').all_inner_texts()
    assert online == [f"{size} of {size}" for size in sizes], online  # the demo fleet is connected
    excluded = set(page.locator('[data-testid="excluded-devices"] tbody tr td:first-child').all_inner_texts())
    screenshot(page, "quickstart-wizard-preview")

    page.click('[data-testid="start-button"]')
    page.wait_for_url(re.compile(r".*/rollouts/\d+/$"))
    rollout_url = page.url
    assert "started" in page.locator("main").inner_text()
    page.wait_for_selector('[data-testid="live-state"].live')
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded
    first_rows = wave_rows(page)
    assert [row[2:3] for row in first_rows] == [[str(s)] for s in sizes], first_rows
    first_points = int(page.locator('[data-testid="latency-chart"]').get_attribute("data-points") or 0)

    # live: the wave table, the wave chart and the latency chart change under the person's eyes
    try:
        page.wait_for_function(
            "n => Number(document.querySelector('[data-testid=latency-chart]').dataset.points) > n",
            arg=first_points, timeout=60_000,
        )  # fmt: skip
        page.wait_for_function(
            "n => Number(document.querySelector('[data-testid=latency-chart]').dataset.points) >= n",
            arg=first_points + 4, timeout=60_000,
        )  # fmt: skip
    except Exception as exc:
        raise AssertionError(f"no live point on the latency chart: {exc}\n{demo.output()}") from None
    screenshot(page, "quickstart-rollout-live")
    try:
        page.wait_for_function(
            "() => document.querySelector('[data-testid=rollout-status]').innerText.trim() === 'completed'",
            timeout=150_000,
        )
    except Exception:
        raise AssertionError(f"not completed: {wave_rows(page)}\n{demo.output()}") from None
    assert page.url == rollout_url and page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    last_rows = wave_rows(page)
    assert last_rows != first_rows
    for (_wave, status, size, online, jobs), expected in zip(last_rows, sizes, strict=True):
        assert status == "passed" and size == str(expected) and jobs == f"SUCCEEDED {expected}", last_rows
        assert online.isdigit() and int(online) <= expected, last_rows  # reachable when the wave started
    bars = page.evaluate(
        "() => document.getElementById('wave-chart').data.map(t => [t.name, t.x])"
    )  # the stacked bars: devices per job state and wave
    assert bars == [["SUCCEEDED", sizes]], bars
    canary, _ = shown_points(page, "cohort-chart", "canary (telemetry)")
    assert len(canary) >= 4, canary
    judged, _ = shown_points(page, "cohort-chart", "canary (gate)")  # each health check's canary p95
    assert judged, "no health check on the chart"
    assert "health" in page.locator("#gate-rows").inner_text()
    page.wait_for_timeout(500)  # plotly's last redraw before the screenshot (not an assertion)
    assert_on_screen(page, "cohort-chart", canary)
    screenshot(page, "quickstart-rollout-completed")

    # a device of the rollout: the new version installed, its latency chart receiving points
    page.goto(f"{demo.url}/devices/?status=online&runtime=onnxruntime")
    links = page.locator('[data-testid="device-table"] tbody a[href^="/devices/"]')
    uid = next(u.strip() for u in links.all_inner_texts() if u.strip() not in excluded)
    page.click(f'[data-testid="device-table"] tbody a:text-is("{uid}")')
    page.wait_for_selector('[data-testid="live-state"].live')
    installed = page.locator('[data-testid="installed"] tbody').inner_text()
    assert re.search(rf"{MODEL}\s+v{NEXT_VERSION}\b", installed), installed
    p95 = f"{MODEL} v{NEXT_VERSION} p95"
    shown = "() => document.getElementById('latency-chart').data.map(t => [t.name, t.x, t.y])"
    before = {name: xs for name, xs, _ys in page.evaluate(shown)}.get(p95, [])
    try:  # a point per telemetry interval (10 s on the demo): a newer sample than any shown, two for a line
        page.wait_for_function(
            """([name, latest]) => {
                 const trace = document.getElementById('latency-chart').data.find(t => t.name === name);
                 return trace && trace.x.length >= 2 && trace.x[trace.x.length - 1] > latest;
               }""",
            arg=[p95, before[-1] if before else ""], timeout=60_000,
        )  # fmt: skip
    except Exception as exc:
        raise AssertionError(f"no live latency on {uid}'s page: {exc}\n{demo.output()}") from None
    times, ys = shown_points(page, "latency-chart", p95)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sorted(times))]
    assert all(gap >= 1 for gap in gaps) and all(y > 0 for y in ys), (times, ys)  # a point per sample, in ms
    assert "live · updated" in page.locator('[data-testid="live-state"]').inner_text()
    page.wait_for_timeout(500)  # plotly's redraw (not an assertion)
    assert_on_screen(page, "latency-chart", times)  # the live points are on the chart, not off its axis
    screenshot(page, "quickstart-device")

    assert not server_errors, server_errors
    assert not script_errors, script_errors
    console = demo.log.read_text(errors="replace")  # behind the pages: no process of the demo failed
    assert "Traceback" not in console and "Unrecoverable error" not in console, demo.output(20_000)
    print(f"quick start journey: {time.monotonic() - started:.0f} s after the demo served")
