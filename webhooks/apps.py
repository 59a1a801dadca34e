from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from core.events import domain_event

        from .receivers import enqueue_deliveries

        domain_event.connect(enqueue_deliveries, dispatch_uid="webhooks.enqueue_deliveries")
