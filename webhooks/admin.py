from __future__ import annotations

from django.contrib import admin

from .models import WebhookDelivery, WebhookSubscription


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    """Read-only here: changes go through the API or /webhooks/ so they are audited and secrets stay sealed."""

    list_display = ["name", "url", "active", "created_at"]
    readonly_fields = ["name", "url", "event_kinds", "active", "created_by", "created_at", "updated_at"]
    exclude = ["secret_sealed"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["kind", "subscription", "status", "attempts", "response_code", "created_at"]
    list_filter = ["status", "kind"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False
