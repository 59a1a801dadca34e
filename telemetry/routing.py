from __future__ import annotations

from django.urls import path

from .consumers import DeviceConsumer, RolloutConsumer

websocket_urlpatterns = [
    path("ws/devices/<int:device_id>/", DeviceConsumer.as_asgi()),
    path("ws/rollouts/<int:rollout_id>/", RolloutConsumer.as_asgi()),
]
