"""Reads that cross models: a version's history (events + audit) and its fit with the fleet."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet

from audit.models import AuditEntry
from fleet.models import Device, DeviceRuntime

from .compatibility import CompatibilitySummary, Requirements, profile_of, requirements_of, summarize
from .models import ModelVersion, PipelineVersion

COMPATIBILITY_CHUNK = 2000


def version_history(version: ModelVersion) -> list[dict[str, Any]]:
    """The version's timeline, oldest first: its status events and every audit entry about it."""
    items: list[dict[str, Any]] = [
        {
            "source": "event", "at": e.at, "action": f"status.{e.to_status}", "actor": e.actor,
            "from_status": e.from_status, "to_status": e.to_status, "reason": e.reason, "changes": {},
            "request_id": "",
        }
        for e in version.events.all()
    ]
    items += [
        {
            "source": "audit", "at": a.created_at, "action": a.action, "actor": a.actor, "from_status": "",
            "to_status": "", "reason": "", "changes": a.changes, "request_id": a.request_id,
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


def pipeline_stage_latency(version: PipelineVersion, *, since: Any) -> dict[str, dict[str, float | int]]:
    """Per stage of `version`, from raw telemetry since `since`: runs, skips, and p95 latency in ms.

    `p95_mean` is the run-weighted mean of the devices' p95s, `p95_max` the worst device's (as the
    rollups do: percentiles of different devices cannot be merged exactly). Also "end_to_end".
    """
    from telemetry.models import TelemetrySample  # telemetry depends on the fleet, not on the registry

    totals: dict[str, dict[str, float | int]] = {}
    rows = TelemetrySample.objects.filter(
        model_name=version.pipeline.name, version_number=version.number, ts__gte=since, requests__gt=0
    ).values_list("requests", "p95_ms", "stages")
    for requests, p95, stages in rows.iterator(chunk_size=2000):
        items = [{"name": "end_to_end", "requests": requests, "skipped": 0, "latency_ms": {"p95": p95}}, *stages]
        for item in items:
            acc = totals.setdefault(item["name"], {"runs": 0, "skipped": 0, "p95_wsum": 0.0, "p95_max": 0.0})
            acc["runs"] += item.get("requests", 0)
            acc["skipped"] += item.get("skipped", 0)
            latency = item.get("latency_ms")
            if latency:
                acc["p95_wsum"] += latency["p95"] * item.get("requests", 0)
                acc["p95_max"] = max(acc["p95_max"], latency["p95"])
    for acc in totals.values():
        acc["p95_mean"] = acc.pop("p95_wsum") / acc["runs"] if acc["runs"] else 0.0
    return totals
