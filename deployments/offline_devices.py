"""Devices that can't answer: what a wave does with devices unreachable when its dispatch starts, and the
bound on jobs their devices never start. Called by the rollout tick (services/tick.py `_install`),
inside its transaction.

* `wave_place_unreachable` runs once per wave, when its dispatch starts: each device of the wave that is
  not reachable (`Device.objects.reachable`: online and heard from within DEVICE_STALE_AFTER_SECONDS) is
  handled by the plan's `offline_devices` — "replace" swaps it with a reachable device of the same
  hardware profile (and the same site and tier) from a later wave, not yet dispatched; "defer" (and
  "replace" with no match) moves it to the next wave, after that wave's own devices; "dispatch" sends it
  its job anyway. The last wave has no later wave: its unreachable devices are dispatched. The wave
  records how many of its devices were reachable (`online_at_dispatch`) and who moved where
  (`offline_at_dispatch`), which the install gate's record repeats.
* `wave_expire_queued` times out the wave's jobs still QUEUED after the plan's `queued_timeout` (the
  device never started them); the install gate counts them as "not started", apart from failures.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict

from django.db.models import Max

from audit.actors import Actor
from audit.services import audit_record
from fleet.models import Device

from .models import Job, JobKind, JobStatus, Rollout, RolloutTarget, Wave
from .services.job_endings import jobs_expire_queued
from .services.rollout_counts import rollout_counts_tracked


class Replacement(TypedDict):
    device: str  # the unreachable device's uid
    by: str  # the uid of the reachable device that took its place


class OfflineMoves(TypedDict):
    """What became of a wave's unreachable devices (uids); stored as `Wave.offline_at_dispatch`."""

    replaced: list[Replacement]
    deferred: list[str]
    dispatched: list[str]


def _matches(candidate: RolloutTarget, target: RolloutTarget, spec: dict[str, Any]) -> bool:
    """A replacement keeps the wave's hardware mix and any site or tier pin of the wave."""
    return (
        candidate.profile == target.profile
        and (spec.get("site") is None or candidate.site_id == target.site_id)
        and (spec.get("tier") is None or candidate.tier == target.tier)
    )


def wave_place_unreachable(*, actor: Actor, rollout: Rollout, wave: Wave, now: dt.datetime) -> OfflineMoves:
    """Replace, defer or dispatch the wave's unreachable devices (once: a wave with `online_at_dispatch`
    set is left alone). Audited when a device moved. Returns what it recorded on the wave."""
    if wave.online_at_dispatch is not None:
        recorded: OfflineMoves = wave.offline_at_dispatch  # set with online_at_dispatch, below
        return recorded
    mode = rollout.plan.offline_devices
    targets = list(
        RolloutTarget.objects.filter(wave=wave, install_job__isnull=True, skip_reason="").select_related("device")
    )
    reachable = set(
        Device.objects.reachable(now).filter(pk__in=[t.device_id for t in targets]).values_list("pk", flat=True)
    )
    unreachable = [t for t in targets if t.device_id not in reachable]
    following = Wave.objects.filter(rollout=rollout, index=wave.index + 1).first()
    moves: OfflineMoves = {"replaced": [], "deferred": [], "dispatched": []}
    if unreachable and (mode == "dispatch" or following is None):
        moves["dispatched"] = [t.device.uid for t in unreachable]
    elif unreachable and following is not None:
        candidates: list[RolloutTarget] = []
        if mode == "replace" and wave.spec.get("group") is None:  # a group pin: membership is not on the target
            candidates = list(
                RolloutTarget.objects.filter(
                    rollout=rollout, wave__index__gt=wave.index, install_job__isnull=True, skip_reason="",
                    device__in=Device.objects.reachable(now),
                )
                .select_related("device", "wave")
                .order_by("wave__index", "order")
            )  # fmt: skip
        last_order = RolloutTarget.objects.filter(rollout=rollout).aggregate(m=Max("order"))["m"] or 0
        changed: list[RolloutTarget] = []
        deferred = 0
        for target in unreachable:
            match = next((c for c in candidates if _matches(c, target, wave.spec)), None)
            if match is not None:
                candidates.remove(match)
                target.wave, match.wave = match.wave, wave
                target.order, match.order = match.order, target.order
                changed += [target, match]
                moves["replaced"].append({"device": target.device.uid, "by": match.device.uid})
            else:
                last_order += 1
                target.wave, target.order = following, last_order  # after the next wave's own devices
                changed.append(target)
                deferred += 1
                moves["deferred"].append(target.device.uid)
        with rollout_counts_tracked(t.pk for t in changed):
            RolloutTarget.objects.bulk_update(changed, ["wave", "order"], batch_size=1000)
        if deferred:
            Wave.objects.filter(pk=following.pk).update(size=following.size + deferred)
            wave.size -= deferred
    online = Device.objects.reachable(now).filter(pk__in=RolloutTarget.objects.filter(wave=wave).values("device_id"))
    wave.online_at_dispatch = online.count()
    wave.offline_at_dispatch = moves
    Wave.objects.filter(pk=wave.pk).update(
        size=wave.size, online_at_dispatch=wave.online_at_dispatch, offline_at_dispatch=moves
    )
    if moves["replaced"] or moves["deferred"]:
        audit_record(
            actor=actor, action="wave.offline_devices", object_type="rollout", object_id=rollout.pk,
            object_repr=f"wave {wave.index}", changes={"wave": wave.index, "offline_devices": mode, **moves},
        )  # fmt: skip
    return moves


def wave_expire_queued(*, actor: Actor, rollout: Rollout, wave: Wave, now: dt.datetime) -> list[Job]:
    """Time out the wave's install jobs still QUEUED after the plan's queued timeout."""
    timeout = rollout.plan.queued_timeout
    due = list(
        Job.objects.filter(
            rollout=rollout, wave=wave, kind=JobKind.INSTALL, status=JobStatus.QUEUED,
            created_at__lte=now - dt.timedelta(seconds=timeout),
        ).values_list("pk", flat=True)
    )  # fmt: skip
    return jobs_expire_queued(actor=actor, job_ids=due, queued_timeout=timeout) if due else []
