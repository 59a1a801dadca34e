"""Admin changes go through the same audit trail as API calls."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction

from .actors import Actor
from .services import audit_record, diff, snapshot


class AuditedAdminMixin(admin.ModelAdmin):
    """Records add, change and delete made in the Django admin, with before/after of changed fields."""

    audit_object_type: str = ""

    def _audit_fields(self, obj: Any) -> list[str]:
        return [f.name for f in obj._meta.concrete_fields if f.name not in {"id", "created_at", "updated_at"}]

    def _object_type(self, obj: Any) -> str:
        return self.audit_object_type or obj._meta.model_name

    def save_model(self, request: Any, obj: Any, form: Any, change: bool) -> None:
        with transaction.atomic():
            before: dict[str, Any] = {}
            if change:
                original = type(obj).objects.get(pk=obj.pk)
                before = snapshot(original, self._audit_fields(obj))
            super().save_model(request, obj, form, change)
            after = snapshot(obj, self._audit_fields(obj))
            audit_record(
                actor=Actor.for_user(request.user),
                action=f"{self._object_type(obj)}.{'update' if change else 'create'}",
                object_type=self._object_type(obj),
                object_id=obj.pk,
                object_repr=str(obj),
                changes={"via": "admin", **diff(before, after)},
            )

    def delete_model(self, request: Any, obj: Any) -> None:
        with transaction.atomic():
            before = snapshot(obj, self._audit_fields(obj))
            pk, label = obj.pk, str(obj)
            super().delete_model(request, obj)
            audit_record(
                actor=Actor.for_user(request.user),
                action=f"{self._object_type(obj)}.delete",
                object_type=self._object_type(obj),
                object_id=pk,
                object_repr=label,
                changes={"via": "admin", **diff(before, {})},
            )

    def delete_queryset(self, request: Any, queryset: Any) -> None:
        for obj in queryset:
            self.delete_model(request, obj)
