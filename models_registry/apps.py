from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class ModelsRegistryConfig(AppConfig):
    name = "models_registry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        checks.register(signing_key_configuration, checks.Tags.security)


def signing_key_configuration(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A bad SIGNING_KEY is an error; no key at all with DEBUG off is worth a warning."""
    from . import keys  # imported when checks run: keeps app loading free of key handling

    try:
        configured = keys.all_keys()
    except keys.SigningKeyError as exc:
        return [checks.Error(str(exc), hint="SIGNING_KEY is base64 of a raw 32-byte Ed25519 key", id="fogdeck.E101")]
    if not settings.DEBUG and not configured:
        return [
            checks.Warning(
                f"no model signing key: the first publish will create one in {settings.SIGNING_KEY_DIR}",
                hint="Set SIGNING_KEY (or SIGNING_KEY_FILE), or keep SIGNING_KEY_DIR on persistent storage.",
                id="fogdeck.W101",
            )
        ]
    return []
