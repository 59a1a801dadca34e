from __future__ import annotations

from rest_framework import serializers

from webhooks.destinations import DestinationRefused, check_url
from webhooks.models import EVENT_KINDS, WebhookAttempt, WebhookDelivery, WebhookSubscription
from webhooks.selectors import shows_delivery_errors


class WebhookSubscriptionSerializer(serializers.ModelSerializer):
    """A subscription as read back: never its secret."""

    event_kinds = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_KINDS), allow_empty=False, max_length=len(EVENT_KINDS)
    )

    class Meta:
        model = WebhookSubscription
        fields = ["id", "name", "url", "event_kinds", "active", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate_url(self, value: str) -> str:
        try:
            check_url(value)
        except DestinationRefused as exc:
            raise serializers.ValidationError(exc.reason) from None
        return value


class WebhookSubscriptionCreatedSerializer(WebhookSubscriptionSerializer):
    """The answer to a create or a secret rotation: the only time the secret is shown."""

    secret = serializers.CharField(read_only=True, help_text="signing secret; shown once, store it now")

    class Meta(WebhookSubscriptionSerializer.Meta):
        fields = [*WebhookSubscriptionSerializer.Meta.fields, "secret"]


class _HidesErrorFromViewers(serializers.ModelSerializer):
    error = serializers.SerializerMethodField(help_text="of the last attempt; empty for viewers")

    def get_error(self, row: WebhookAttempt | WebhookDelivery) -> str:
        request = self.context.get("request")
        return row.error if request is not None and shows_delivery_errors(request.user) else ""


class WebhookAttemptSerializer(_HidesErrorFromViewers):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "at", "response_code", "latency_ms", "error"]


class WebhookDeliverySerializer(_HidesErrorFromViewers):
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event_id",
            "kind",
            "status",
            "attempts",
            "response_code",
            "latency_ms",
            "error",
            "created_at",
            "next_attempt_at",
            "finished_at",
            "payload",
            "attempt_log",
        ]
