from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core import metrics
from core.roles import VIEWER, has_role
from core.stream_watchers import stream_watch, watch_while_open
from protocol.streams import FLEET_GROUP


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Streams fleet-wide events (device online/offline) to signed-in users; anonymous sockets are closed."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not await _can_view(user):
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        self._joined = True
        metrics.WEBSOCKETS.labels(FLEET_GROUP).inc()
        await sync_to_async(stream_watch)([FLEET_GROUP])  # producers skip the fleet group while no page is open
        self._watching = asyncio.ensure_future(watch_while_open([FLEET_GROUP]))
        await self.accept()

    async def disconnect(self, code: int) -> None:
        watching = getattr(self, "_watching", None)
        if watching is not None:
            watching.cancel()
        await self.channel_layer.group_discard(FLEET_GROUP, self.channel_name)
        if getattr(self, "_joined", False):
            metrics.WEBSOCKETS.labels(FLEET_GROUP).dec()

    async def device_status(self, event: dict[str, Any]) -> None:
        await self.send_json(event["payload"])


async def _can_view(user: Any) -> bool:
    return await sync_to_async(has_role)(user, VIEWER)
