"""Celery tasks of webhook deliveries; `queue_deliveries` is how the services and beat send them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from celery import shared_task

from .deliveries import webhook_deliveries_lost, webhook_delivery_attempt
from .models import WebhookDelivery

logger = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self, delivery_id: str) -> str | None:  # type: ignore[no-untyped-def]
    """One signed POST; retried with backoff (the attempt decides when to stop and how long to wait)."""
    try:
        outcome = webhook_delivery_attempt(delivery_id=delivery_id)
    except WebhookDelivery.DoesNotExist:
        logger.warning("webhook delivery %s vanished (subscription deleted?)", delivery_id)
        return None
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.status


def queue_deliveries(ids: Iterable[uuid.UUID], countdown: float | None = None) -> None:
    """Send each delivery to a worker; a broker outage is logged, never raised (beat re-queues them)."""
    for delivery_id in ids:
        try:
            deliver_webhook.apply_async((str(delivery_id),), countdown=countdown)
        except Exception:  # a broker outage must not fail the event; the sweep re-queues pending deliveries
            logger.warning("could not queue webhook delivery %s", delivery_id, exc_info=True)


@shared_task(acks_late=True)
def requeue_webhook_deliveries() -> int:
    """Beat: deliveries whose task was lost go out again (the attempt counter keeps them idempotent)."""
    ids = webhook_deliveries_lost()
    queue_deliveries(ids)
    return len(ids)
