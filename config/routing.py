"""Websocket routes (Channels)."""

from __future__ import annotations

from django.urls import path

from fleet.consumers import FleetConsumer
from telemetry.routing import websocket_urlpatterns as telemetry_websockets

websocket_urlpatterns = [
    path("ws/fleet/", FleetConsumer.as_asgi()),
    *telemetry_websockets,
]
