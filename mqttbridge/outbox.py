"""Writing to and draining the outbox."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from .models import OutboxMessage

logger = logging.getLogger("fogdeck.outbox")

PublishFn = Callable[[str, bytes, int, bool], bool]
"""(topic, payload, qos, retain) -> True once the broker acknowledged it."""


def outbox_enqueue(*, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> OutboxMessage:
    """Queue a message; call inside the transaction that makes it necessary."""
    return OutboxMessage.objects.create(topic=topic, payload=payload, qos=qos, retain=retain)


def outbox_enqueue_many(
    *, messages: Iterable[tuple[str, bytes]], qos: int = 1, retain: bool = False
) -> list[OutboxMessage]:
    """Queue many (topic, payload) messages in one insert, in order; call inside the transaction that
    makes them necessary."""
    return OutboxMessage.objects.bulk_create(
        [OutboxMessage(topic=topic, payload=payload, qos=qos, retain=retain) for topic, payload in messages],
        batch_size=1000,
    )


def outbox_drain(publish: PublishFn, *, limit: int = 500) -> int:
    """Publish pending messages in order; each is marked published only after the broker's ack.

    Rows are claimed with SELECT … FOR UPDATE SKIP LOCKED on PostgreSQL, so several publishers never
    send the same row at the same time. A failure stops the pass; the row is retried on the next one.
    """
    published = 0
    with transaction.atomic():
        pending = OutboxMessage.objects.filter(published_at__isnull=True).order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            pending = pending.select_for_update(skip_locked=True)
        for message in pending[:limit]:
            try:
                ok = publish(message.topic, bytes(message.payload), message.qos, message.retain)
                error = "" if ok else "broker did not acknowledge"
            except Exception as exc:  # the broker being away is the normal failure here
                ok, error = False, f"{type(exc).__name__}: {exc}"[:300]
            if not ok:
                OutboxMessage.objects.filter(pk=message.pk).update(attempts=F("attempts") + 1, last_error=error)
                logger.warning("outbox publish of #%s to %s failed: %s", message.pk, message.topic, error)
                break
            OutboxMessage.objects.filter(pk=message.pk).update(
                published_at=timezone.now(), attempts=F("attempts") + 1, last_error=""
            )
            published += 1
    return published


def outbox_prune(*, older_than_days: int = 7) -> int:
    cutoff = timezone.now() - timezone.timedelta(days=older_than_days)
    deleted, _ = OutboxMessage.objects.filter(published_at__lt=cutoff).delete()
    return deleted
