from __future__ import annotations

from celery import shared_task
from django.conf import settings

from .outbox import outbox_prune


@shared_task(acks_late=True)
def prune_outbox() -> int:
    """Beat (hourly): published outbox rows older than OUTBOX_RETENTION_DAYS go (idempotent)."""
    return outbox_prune(older_than_days=settings.OUTBOX_RETENTION_DAYS)
