"""Draining the outbox (writing to it: `outbox/services.py`) and pruning it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from outbox.models import OutboxMessage

logger = logging.getLogger("fogdeck.outbox")


class Delivery(Protocol):
    """A publish in flight (paho's MQTTMessageInfo is one)."""

    def wait_for_publish(self, timeout: float | None = None) -> None: ...

    def is_published(self) -> bool: ...


SendFn = Callable[[str, bytes, int, bool], Delivery | None]
"""(topic, payload, qos, retain) -> the publish in flight, or None when it could not be sent at all."""

ACK_TIMEOUT_SECONDS = 5.0


def outbox_drain(send: SendFn, *, limit: int = 1000) -> int:
    """Publish pending messages in order; each is marked published only after the broker's ack.

    Rows are claimed with SELECT … FOR UPDATE SKIP LOCKED on PostgreSQL, so several publishers never
    send the same row at the same time. The claimed rows are all sent first and their acks awaited
    after, so a pass costs one round trip to the broker, not one per message. Rows the broker did not
    acknowledge stay pending and are retried on the next pass; the published ones are marked in one UPDATE.
    """
    with transaction.atomic():
        pending = OutboxMessage.objects.filter(published_at__isnull=True).order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            pending = pending.select_for_update(skip_locked=True)
        claimed = list(pending[:limit])
        in_flight: list[tuple[OutboxMessage, Delivery | None, str]] = []
        for message in claimed:
            try:
                delivery, error = send(message.topic, bytes(message.payload), message.qos, message.retain), ""
            except Exception as exc:  # the broker being away is the normal failure here
                delivery, error = None, f"{type(exc).__name__}: {exc}"[:300]
            in_flight.append((message, delivery, error or ("" if delivery else "not connected to the broker")))
            if delivery is None:
                break  # the connection is gone: the rest waits for the next pass, in order
        published: list[int] = []
        failed: dict[int, str] = {}
        for message, delivery, error in in_flight:
            if delivery is not None:
                try:
                    delivery.wait_for_publish(ACK_TIMEOUT_SECONDS)
                except (RuntimeError, ValueError) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:300]
                if delivery.is_published():
                    published.append(message.pk)
                    continue
                error = error or "broker did not acknowledge"
            failed[message.pk] = error
        now = timezone.now()
        if published:
            OutboxMessage.objects.filter(pk__in=published).update(
                published_at=now, attempts=F("attempts") + 1, last_error=""
            )
        for pk, error in failed.items():
            OutboxMessage.objects.filter(pk=pk).update(attempts=F("attempts") + 1, last_error=error)
            logger.warning("outbox publish of #%s failed: %s", pk, error)
    return len(published)


@transaction.atomic
def outbox_prune(*, older_than_days: int = 7) -> int:
    """Delete published rows older than `older_than_days` (never a pending one); a run that deleted
    something is audited with its count, as the `system:celery:outbox-prune` actor."""
    from audit.actors import Actor
    from audit.services import audit_record

    cutoff = timezone.now() - timezone.timedelta(days=older_than_days)
    deleted, _ = OutboxMessage.objects.filter(published_at__lt=cutoff).delete()
    if deleted:
        audit_record(
            actor=Actor.system("celery:outbox-prune"),
            action="outbox.pruned",
            object_type="outbox",
            object_repr=f"{deleted} published messages older than {older_than_days} days",
            changes={"deleted": deleted, "older_than_days": older_than_days},
        )
    return deleted
