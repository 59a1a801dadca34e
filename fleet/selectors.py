from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import QueryDict

from .filters import DeviceFilter
from .models import Device, DeviceGroup


def filter_to_querydict(stored: dict[str, Any]) -> QueryDict:
    data = QueryDict(mutable=True)
    for key, value in stored.items():
        values = value if isinstance(value, list) else [value]
        data.setlist(key, [str(v).lower() if isinstance(v, bool) else str(v) for v in values])
    return data


def devices_matching(stored_filter: dict[str, Any], queryset: QuerySet[Device] | None = None) -> QuerySet[Device]:
    """Devices matching a stored filter (the same semantics as the device list's query string)."""
    base = queryset if queryset is not None else Device.objects.all()
    filterset = DeviceFilter(filter_to_querydict(stored_filter), queryset=base)
    if not filterset.is_valid():
        raise ValueError(f"invalid device filter: {dict(filterset.errors)}")
    return filterset.qs


def group_members(group: DeviceGroup) -> QuerySet[Device]:
    """A static group's devices, or a dynamic group's filter evaluated now."""
    if group.is_dynamic:
        return devices_matching(group.filter)
    return Device.objects.filter(static_groups=group)
