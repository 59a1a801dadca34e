"""Liveness and readiness: /livez and /readyz for the web app (/healthz kept), heartbeat files for the
worker, beat and bridge (`python -m core.heartbeat check NAME`, the docker-compose healthchecks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml
from django.test import override_settings

from core import heartbeat
from tests.core.test_health import configured_broker  # noqa: F401 - a fixture
from tests.processes import ROOT, wait_until

pytestmark = pytest.mark.django_db


def test_livez_answers_without_touching_a_backend(client, django_assert_num_queries):
    with override_settings(MQTT_HOST="127.0.0.1", MQTT_PORT=1), django_assert_num_queries(0):
        response = client.get("/livez")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_ready_when_every_backend_answers(client, configured_broker):  # noqa: F811
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert set(response.json()["checks"]) == {"database", "channel_layer", "mqtt", "storage"}
    assert client.get("/healthz").status_code == 200  # the old probe still works


def test_readyz_is_503_naming_the_backend_that_is_down(client):
    with override_settings(MQTT_HOST="127.0.0.1", MQTT_PORT=1):
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["down"] == ["mqtt"]


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz"])
def test_probes_are_not_redirected_to_https(client, path, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get(path).status_code != 301


def check(name: str, directory: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEARTBEAT_DIR": directory}
    return subprocess.run(
        [sys.executable, "-m", "core.heartbeat", "check", name, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_heartbeat_check_passes_only_while_the_file_is_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTBEAT_DIR", str(tmp_path))
    missing = check("bridge", str(tmp_path))
    assert missing.returncode == 1 and "no heartbeat" in missing.stdout
    heartbeat.beat("bridge")
    fresh = check("bridge", str(tmp_path))
    assert fresh.returncode == 0 and "bridge: ready" in fresh.stdout
    old = time.time() - 120
    os.utime(heartbeat.heartbeat_path("bridge"), (old, old))
    stale = check("bridge", str(tmp_path))
    assert stale.returncode == 1 and "s ago (more than 60s)" in stale.stdout
    assert check("bridge", str(tmp_path), "--max-age", "300").returncode == 0
    heartbeat.clear("bridge")
    assert check("bridge", str(tmp_path)).returncode == 1


def test_worker_and_beat_mark_themselves_ready(processes, tmp_path):
    """A real Celery worker with beat: both heartbeat files appear and the compose check passes."""
    directory = str(tmp_path / "hb")
    worker = processes(
        "worker", "-m", "celery", "-A", "config", "worker", "--beat", "--concurrency", "1", "--loglevel", "WARNING",
        "-s", str(tmp_path / "beat-schedule"), "-n", "probes@%h", HEARTBEAT_DIR=directory,
    )  # fmt: skip
    wait_until(
        lambda: check("worker", directory).returncode == 0 and check("beat", directory).returncode == 0,
        90,
        lambda: worker.output()[-3000:],
        interval=1,
    )


def test_compose_healthchecks_use_the_probes():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("worker", "beat", "bridge"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "core.heartbeat", "check", name]
