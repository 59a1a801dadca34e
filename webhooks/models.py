"""Webhook subscriptions, their deliveries (one per event and subscription) and each delivery attempt."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

# The domain events a subscription may ask for (core/events.py publishes them).
EVENT_KINDS = (
    "rollout.state_changed",
    "rollout.gate_failed",
    "rollout.rolled_back",
    "drift.alert",
    "fleet.offline_storm",
)


class WebhookSubscriptionQuerySet(models.QuerySet["WebhookSubscription"]):
    def active(self) -> WebhookSubscriptionQuerySet:
        return self.filter(active=True)


class WebhookSubscription(models.Model):
    name = models.CharField(max_length=120)
    url = models.URLField(max_length=500, help_text="receives a POST per event")
    secret_sealed = models.TextField(help_text="the signing secret, encrypted (webhooks/secrets_box.py)")
    event_kinds = models.JSONField(default=list, help_text="the event kinds delivered to this URL")
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = WebhookSubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} -> {self.url}"

    def wants(self, kind: str) -> bool:
        return self.active and kind in self.event_kinds


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # queued, not tried yet
    RETRYING = "retrying"  # tried, failed, another attempt is scheduled
    SUCCEEDED = "succeeded"  # a 2xx answer
    FAILED = "failed"  # out of attempts


DELIVERY_TERMINAL = frozenset({DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED})
DELIVERY_TRANSITIONS: dict[str, frozenset[str]] = {
    DeliveryStatus.PENDING: frozenset({DeliveryStatus.RETRYING, *DELIVERY_TERMINAL}),
    DeliveryStatus.RETRYING: frozenset({DeliveryStatus.RETRYING, *DELIVERY_TERMINAL}),
    DeliveryStatus.SUCCEEDED: frozenset(),
    DeliveryStatus.FAILED: frozenset(),
}


class WebhookDelivery(models.Model):
    """One event for one subscription; its id is the `X-Fogdeck-Delivery` header (receivers de-duplicate on it)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.UUIDField(help_text="the same for every subscription receiving this event")
    kind = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True, help_text="of the last attempt")
    latency_ms = models.FloatField(null=True, blank=True, help_text="of the last attempt")
    error = models.TextField(blank=True, help_text="of the last attempt")
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # an event is delivered once per subscription, however often the receiver runs
            models.UniqueConstraint(fields=["subscription", "event_id"], name="webhook_delivery_once_per_event")
        ]
        # the delivery log of a subscription, newest first
        indexes = [models.Index(fields=["subscription", "created_at"], name="webhook_delivery_log_idx")]

    def __str__(self) -> str:
        return f"{self.kind} -> {self.subscription_id} ({self.status})"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    at = models.DateTimeField()
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField()
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_unique")]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number}: {self.response_code or self.error[:40]}"

    @property
    def succeeded(self) -> bool:
        return self.response_code is not None and 200 <= self.response_code < 300
