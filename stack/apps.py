from __future__ import annotations

from django.apps import AppConfig


class StackConfig(AppConfig):
    name = "stack"
    verbose_name = "Fogdeck processes (serve, demo, embedded broker, health)"
