from __future__ import annotations

from django.apps import AppConfig


class MqttBridgeConfig(AppConfig):
    name = "mqttbridge"
    verbose_name = "MQTT bridge"
