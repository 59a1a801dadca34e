"""`manage.py runserver` serves the live pages' websockets (Daphne), and on the embedded default it receives
the live updates other processes relay, as `manage.py serve` does."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile

import pytest
import requests

from telemetry.services import telemetry_ingest_batch
from tests.core.test_channels_relay import LAYER, _receive_until, _socket
from tests.factories import DeviceFactory, make_user
from tests.processes import free_port, wait_for_port
from tests.telemetry.helpers import envelope

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


@pytest.fixture
def runserver(processes, settings):
    """`manage.py runserver` on the embedded channel layer; this process plays the bridge."""
    directory = tempfile.mkdtemp(prefix="fd-rs-")  # short: a UNIX socket path has ~100 characters
    relay = f"{directory}/relay.sock"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": LAYER, "CONFIG": {"relay_socket": relay}}}
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                                   "LOCATION": f"{directory}/data/cache"}}  # fmt: skip
    port = free_port()
    proc = processes("web", "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}",
                     REDIS_URL="", CHANNEL_RELAY_SOCKET=relay, DEBUG="true",
                     FOGDECK_DATA_DIR=f"{directory}/data")  # fmt: skip
    wait_for_port(port, timeout=30)
    yield port, proc
    proc.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_runserver_serves_websockets_and_the_updates_other_processes_relay(runserver):
    port, proc = runserver
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).headers["X-Request-ID"]
    device = DeviceFactory()
    with _socket(port, f"/ws/devices/{device.pk}/", make_user("rita", "viewer")) as ws:
        telemetry_ingest_batch([envelope(device.uid, ts=dt.datetime.now(dt.UTC), p95=42.5)])
        item = _receive_until(ws, lambda i: i.get("p95_ms") == 42.5)
    assert item["model"] == "demo-classifier", proc.output()[-2000:]
    assert "Daphne" in proc.output()
