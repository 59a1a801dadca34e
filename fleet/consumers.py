from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core.roles import VIEWER, has_role
from protocol.streams import FLEET_GROUP


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Streams fleet-wide events (device online/offline) to signed-in users; anonymous sockets are closed."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not await _can_view(user):
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(FLEET_GROUP, self.channel_name)

    async def device_status(self, event: dict[str, Any]) -> None:
        await self.send_json(event["payload"])


async def _can_view(user: Any) -> bool:
    from asgiref.sync import sync_to_async

    return await sync_to_async(has_role)(user, VIEWER)
