from __future__ import annotations

from django.contrib import admin

from audit.admin_mixins import AuditedAdminMixin

from .models import Device, DeviceGroup, DeviceRuntime, DeviceTag, Site


@admin.register(Site)
class SiteAdmin(AuditedAdminMixin):
    list_display = ["name", "region", "latitude", "longitude"]
    search_fields = ["name", "region"]


class RuntimeInline(admin.TabularInline):
    model = DeviceRuntime
    extra = 0


class TagInline(admin.TabularInline):
    model = DeviceTag
    extra = 0


@admin.register(Device)
class DeviceAdmin(AuditedAdminMixin):
    list_display = ["uid", "name", "site", "tier", "arch", "memory_mb", "accelerator", "status", "last_seen"]
    list_filter = ["tier", "status", "accelerator", "arch", "site"]
    search_fields = ["uid", "name"]
    list_select_related = ["site"]
    raw_id_fields = ["parent"]
    readonly_fields = [
        "credential_hash",
        "credential_issued_at",
        "revoked_at",
        "status",
        "last_seen",
        "agent_version",
    ]
    inlines = [RuntimeInline, TagInline]


@admin.register(DeviceGroup)
class DeviceGroupAdmin(AuditedAdminMixin):
    audit_object_type = "group"
    list_display = ["name", "kind", "description"]
    filter_horizontal = ["devices"]
