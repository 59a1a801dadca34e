"""Installations: what each device runs. A succeeded job's target becomes its device's current installation
(`_record_installations`, called by every path that moves a job to SUCCEEDED); a factory image is recorded
without a job (`installations_preinstall`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import AuditSpec, audit_record_many
from core.resolve_cache import resolve_cache_invalidate
from fleet.models import Device
from models_registry.compatibility import profile_of, reasons_for
from models_registry.deployables import Family, deployable_columns, family_filter, paired_column_ids
from models_registry.models import ModelVersion

from ..exceptions import DeploymentRefused
from ..models import Installation, Job


def _record_installations(jobs: Sequence[Job], at: dt.datetime) -> None:
    """The succeeded jobs' targets become their devices' current installations (the previous ones end)."""
    if not jobs:
        return
    by_family: dict[Family, list[Job]] = {}
    for job in jobs:
        by_family.setdefault(job.family, []).append(job)
    for family, members in by_family.items():
        Installation.objects.filter(
            family_filter(family), device_id__in=[j.device_id for j in members], until__isnull=True
        ).update(until=at)
    Installation.objects.bulk_create(
        [Installation(device_id=j.device_id, job=j, since=at, **paired_column_ids(j)) for j in jobs]
    )
    # endpoints resolve model names only (core/resolve_cache.py)
    if any(kind == "model" for kind, _ in by_family):
        resolve_cache_invalidate()


@dataclass(frozen=True)
class PreinstallResult:
    installed: list[Installation]
    skipped: dict[str, str]  # device uid -> why it was left alone


@transaction.atomic
def installations_preinstall(*, actor: Actor, version: ModelVersion, devices: Sequence[Device]) -> PreinstallResult:
    """Record `version` as what `devices` already run: a factory image, put there without a job (the demo's
    baseline, or a fleet imaged before it was enrolled).

    Guarantees: only a published, deployable version; a device that is revoked, cannot run it
    (compatibility reasons) or already has a current installation of the model is skipped with the reason,
    so a re-run changes nothing. Each new Installation is audited (`installation.preinstalled`) in this
    transaction; rollouts then take it as the device's baseline.
    """
    if not version.is_deployable:
        raise DeploymentRefused(f"{version} is {version.status}, not deployable")
    requirements = version.compatibility_requirements()
    ids = [d.pk for d in devices]
    rows = Device.objects.filter(pk__in=ids).prefetch_related("runtimes").order_by("pk")
    current = set(
        Installation.objects.filter(family_filter(version.family), device__in=ids, until__isnull=True).values_list(
            "device_id", flat=True
        )
    )
    now = timezone.now()
    created: list[Installation] = []
    skipped: dict[str, str] = {}
    for device in rows:
        if device.is_revoked:
            skipped[device.uid] = "revoked"
        elif device.pk in current:
            skipped[device.uid] = f"already runs a version of {version.model.name}"
        elif reasons := reasons_for(requirements, profile_of(device, device.runtimes.all())):
            skipped[device.uid] = "; ".join(reasons)
        else:
            created.append(Installation(device=device, **deployable_columns(version), since=now))
    Installation.objects.bulk_create(created)
    changes = {"model": version.model.name, "version": version.number}
    audit_record_many(
        [
            AuditSpec(actor, "installation.preinstalled", "device", i.device.pk, i.device.uid, dict(changes))
            for i in created
        ]
    )
    if created:
        resolve_cache_invalidate()
    return PreinstallResult(created, skipped)
