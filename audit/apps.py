from __future__ import annotations

import os
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        checks.register(audit_key_in_production, checks.Tags.security)


def audit_key_in_production(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The audit key derived from SECRET_KEY works, but rotating SECRET_KEY then breaks verification."""
    if settings.DEBUG or os.environ.get("AUDIT_HMAC_KEY") or os.environ.get("AUDIT_HMAC_KEY_FILE"):
        return []
    return [
        checks.Warning(
            "AUDIT_HMAC_KEY is not set: the audit chain's key is derived from SECRET_KEY.",
            hint="Set AUDIT_HMAC_KEY (or AUDIT_HMAC_KEY_FILE) so rotating SECRET_KEY keeps the chain verifiable "
            "(docs/security.md).",
            id="fogdeck.W201",
        )
    ]
