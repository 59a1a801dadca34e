"""Read-mostly admin: model metadata is editable (audited); versions and aliases change only through the API,
whose services enforce the lifecycle, immutability and signing."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from audit.admin_mixins import AuditedAdminMixin

from .models import Alias, ModelVersion, Pipeline, PipelineStage, PipelineVersion, RegisteredModel, VersionEvent


@admin.register(RegisteredModel)
class RegisteredModelAdmin(AuditedAdminMixin):
    audit_object_type = "model"
    list_display = ["name", "task", "owner", "created_at"]
    search_fields = ["name", "task", "description"]
    list_filter = ["task"]
    raw_id_fields = ["owner"]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


class VersionEventInline(admin.TabularInline):
    model = VersionEvent
    extra = 0
    fields = ["at", "from_status", "to_status", "actor", "reason"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ["model", "number", "label", "status", "format", "framework", "size", "published_at"]
    list_filter = ["status", "format", "framework"]
    search_fields = ["model__name", "label", "sha256"]
    list_select_related = ["model"]
    inlines = [VersionEventInline]


@admin.register(Alias)
class AliasAdmin(ReadOnlyAdmin):
    list_display = ["model", "name", "version", "updated_at"]
    list_select_related = ["model", "version"]


# Pipelines: read-only here; their versions and lifecycle change only through the API's audited services.
@admin.register(Pipeline)
class PipelineAdmin(ReadOnlyAdmin):
    list_display = ["name", "owner", "created_at"]
    search_fields = ["name", "description"]


class PipelineStageInline(admin.TabularInline):
    model = PipelineStage
    extra = 0
    fields = ["position", "name", "version", "condition"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(PipelineVersion)
class PipelineVersionAdmin(ReadOnlyAdmin):
    list_display = ["pipeline", "number", "status", "published_at"]
    list_filter = ["status"]
    search_fields = ["pipeline__name"]
    list_select_related = ["pipeline"]
    inlines = [PipelineStageInline]
