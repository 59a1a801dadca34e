from __future__ import annotations

from django.apps import AppConfig


class DevServerConfig(AppConfig):
    name = "core.devserver"
    label = "fogdeck_devserver"
    verbose_name = "Development server (runserver on ASGI)"
