from __future__ import annotations

from django.db import models


class OutboxMessage(models.Model):
    """An MQTT message to a device, written in the same transaction as the change that causes it.

    The publisher drains it and marks it published only once the broker acknowledged it (QoS 1 PUBACK),
    so a broker restart or a crash between commit and publish loses nothing; a re-publish after a crash
    is harmless because every command carries its own id.
    """

    topic = models.CharField(max_length=300)
    payload = models.BinaryField()
    qos = models.PositiveSmallIntegerField(default=1)
    retain = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        db_table = "mqttbridge_outboxmessage"  # created by mqttbridge, whose model it was: moved, not renamed
        indexes = [
            # the publisher's queue: unpublished messages in order
            models.Index(fields=["id"], condition=models.Q(published_at__isnull=True), name="outbox_pending_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} ({'published' if self.published_at else 'pending'})"


class RejectedMessageCount(models.Model):
    """Device messages the bridge dropped, counted by reason (flushed from the bridge process; fleet counts
    the inference URLs it refuses here too)."""

    reason = models.CharField(max_length=64, unique=True)
    count = models.BigIntegerField(default=0)
    last_detail = models.CharField(max_length=500, blank=True)
    last_topic = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "mqttbridge_rejectedmessagecount"  # as above

    def __str__(self) -> str:
        return f"{self.reason}: {self.count}"
