from __future__ import annotations

import logging

from celery import shared_task

from .models import WebhookDelivery
from .services import webhook_deliveries_requeue, webhook_delivery_attempt

logger = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self, delivery_id: str) -> str | None:  # type: ignore[no-untyped-def]
    """One signed POST; retried with backoff (the service decides when to stop and how long to wait)."""
    try:
        outcome = webhook_delivery_attempt(delivery_id=delivery_id)
    except WebhookDelivery.DoesNotExist:
        logger.warning("webhook delivery %s vanished (subscription deleted?)", delivery_id)
        return None
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.status


@shared_task(acks_late=True)
def requeue_webhook_deliveries() -> int:
    """Beat: deliveries whose task was lost go out again (the attempt counter keeps them idempotent)."""
    return webhook_deliveries_requeue()
