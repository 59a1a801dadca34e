"""Channel-layer group names and websocket message types shared by producers and consumers."""

from __future__ import annotations

from typing import TypedDict

FLEET_GROUP = "fleet"
DEVICE_STATUS_EVENT = "device.status"


def device_group(device_id: int) -> str:
    return f"device.{device_id}"


# --- telemetry streams (coalesced: at most one message per group per flush interval) -------------
TELEMETRY_EVENT = "telemetry.update"


def rollout_group(rollout_id: int) -> str:
    """The group a rollout page listens to; rollout services send coalesced wave figures to it."""
    return f"rollout.{rollout_id}"


class TelemetryPoint(TypedDict):
    """The latest figures of one (model, version) on one device, as the device page charts them."""

    model: str
    version: int
    ts: str  # ISO 8601, end of the interval
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


class StreamMessage(TypedDict):
    """What a telemetry websocket receives: the latest item per key since the previous message."""

    group: str
    items: list[dict[str, object]]
