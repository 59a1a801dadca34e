"""Websocket routes (Channels)."""

from __future__ import annotations

from django.urls import path

from deployments.routing import websocket_urlpatterns as deployments_websockets
from fleet.consumers import FleetConsumer
from telemetry.routing import websocket_urlpatterns as telemetry_websockets

websocket_urlpatterns = [
    path("ws/fleet/", FleetConsumer.as_asgi()),
    *telemetry_websockets,
    *deployments_websockets,
]
