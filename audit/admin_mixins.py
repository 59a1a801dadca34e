"""Admin changes go through the same audit trail as API calls."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction

from .actors import Actor
from .services import audit_record, diff, snapshot

HIDDEN = "(hidden)"


class AuditedAdminMixin(admin.ModelAdmin):
    """Records add, change and delete made in the Django admin, with before/after of changed fields,
    many-to-many fields included (a user's groups are their roles).

    The entry is written in `save_related`, after the many-to-many fields are saved, inside the atomic
    block Django's admin opens around the whole change form, so it commits or rolls back with the change.
    Fields named in `audit_secret_fields` are reported as changed without their values.
    """

    audit_object_type: str = ""
    audit_secret_fields: frozenset[str] = frozenset()
    _AUDIT_SKIP = frozenset({"id", "created_at", "updated_at"})

    def _audit_fields(self, obj: Any) -> list[str]:
        return [f.name for f in obj._meta.concrete_fields if f.name not in self._AUDIT_SKIP]

    def _audit_snapshot(self, obj: Any) -> dict[str, Any]:
        out = snapshot(obj, self._audit_fields(obj))
        if obj.pk is not None:
            for field in obj._meta.many_to_many:
                out[field.name] = sorted(str(related) for related in getattr(obj, field.name).all())
        return out

    def _audit_changes(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        changes = diff(before, after)
        for name in self.audit_secret_fields & changes.keys():
            changes[name] = {"before": HIDDEN if before.get(name) else "", "after": HIDDEN if after.get(name) else ""}
        return changes

    def _object_type(self, obj: Any) -> str:
        return self.audit_object_type or obj._meta.model_name

    def save_model(self, request: Any, obj: Any, form: Any, change: bool) -> None:
        before: dict[str, Any] = {}
        if change:
            before = self._audit_snapshot(type(obj)._default_manager.get(pk=obj.pk))
        obj._fogdeck_audit_before = before
        super().save_model(request, obj, form, change)

    def save_related(self, request: Any, form: Any, formsets: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_related(request, form, formsets, change)
            obj = form.instance
            before = getattr(obj, "_fogdeck_audit_before", {})
            audit_record(
                actor=Actor.for_user(request.user),
                action=f"{self._object_type(obj)}.{'update' if change else 'create'}",
                object_type=self._object_type(obj),
                object_id=obj.pk,
                object_repr=str(obj),
                changes={"via": "admin", **self._audit_changes(before, self._audit_snapshot(obj))},
            )

    def delete_model(self, request: Any, obj: Any) -> None:
        with transaction.atomic():
            before = self._audit_snapshot(obj)
            pk, label = obj.pk, str(obj)
            super().delete_model(request, obj)
            audit_record(
                actor=Actor.for_user(request.user),
                action=f"{self._object_type(obj)}.delete",
                object_type=self._object_type(obj),
                object_id=pk,
                object_repr=label,
                changes={"via": "admin", **self._audit_changes(before, {})},
            )

    def delete_queryset(self, request: Any, queryset: Any) -> None:
        for obj in queryset:
            self.delete_model(request, obj)
