"""Live updates on the embedded default: the channel layer is in memory, yet telemetry ingested and rollout
actions taken in another process (here, the test process playing the bridge and the worker) reach a browser's
websocket on `manage.py serve` through the relay socket."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
import tempfile
import time

import pytest
from django.test import Client
from websockets.sync.client import connect

from audit.actors import Actor
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_pause, rollout_start
from telemetry.services import telemetry_ingest_batch
from tests.factories import DeviceFactory, SiteFactory, make_user
from tests.processes import free_port, wait_for_port
from tests.telemetry.helpers import envelope

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]
LAYER = "core.channels_relay.RelayedInMemoryChannelLayer"


@pytest.fixture
def embedded_server(processes, settings):
    """`manage.py serve` with no REDIS_URL (in-memory layer + relay); this process relays to it."""
    directory = tempfile.mkdtemp(prefix="fd-relay-")  # short: a UNIX socket path has ~100 characters
    relay = f"{directory}/relay.sock"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": LAYER, "CONFIG": {"relay_socket": relay}}}
    # the embedded default's shared file cache, as every process there has it: the server's consumers mark
    # the groups they watch in it, and this process (the producer) reads them there
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                                   "LOCATION": f"{directory}/data/cache"}}  # fmt: skip
    port = free_port()
    proc = processes("web", "manage.py", "serve", "--port", str(port), "--no-broker",
                     REDIS_URL="", CHANNEL_RELAY_SOCKET=relay, DEBUG="true",
                     FOGDECK_DATA_DIR=f"{directory}/data")  # fmt: skip
    wait_for_port(port, timeout=30)
    yield port, proc
    proc.stop()
    shutil.rmtree(directory, ignore_errors=True)


def _socket(port: int, path: str, user) -> object:
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return connect(
        f"ws://127.0.0.1:{port}{path}", additional_headers={"Cookie": cookie}, origin=f"http://127.0.0.1:{port}"
    )


def _receive_until(ws, predicate, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        for item in message.get("items", []):
            if predicate(item):
                return item


def test_telemetry_from_another_process_reaches_the_browser_socket(embedded_server):
    port, proc = embedded_server
    device = DeviceFactory()
    with _socket(port, f"/ws/devices/{device.pk}/", make_user("vic", "viewer")) as ws:
        telemetry_ingest_batch([envelope(device.uid, ts=dt.datetime.now(dt.UTC), p95=77.5)])
        item = _receive_until(ws, lambda i: i.get("p95_ms") == 77.5)
    assert item["model"] == "demo-classifier", proc.output()[-2000:]


def test_a_rollout_action_in_another_process_reaches_the_rollout_socket(embedded_server, published_version):
    port, _ = embedded_server
    site = SiteFactory()
    for _ in range(3):
        DeviceFactory(site=site, tags=["relay"])
    plan = {"target": {"filter": {"tag": "relay"}}, "waves": [{"percent": 100}], "rate_per_minute": 600}
    rollout = rollout_create(actor=Actor.system("tests"), version=published_version, plan=plan)
    rollout_start(actor=Actor.system("tests"), rollout=rollout)
    with _socket(port, f"/ws/rollouts/{rollout.pk}/", make_user("vic", "viewer")) as ws:
        rollout_pause(actor=Actor.system("tests"), rollout=rollout, reason="relay check")
        item = _receive_until(ws, lambda i: i.get("kind") == "progress" and i["status"] == "paused")
    assert item["status_reason"] == "relay check"


def test_a_relay_connection_cancelled_with_the_servers_loop_logs_no_error(caplog):
    """Ctrl-C on the demo ends the web server's loop (SystemExit) with producers still connected to the
    relay: their handlers are cancelled, which asyncio would print as an error in a stream callback."""
    from core import channels_relay

    directory = tempfile.mkdtemp(prefix="fd-relay-")
    path = f"{directory}/relay.sock"

    async def serve_then_exit() -> None:
        await channels_relay.relay_serve(path)
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"group": "nobody", "message": {"type": "noop"}}\n')
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is back in readline() on the open connection
        raise SystemExit(143)

    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"), pytest.raises(SystemExit):
            asyncio.run(serve_then_exit())
    finally:
        channels_relay._server_loop = None
        shutil.rmtree(directory, ignore_errors=True)
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
