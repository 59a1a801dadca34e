"""The device filter: one definition for the API list, dynamic groups and (later) rollout targets."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import QueryDict

from core.filters import IdsFilter, IntFilter

from .models import (
    Accelerator,
    Arch,
    ConnectionStatus,
    Device,
    DeviceGroup,
    DeviceQuerySet,
    DeviceRuntime,
    DeviceTag,
    Tier,
)


class DeviceFilter(django_filters.FilterSet):
    # distinct=False: django-filter's multiple-choice filters default to SELECT DISTINCT over every column,
    # which these single-column lookups never need (no joins, no duplicates) and which cost a sort of every
    # matching row, JSON columns included (docs/benchmarks.md, "API: SELECT DISTINCT over every column").
    site = IdsFilter(
        field_name="site", queryset=lambda request: _sites(), help_text="site id (repeat for several)", distinct=False
    )
    tier = django_filters.MultipleChoiceFilter(choices=Tier.choices, distinct=False)
    status = django_filters.ChoiceFilter(choices=ConnectionStatus.choices)
    accelerator = django_filters.MultipleChoiceFilter(choices=Accelerator.choices, distinct=False)
    arch = django_filters.MultipleChoiceFilter(choices=Arch.choices, distinct=False)
    tag = django_filters.CharFilter(method="filter_tag", help_text="devices carrying this tag")
    runtime = django_filters.CharFilter(method="filter_runtime", help_text="devices with this runtime name")
    parent = IntFilter(field_name="parent_id", help_text="devices behind this gateway id")
    group = IntFilter(method="filter_group", help_text="members of this group id")
    revoked = django_filters.BooleanFilter(field_name="revoked_at", lookup_expr="isnull", exclude=True)
    min_memory_mb = IntFilter(field_name="memory_mb", lookup_expr="gte")
    search = django_filters.CharFilter(method="filter_search", help_text="uid or name contains")

    class Meta:
        model = Device
        fields = [
            "site",
            "tier",
            "status",
            "accelerator",
            "arch",
            "tag",
            "runtime",
            "parent",
            "group",
            "revoked",
            "min_memory_mb",
            "search",
        ]

    def get_form_class(self) -> Any:
        # django-filter makes a new Form class (Django's form metaclass over these 12 fields) for every
        # filterset, i.e. every list request. Nothing in it depends on the request (the site field's
        # queryset is cloned by each form's copy of its fields), so it is made once per FilterSet class.
        form_class = type(self).__dict__.get("_form_class")
        if form_class is None:
            form_class = super().get_form_class()
            type(self)._form_class = form_class  # type: ignore[attr-defined]
        return form_class

    def filter_tag(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        return queryset.filter(Exists(DeviceTag.objects.filter(device=OuterRef("pk"), tag=value)))

    def filter_runtime(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        return queryset.filter(Exists(DeviceRuntime.objects.filter(device=OuterRef("pk"), name=value)))

    def filter_search(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        return queryset.filter(Q(uid__icontains=value) | Q(name__icontains=value))

    def filter_group(self, queryset: QuerySet[Device], name: str, value: int) -> QuerySet[Device]:
        group = DeviceGroup.objects.filter(pk=value).first()
        if group is None:
            return queryset.none()
        return queryset.filter(pk__in=group_members(group).values("pk"))


def _sites() -> Any:
    from .models import Site

    return Site.objects.all()


# Keys a stored (dynamic group) filter may use; `group` is excluded so groups cannot nest into cycles.
STORED_FILTER_KEYS = frozenset(DeviceFilter.Meta.fields) - {"group"}


# Stored filters (dynamic groups, rollout targets) are evaluated by DeviceFilter itself, so a group means
# exactly what the device list's query string means; fleet/selectors.py exposes these to other apps.
def filter_to_querydict(stored: dict[str, Any]) -> QueryDict:
    data = QueryDict(mutable=True)
    for key, value in stored.items():
        values = value if isinstance(value, list) else [value]
        data.setlist(key, [str(v).lower() if isinstance(v, bool) else str(v) for v in values])
    return data


def devices_matching(stored_filter: dict[str, Any], queryset: DeviceQuerySet | None = None) -> DeviceQuerySet:
    """Devices matching a stored filter (the same semantics as the device list's query string)."""
    base = queryset if queryset is not None else Device.objects.all()
    filterset = DeviceFilter(filter_to_querydict(stored_filter), queryset=base)
    if not filterset.is_valid():
        raise ValueError(f"invalid device filter: {dict(filterset.errors)}")
    matching: DeviceQuerySet = filterset.qs  # `base` filtered: its class (django_filters is untyped)
    return matching


def group_members(group: DeviceGroup) -> DeviceQuerySet:
    """A static group's devices, or a dynamic group's filter evaluated now."""
    if group.is_dynamic:
        return devices_matching(group.filter)
    return Device.objects.filter(static_groups=group)
