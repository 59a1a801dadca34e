"""Device presence: the stale sweep (Celery beat) and the fleet websocket on the configured channel layer."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.utils import timezone

from audit.actors import Actor
from config.asgi import application
from fleet.consumers import FleetConsumer
from fleet.models import Device
from fleet.services import device_mark_seen
from fleet.tasks import mark_stale_devices_offline
from tests.factories import DeviceFactory, make_user, side_effects

pytestmark = pytest.mark.django_db(transaction=True)


async def close_db_connections() -> None:
    """sync_to_async ran the ORM on a worker thread; close its connection so the test DB can be dropped."""
    await sync_to_async(connections.close_all)()


def test_stale_sweep_marks_silent_devices_offline_and_audits_it(assert_audited):
    fresh, silent = DeviceFactory(), DeviceFactory()
    now = timezone.now()
    Device.objects.filter(pk=fresh.pk).update(status="online", last_seen=now)
    Device.objects.filter(pk=silent.pk).update(status="online", last_seen=now - dt.timedelta(hours=1))
    assert mark_stale_devices_offline.apply().get() == 1
    assert Device.objects.get(pk=silent.pk).status == "offline"
    assert Device.objects.get(pk=fresh.pk).status == "online"
    entry = assert_audited("device", "", "device.mark_stale_offline", actor="system:celery:stale-sweep")
    assert entry.changes["devices"] == [silent.uid]
    assert mark_stale_devices_offline.apply().get() == 0  # a re-run changes nothing


@pytest.mark.django_db(transaction=False)
def test_mark_seen_schedules_the_broadcast_on_commit(django_capture_on_commit_callbacks, assert_audited):
    device = DeviceFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        device_mark_seen(actor=Actor.device(device.uid), uid=device.uid, online=True)
    assert len(side_effects(callbacks)) == 2  # the broadcast and the resolve-cache invalidation
    assert_audited("device", device.pk, "device.online", actor=f"device:{device.uid}")
    with django_capture_on_commit_callbacks() as callbacks:  # a heartbeat that changes nothing broadcasts nothing
        device_mark_seen(actor=Actor.device(device.uid), uid=device.uid, online=True)
    assert callbacks == []


@pytest.mark.asyncio
async def test_fleet_socket_refuses_anonymous_users():
    communicator = WebsocketCommunicator(FleetConsumer.as_asgi(), "/ws/fleet/")
    communicator.scope["user"] = AnonymousUser()
    connected, code = await communicator.connect()
    assert not connected and code == 4401


@pytest.mark.asyncio
async def test_fleet_socket_streams_device_status_changes(web_server_layer):
    user = await sync_to_async(make_user)("watcher", "viewer")
    device = await sync_to_async(DeviceFactory)()
    communicator = WebsocketCommunicator(FleetConsumer.as_asgi(), "/ws/fleet/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    await sync_to_async(device_mark_seen)(actor=Actor.device(device.uid), uid=device.uid, online=True)
    message = await communicator.receive_json_from(timeout=5)
    assert message["uid"] == device.uid and message["status"] == "online"
    await communicator.disconnect()
    await close_db_connections()


def test_asgi_application_routes_websockets():
    assert "websocket" in application.application_mapping
