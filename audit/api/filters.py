from __future__ import annotations

import django_filters

from audit.models import AuditEntry
from core.filters import UTCIsoDateTimeFilter


class AuditEntryFilter(django_filters.FilterSet):
    actor = django_filters.CharFilter(help_text="exact actor label (user:alice) or a bare user name")
    action = django_filters.CharFilter(lookup_expr="startswith", help_text="action or action prefix (device.)")
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    since = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    request_id = django_filters.CharFilter()

    class Meta:
        model = AuditEntry
        fields = ["actor", "action", "object_type", "object_id", "since", "until", "request_id"]

    def filter_queryset(self, queryset):  # type: ignore[no-untyped-def]
        actor = self.form.cleaned_data.get("actor")
        if actor and ":" not in actor:
            self.form.cleaned_data["actor"] = f"user:{actor}"
        return super().filter_queryset(queryset)
