"""`manage.py demo` as a newcomer runs it: the embedded default (no service variables) in a data directory
of its own. The URL and password come last in start-up and within the first 50 lines, no third-party INFO
scrolls them away, the status line shows telemetry from the preinstalled baseline without any rollout,
and Ctrl-C (SIGINT to the demo alone) stops every process it started and prints the banner again.

The same on both test configurations: the demo is the embedded default whatever the suite runs on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.processes import ROOT, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PASSWORD = "demo-e2e-password-1"
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "MQTT_URL", "LOG_LEVEL", "S3_ENDPOINT_URL", "S3_BUCKET")


def _telemetry_rows(text: str) -> int:
    rates = re.findall(r"\| telemetry ([\d,]+) rows/min", text)
    return int(rates[-1].replace(",", "")) if rates else 0


def test_the_demo_console_shows_the_banner_early_and_quietly_and_ctrl_c_stops_everything(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env.update(
        FOGDECK_DATA_DIR=str(tmp_path / "d"), EMBEDDED_MQTT_PORT=str(free_port()), DEBUG="true",
        DEMO_PASSWORD=PASSWORD, PYTHONUNBUFFERED="1",
    )  # fmt: skip
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "manage.py", "demo", "--devices", "30", "--port", str(port), "--status-every", "3"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    descendants: set[int] = set()

    def output() -> str:
        return log.read_text(errors="replace")

    def remember_children() -> bool:
        descendants.update(p.pid for p in psutil.Process(demo.pid).children(recursive=True))
        return demo.poll() is None

    try:
        wait_until(lambda: remember_children() and "[demo " in output(), 180, lambda: output()[-3000:])
        wait_until(lambda: remember_children() and _telemetry_rows(output()) > 0, 90, lambda: output()[-3000:])
        remember_children()
        lines = output().splitlines()
        url = f"http://127.0.0.1:{port}/"
        banner_at = next(i for i, line in enumerate(lines) if line == f"Fogdeck demo: {url}")
        assert banner_at < 50 and f"password: {PASSWORD}" in lines[banner_at + 1]
        first_status = next(i for i, line in enumerate(lines) if line.startswith("[demo "))
        # the banner is the last thing start-up prints: after every "==>" step, before the first status line
        assert max(i for i, line in enumerate(lines) if line.startswith("==>")) < banner_at < first_status
        assert not [line for line in lines if re.search(r" INFO (amqtt|transitions)", line)]
        assert "rollouts active 0" in lines[first_status]  # the telemetry comes from the baseline, not a rollout
        assert len(descendants) >= 3  # the worker (and its pool), the bridge, the simulator

        demo.send_signal(signal.SIGINT)
        demo.wait(60)

        def running(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        def all_gone() -> bool:
            return not [pid for pid in descendants if running(pid)]

        wait_until(all_gone, 30, lambda: f"still running: {[p for p in descendants if running(p)]}")
        tail = output().split("Fogdeck demo stopped.", 1)
        assert len(tail) == 2, output()[-2000:]
        assert f"Fogdeck demo: {url}" in tail[1] and f"password: {PASSWORD}" in tail[1]
        assert "Traceback" not in output()
    finally:
        for pid in [demo.pid, *descendants]:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        demo.wait(10)
