"""Websocket consumers for coalesced telemetry streams (`/ws/devices/{id}/`; the rollout page's
`/ws/rollouts/{id}/` is deployments/consumers.py, on the same base)."""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core import metrics
from core.roles import VIEWER, has_role
from core.stream_watchers import stream_watch, watch_while_open
from fleet.models import Device
from protocol.streams import device_group

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class StreamConsumer(AsyncJsonWebsocketConsumer):
    """Signed-in viewers (session auth) join the groups `stream_groups()` names and receive what producers
    send there; anonymous sockets are closed with 4401, unknown objects with 4404.

    Producers offer figures with `telemetry.streaming.stream_offer({group: {key: item}})`, which coalesces
    them (at most ~5 messages per group per second).
    """

    groups_joined: list[str]
    _watching: asyncio.Task[None] | None = None

    async def stream_groups(self) -> list[str] | None:
        raise NotImplementedError

    async def connect(self) -> None:
        self.groups_joined = []
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not await sync_to_async(has_role)(user, VIEWER):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        groups = await self.stream_groups()
        if groups is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            metrics.WEBSOCKETS.labels(metrics.websocket_kind(group)).inc()
        self.groups_joined = groups
        await sync_to_async(stream_watch)(groups)  # before accept: the first update after it is not skipped
        self._watching = asyncio.ensure_future(watch_while_open(groups))
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self._watching is not None:
            self._watching.cancel()
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)
            metrics.WEBSOCKETS.labels(metrics.websocket_kind(group)).dec()

    async def telemetry_update(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "telemetry", **event["payload"]})

    async def device_status(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "status", **event["payload"]})


class DeviceConsumer(StreamConsumer):
    """`/ws/devices/{id}/`: the device's latest telemetry per (model, version), at most 5 messages a second."""

    async def stream_groups(self) -> list[str] | None:
        device_id = int(self.scope["url_route"]["kwargs"]["device_id"])
        if not await Device.objects.filter(pk=device_id).aexists():
            return None
        return [device_group(device_id)]
