"""`/ws/devices/{id}/` through the real ASGI application: session auth, groups, coalesced telemetry."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client

from config.asgi import application
from tests.factories import DeviceFactory, make_user
from tests.telemetry.helpers import envelope

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
def private_channel_layer(settings):
    """The configured layer (Redis when REDIS_URL is set), under a prefix no other test run shares."""
    layers = django_settings.CHANNEL_LAYERS
    if layers["default"]["BACKEND"].startswith("channels_redis"):
        config = {**layers["default"]["CONFIG"], "prefix": "fogdeck-test-telemetry"}
        settings.CHANNEL_LAYERS = {"default": {**layers["default"], "CONFIG": config}}


def _session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def _socket(path: str, cookie: bytes | None = None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, path, headers=headers)


async def _close_db() -> None:
    await sync_to_async(connections.close_all)()


async def test_anonymous_device_socket_is_closed_with_4401():
    device = await sync_to_async(DeviceFactory)()
    socket = _socket(f"/ws/devices/{device.pk}/")
    connected, code = await socket.connect()
    assert not connected and code == 4401
    await socket.disconnect()  # end the application task here, not by cancellation at loop close
    await _close_db()


async def test_unknown_device_socket_is_closed_with_4404():
    cookie = await sync_to_async(lambda: _session_cookie(make_user("vic", "viewer")))()
    socket = _socket("/ws/devices/999999/", cookie)
    connected, code = await socket.connect()
    assert not connected and code == 4404
    await socket.disconnect()
    await _close_db()


async def test_user_without_a_role_is_refused():
    cookie = await sync_to_async(lambda: _session_cookie(make_user("nobody", None)))()
    device = await sync_to_async(DeviceFactory)()
    socket = _socket(f"/ws/devices/{device.pk}/", cookie)
    connected, code = await socket.connect()
    assert not connected and code == 4401
    await socket.disconnect()
    await _close_db()


async def test_ingested_telemetry_reaches_the_device_socket_as_one_coalesced_message(web_server_layer):
    from telemetry.services import telemetry_ingest_batch

    cookie = await sync_to_async(lambda: _session_cookie(make_user("vic", "viewer")))()
    device, other = await sync_to_async(DeviceFactory)(), await sync_to_async(DeviceFactory)()
    socket = _socket(f"/ws/devices/{device.pk}/", cookie)
    connected, _ = await socket.connect()
    assert connected
    now = dt.datetime.now(dt.UTC)
    batch = [
        envelope(device.uid, ts=now - dt.timedelta(seconds=2), p95=41.0),
        envelope(device.uid, ts=now - dt.timedelta(seconds=1), p95=42.5, version=2),
        envelope(other.uid, ts=now, p95=99.0),
    ]
    await sync_to_async(telemetry_ingest_batch)(batch)

    message = await socket.receive_json_from(timeout=5)
    assert message["type"] == "telemetry"
    assert {(i["version"], i["p95_ms"]) for i in message["items"]} == {(1, 41.0), (2, 42.5)}
    assert await socket.receive_nothing(timeout=0.5)  # the other device's figures went to its own group
    await socket.disconnect()
    await _close_db()


async def test_open_sockets_are_counted_by_group_kind_in_the_metrics():
    from prometheus_client import REGISTRY

    def open_device_groups() -> float:
        return REGISTRY.get_sample_value("fogdeck_websocket_groups", {"kind": "device"}) or 0.0

    cookie = await sync_to_async(lambda: _session_cookie(make_user("vic", "viewer")))()
    device = await sync_to_async(DeviceFactory)()
    before = open_device_groups()
    socket = _socket(f"/ws/devices/{device.pk}/", cookie)
    connected, _ = await socket.connect()
    assert connected and open_device_groups() == before + 1
    refused = _socket(f"/ws/devices/{device.pk}/")  # anonymous: closed, never counted
    assert not (await refused.connect())[0] and open_device_groups() == before + 1
    await socket.disconnect()
    assert open_device_groups() == before
    await _close_db()
