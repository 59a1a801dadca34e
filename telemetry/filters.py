"""One FilterSet per telemetry list (reused by the UI)."""

from __future__ import annotations

import django_filters

from core.filters import IntFilter, UTCIsoDateTimeFilter

from .models import DriftAlert


class DriftAlertFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=DriftAlert.Status.choices)
    site = IntFilter(field_name="site_id", help_text="site id")
    model = django_filters.CharFilter(field_name="version__model__name", help_text="exact model name")
    version = IntFilter(field_name="version__number", help_text="version number (with model)")
    version_id = IntFilter(field_name="version_id")
    opened_after = UTCIsoDateTimeFilter(field_name="opened_at", lookup_expr="gte")
    opened_before = UTCIsoDateTimeFilter(field_name="opened_at", lookup_expr="lt")

    class Meta:
        model = DriftAlert
        fields = ["status", "site", "model", "version", "version_id", "opened_after", "opened_before"]
