"""Reads that cross models: a version's history (events + audit) and its fit with the fleet."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet

from audit.models import AuditEntry
from fleet.models import Device, DeviceRuntime

from .compatibility import CompatibilitySummary, Requirements, profile_of, requirements_of, summarize
from .models import ModelVersion

COMPATIBILITY_CHUNK = 2000


def version_history(version: ModelVersion) -> list[dict[str, Any]]:
    """The version's timeline, oldest first: its status events and every audit entry about it."""
    items: list[dict[str, Any]] = [
        {
            "source": "event",
            "at": e.at,
            "action": f"status.{e.to_status}",
            "actor": e.actor,
            "from_status": e.from_status,
            "to_status": e.to_status,
            "reason": e.reason,
            "changes": {},
            "request_id": "",
        }
        for e in version.events.all()
    ]
    items += [
        {
            "source": "audit",
            "at": a.created_at,
            "action": a.action,
            "actor": a.actor,
            "from_status": "",
            "to_status": "",
            "reason": "",
            "changes": a.changes,
            "request_id": a.request_id,
        }
        for a in AuditEntry.objects.for_object("model_version", version.pk).order_by("id")
    ]
    # an event and its audit entry share a transaction; list the event first
    return sorted(items, key=lambda item: (item["at"], item["source"] != "event"))


def version_compatibility(version: ModelVersion, devices: QuerySet[Device]) -> CompatibilitySummary:
    """How many of `devices` can run `version`, and why the others cannot."""
    return requirements_compatibility(requirements_of(version), devices)


def requirements_compatibility(requirements: Requirements, devices: QuerySet[Device]) -> CompatibilitySummary:
    """How many of `devices` meet `requirements` (a version's or a pipeline version's), and why the others don't.

    A constant number of queries per chunk of devices (rows, then their runtimes), whatever the fleet size;
    the incoming queryset's other joins and prefetches are dropped because compatibility does not use them.
    """
    rows = (
        devices.select_related(None)
        .prefetch_related(None)
        .only("id", "arch", "memory_mb", "accelerator")
        .prefetch_related(Prefetch("runtimes", queryset=DeviceRuntime.objects.only("device_id", "name", "version")))
        .order_by("pk")
    )
    profiles = (profile_of(device, device.runtimes.all()) for device in rows.iterator(chunk_size=COMPATIBILITY_CHUNK))
    return summarize(requirements, profiles)
