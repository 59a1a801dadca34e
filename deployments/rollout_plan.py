"""Rollout plans: which devices a rollout covers, what they run now, and which wave each one is in.

Pure planning, no writes: `rollout_create` stores the result, `preview` shows it. Wave membership is
chosen by seeded stratified sampling: each wave's quota is spread over hardware profiles
(arch, cpu, accelerator) in proportion to what is left of each, then over sites within a profile, so a
1 % canary already touches every kind of hardware the rollout will reach. Within a stratum, devices that
are reachable now (online and heard from recently, `Device.is_reachable`) are picked first, so early
waves go to devices that can answer; the rest fill the later waves. The same seed and the same devices
online give the same waves.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from fleet.models import Device, DeviceGroup, DeviceQuerySet
from fleet.selectors import devices_matching, group_members
from models_registry.compatibility import profile_of, reasons_for
from models_registry.deployables import Deployable, deployable_of, family_filter, family_versions

from .exceptions import PlanInvalid
from .models import Installation
from .plan import TargetSpec, WaveSpec

TIER_RANK = {"cloud": 0, "fog": 1, "edge": 2}


def hardware_profile(device: Device) -> str:
    return f"{device.arch}|{device.cpu}|{device.accelerator or 'none'}"


def resolve_target(target: TargetSpec) -> DeviceQuerySet:
    """The devices a target names: a device-list filter, a group or device ids."""
    base = Device.objects.active()
    if target.filter is not None:
        try:
            return devices_matching(target.filter, base)
        except ValueError as exc:
            raise PlanInvalid(str(exc), field="target.filter") from None
    if target.group is not None:
        group = DeviceGroup.objects.filter(pk=target.group).first()
        if group is None:
            raise PlanInvalid(f"no group {target.group}", field="target.group")
        return group_members(group).filter(revoked_at__isnull=True)
    if target.devices is not None:
        ids = list(target.devices)
        found = base.filter(pk__in=ids)
        missing = sorted(set(ids) - set(found.values_list("pk", flat=True)))
        if missing:
            raise PlanInvalid(f"unknown or revoked devices: {missing[:20]}", field="target.devices")
        return found
    raise PlanInvalid("give one of filter, group or devices", field="target")


@dataclass
class PlannedDevice:
    device: Device
    profile: str
    baseline: Deployable | None = None
    wave: int | None = None
    order: int = 0
    excluded: list[str] = field(default_factory=list)
    reachable: bool = True


@dataclass
class Plan:
    included: list[PlannedDevice]
    excluded: list[PlannedDevice]
    wave_sizes: list[int]

    @property
    def wave_online(self) -> list[int]:
        """Per wave, how many of its devices are reachable now."""
        online = [0] * len(self.wave_sizes)
        for planned in self.included:
            if planned.wave is not None and planned.reachable:
                online[planned.wave] += 1
        return online

    def summary(self, limit: int = 200) -> dict[str, Any]:
        reasons: dict[str, int] = defaultdict(int)
        for planned in self.excluded:
            for reason in planned.excluded:
                reasons[reason] += 1
        return {
            "eligible": len(self.included),
            "excluded_count": len(self.excluded),
            "wave_sizes": self.wave_sizes,
            "wave_online": self.wave_online,
            "excluded_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "excluded": [
                {"device": p.device.pk, "uid": p.device.uid, "reasons": p.excluded} for p in self.excluded[:limit]
            ],
        }


def _baselines(devices: Sequence[Device], deployable: Deployable) -> dict[int, Deployable | None]:
    """What each device runs now: its current Installation row, else the version its agent reports."""
    ids = [d.pk for d in devices]
    family = deployable.family
    current = {
        inst.device_id: deployable_of(inst)
        for inst in Installation.objects.filter(
            family_filter(family), device__in=ids, until__isnull=True
        ).select_related("version", "pipeline_version")
    }
    by_number: dict[int, Deployable] = {v.number: v for v in family_versions(family)}
    out: dict[int, Deployable | None] = {}
    for device in devices:
        if device.pk in current:
            out[device.pk] = current[device.pk]
            continue
        active = (device.reported_state or {}).get("active", {}).get(deployable.family_name)
        number = active.get("version") if isinstance(active, dict) else None
        out[device.pk] = by_number.get(number) if isinstance(number, int) else None
    return out


def cumulative_counts(waves: Sequence[WaveSpec], total: int) -> list[int]:
    """Cumulative device counts per wave (percent of the eligible devices, or a count), never decreasing."""
    counts: list[int] = []
    previous = 0
    for spec in waves:
        if spec.percent is not None:
            wanted = math.ceil(total * spec.percent / 100) if total else 0
            wanted = max(wanted, 1) if total and spec.percent > 0 else wanted
        else:
            wanted = int(spec.count or 0)
        previous = max(previous, min(wanted, total))
        counts.append(previous)
    return counts


def _allocate(quota: int, sizes: dict[str, int], rng: random.Random) -> dict[str, int]:
    """Split `quota` over strata in proportion to their sizes (largest remainder, seeded tie-break)."""
    total = sum(sizes.values())
    if quota >= total:
        return dict(sizes)
    exact = {key: quota * size / total for key, size in sizes.items()}
    out = {key: math.floor(value) for key, value in exact.items()}
    keys = list(sizes)
    rng.shuffle(keys)
    keys.sort(key=lambda k: exact[k] - out[k], reverse=True)
    for key in keys:
        if sum(out.values()) >= quota:
            break
        if out[key] < sizes[key]:
            out[key] += 1
    return out


def _stratified_pick(pool: list[PlannedDevice], quota: int, rng: random.Random) -> list[PlannedDevice]:
    """`quota` devices from `pool`, spread over hardware profiles, then over sites within each profile."""
    if quota <= 0:
        return []
    by_profile: dict[str, list[PlannedDevice]] = defaultdict(list)
    for planned in pool:
        by_profile[planned.profile].append(planned)
    picked: list[PlannedDevice] = []
    for profile, share in _allocate(quota, {k: len(v) for k, v in by_profile.items()}, rng).items():
        by_site: dict[str, list[PlannedDevice]] = defaultdict(list)
        for planned in by_profile[profile]:
            by_site[str(planned.device.site_id)].append(planned)
        for site, count in _allocate(share, {k: len(v) for k, v in by_site.items()}, rng).items():
            members = by_site[site]
            reachable = [p for p in members if p.reachable]
            if count <= len(reachable):
                picked.extend(rng.sample(reachable, count))
            else:  # every reachable one, then unreachable ones (when all or none are, as a plain sample)
                rest = [p for p in members if not p.reachable]
                picked.extend(reachable + rng.sample(rest, count - len(reachable)))
    return picked


def _pin_matches(spec: WaveSpec, planned: PlannedDevice, group_ids: dict[int, set[int]]) -> bool:
    device = planned.device
    if spec.site is not None and device.site_id != spec.site:
        return False
    if spec.tier is not None and device.tier != spec.tier:
        return False
    return not (spec.group is not None and device.pk not in group_ids[spec.group])


def plan_rollout(
    *,
    version: Deployable,
    devices: Iterable[Device],
    waves: Sequence[WaveSpec],
    seed: int,
    tier_aware: bool = False,
) -> Plan:
    """Exclude what cannot or need not get `version` (with reasons), then assign waves to the rest.

    With `tier_aware`, cloud nodes and fog gateways fill the earliest waves and are dispatched first, so a
    gateway is never updated after the edge devices behind it.
    """
    requirements = version.for_deployment().compatibility_requirements()
    devices = list(devices)
    now = timezone.now()
    baselines = _baselines(devices, version)
    included: list[PlannedDevice] = []
    excluded: list[PlannedDevice] = []
    cache: dict[Any, list[str]] = {}
    for device in sorted(devices, key=lambda d: d.uid):
        planned = PlannedDevice(
            device=device,
            profile=hardware_profile(device),
            baseline=baselines.get(device.pk),
            reachable=device.is_reachable(now),
        )
        compat = profile_of(device, device.runtimes.all())
        reasons = cache.get(compat)
        if reasons is None:
            reasons = cache[compat] = reasons_for(requirements, compat)
        planned.excluded = list(reasons)
        if planned.baseline is not None and planned.baseline.number == version.number:
            planned.excluded.append(f"already runs version {version.number}")
        elif planned.baseline is not None and planned.baseline.number > version.number:
            planned.excluded.append(
                f"runs newer version {planned.baseline.number}; agents refuse downgrades outside a rollback"
            )
        (excluded if planned.excluded else included).append(planned)

    rng = random.Random(seed)  # noqa: S311 - reproducible sampling, not security
    counts = cumulative_counts(waves, len(included))
    group_ids = {
        spec.group: set(group_members(DeviceGroup.objects.get(pk=spec.group)).values_list("pk", flat=True))
        for spec in waves
        if spec.group is not None and DeviceGroup.objects.filter(pk=spec.group).exists()
    }
    remaining = list(included)
    sizes: list[int] = []
    order = 0
    previous = 0
    for index, (spec, cumulative) in enumerate(zip(waves, counts, strict=True)):
        quota = cumulative - previous
        eligible = [p for p in remaining if _pin_matches(spec, p, group_ids)]
        chosen: list[PlannedDevice] = []
        if tier_aware:
            for rank in sorted({TIER_RANK.get(p.device.tier, 3) for p in eligible}):
                tier_pool = [p for p in eligible if TIER_RANK.get(p.device.tier, 3) == rank]
                chosen += _stratified_pick(tier_pool, quota - len(chosen), rng)
                if len(chosen) >= quota:
                    break
        else:
            chosen = _stratified_pick(eligible, quota, rng)
        chosen.sort(key=lambda p: (TIER_RANK.get(p.device.tier, 3) if tier_aware else 0, p.device.uid))
        for planned in chosen:
            planned.wave = index
            planned.order = order
            order += 1
        taken = {id(p) for p in chosen}
        remaining = [p for p in remaining if id(p) not in taken]
        sizes.append(len(chosen))
        previous += len(chosen)
    return Plan(included=[p for p in included if p.wave is not None], excluded=excluded, wave_sizes=sizes)
