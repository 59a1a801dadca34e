"""Writing to the outbox (the bridge drains it: `mqttbridge/outbox.py`)."""

from __future__ import annotations

from collections.abc import Iterable

from .models import OutboxMessage


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
