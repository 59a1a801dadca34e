"""Channel-layer group names and websocket message types shared by producers and consumers."""

from __future__ import annotations

FLEET_GROUP = "fleet"
DEVICE_STATUS_EVENT = "device.status"


def device_group(device_id: int) -> str:
    return f"device.{device_id}"
