"""Every websocket route, through the real ASGI application: anonymous users, users without a role and
foreign origins are refused; a viewer is let in. Routes are read from the routing table, so a new
consumer is covered the day it is added (path parameters are filled with an object that exists)."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client

from config.asgi import application
from config.routing import websocket_urlpatterns
from tests.factories import DeviceFactory, make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ROUTES = [str(pattern.pattern) for pattern in websocket_urlpatterns]


@pytest.fixture(autouse=True)
def private_channel_layer(settings):
    layers = django_settings.CHANNEL_LAYERS
    if layers["default"]["BACKEND"].startswith("channels_redis"):
        config = {**layers["default"]["CONFIG"], "prefix": "fogdeck-test-security-ws"}
        settings.CHANNEL_LAYERS = {"default": {**layers["default"], "CONFIG": config}}


@pytest.fixture(autouse=True)
def a_rollout(published_version):
    """A rollout for the /ws/rollouts/{id}/ route to name."""
    from audit.actors import Actor
    from deployments.services.rollout_drafts import rollout_create

    device = DeviceFactory()
    plan = {"target": {"devices": [device.pk]}, "waves": [{"percent": 100}], "seed": 1}
    return rollout_create(actor=Actor.system("tests"), version=published_version, plan=plan)


async def concrete(route: str) -> str:
    """`ws/devices/<int:device_id>/` → `/ws/devices/12/` with a device that exists."""
    if "<" not in route:
        return "/" + route
    device = await sync_to_async(DeviceFactory)()
    ids = {"device_id": device.pk}
    rollout = re.search(r"<int:(rollout_id|pk|id)>", route)
    if rollout:
        from deployments.models import Rollout

        ids[rollout.group(1)] = await sync_to_async(lambda: Rollout.objects.values_list("pk", flat=True).first())()
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(ids.get(m.group(1), device.pk)), route)


async def session_cookie(role: str | None) -> bytes:
    def login() -> bytes:
        client = Client()
        client.force_login(make_user(f"ws-{role}", role))
        return f"sessionid={client.cookies['sessionid'].value}".encode()

    return await sync_to_async(login)()


async def connect(path: str, cookie: bytes | None = None, origin: bytes = b"http://testserver") -> tuple[bool, int]:
    headers = [(b"origin", origin), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", cookie))
    socket = WebsocketCommunicator(application, path, headers=headers)
    try:
        connected, code = await socket.connect()
    finally:
        await socket.disconnect()
        await sync_to_async(connections.close_all)()
    return connected, code


async def test_the_routes_include_the_fleet_and_device_sockets():
    assert {"ws/fleet/", "ws/devices/<int:device_id>/"} <= set(ROUTES)


@pytest.mark.parametrize("route", ROUTES)
async def test_anonymous_users_are_refused(route):
    connected, code = await connect(await concrete(route))
    assert not connected and code == 4401


@pytest.mark.parametrize("route", ROUTES)
async def test_users_without_a_role_are_refused(route):
    connected, code = await connect(await concrete(route), await session_cookie(None))
    assert not connected and code == 4401


@pytest.mark.parametrize("route", ROUTES)
async def test_a_foreign_origin_is_refused_even_with_a_session(route):
    connected, _ = await connect(await concrete(route), await session_cookie("viewer"), origin=b"http://evil.example")
    assert not connected


@pytest.mark.parametrize("route", ROUTES)
async def test_a_viewer_is_let_in(route):
    connected, _ = await connect(await concrete(route), await session_cookie("viewer"))
    assert connected
