from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Fogdeck core"

    def ready(self) -> None:
        checks.register(embedded_defaults_in_production, checks.Tags.compatibility)


def embedded_defaults_in_production(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when DEBUG is off but an embedded default stands in for a real service."""
    if settings.DEBUG:
        return []
    embedded = {
        "DATABASE_URL (SQLite)": settings.EMBEDDED_DATABASE,
        "REDIS_URL (in-memory channel layer, filesystem Celery transport)": not settings.REDIS_URL,
        "MQTT_URL (in-process broker)": settings.EMBEDDED_MQTT,
        "S3_BUCKET (local file storage)": settings.EMBEDDED_STORAGE,
    }
    return [
        checks.Warning(
            f"DEBUG is off but {name} is not set: the embedded default is in use.",
            hint="Set the variable to use the production service (see .env.example).",
            id="fogdeck.W001",
        )
        for name, active in embedded.items()
        if active
    ]
