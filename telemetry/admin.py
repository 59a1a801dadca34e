from __future__ import annotations

from typing import Any

from django.contrib import admin

from .models import DriftAlert, ReferenceProfile


class _ReadOnly(admin.ModelAdmin):
    """Inspect only: profiles change through the audited API, alerts through the drift evaluation."""

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(ReferenceProfile)
class ReferenceProfileAdmin(_ReadOnly):
    list_display = ["version", "sample_count", "source", "updated_at"]
    readonly_fields = [f.name for f in ReferenceProfile._meta.fields]


@admin.register(DriftAlert)
class DriftAlertAdmin(_ReadOnly):
    list_display = ["id", "version", "site", "status", "psi", "ks", "opened_at", "resolved_at"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in DriftAlert._meta.fields]
