"""Draft rollouts: the plan checked and stored (a frozen `RolloutPlan`, every default filled in, the seed
fixed), the targets resolved into waves, incompatible devices excluded with their reasons. `rollout_start`
resolves the targets again (`_store_targets`); `rollout_preview` shows them without writing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pydantic
from django.db import transaction

from audit.actors import Actor
from audit.services import audit_record
from models_registry.deployables import Deployable, deployable_columns, deployable_field

from ..exceptions import PlanInvalid
from ..models import Rollout, RolloutEvent, RolloutStatus, RolloutTarget, Wave
from ..plan import RolloutPlan
from ..rollout_plan import Plan, plan_rollout, resolve_target
from .rollout_counts import rollout_counts_reset


def _check_version(version: Deployable) -> None:
    if not version.is_deployable:
        raise PlanInvalid(
            f"version {version} is {version.status}: only published versions are rolled out",
            field=deployable_field(version),
        )


def as_plan(plan: RolloutPlan | Mapping[str, Any]) -> RolloutPlan:
    """A RolloutPlan from a plan or a plain mapping (scripts, tests); PlanInvalid names the wrong field."""
    if isinstance(plan, RolloutPlan):
        return plan
    try:
        return RolloutPlan.model_validate(dict(plan))
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise PlanInvalid(error["msg"], field=field) from None


def rollout_preview(*, version: Deployable, plan: RolloutPlan | Mapping[str, Any]) -> Plan:
    """What a rollout with this plan would do now: waves' sizes and excluded devices. Writes nothing."""
    _check_version(version)
    plan = as_plan(plan)
    devices = resolve_target(plan.target).with_inventory().select_related("site")
    planned = plan_rollout(
        version=version,
        devices=devices,
        waves=plan.waves,
        seed=plan.seed or 0,
        tier_aware=plan.tier_aware,
    )
    if not planned.included and not planned.excluded:
        raise PlanInvalid("the target matches no device", field="target")
    return planned


def _store_targets(rollout: Rollout) -> Plan:
    planned = rollout_preview(version=rollout.deployable, plan=rollout.plan.model_copy(update={"seed": rollout.seed}))
    RolloutTarget.objects.filter(rollout=rollout).delete()
    waves = {w.index: w for w in rollout.waves.all()}
    for index, size in enumerate(planned.wave_sizes):
        Wave.objects.filter(pk=waves[index].pk).update(size=size)
    rows = [
        RolloutTarget(
            rollout=rollout,
            device=p.device,
            wave=waves[p.wave] if p.wave is not None else None,
            excluded_reasons=p.excluded,
            **deployable_columns(p.baseline, prefix="baseline_", family=False),
            profile=p.profile,
            site_id=p.device.site_id,
            tier=p.device.tier,
            order=p.order,
        )
        for p in [*planned.included, *planned.excluded]
    ]
    RolloutTarget.objects.bulk_create(rows, batch_size=1000)
    rollout_counts_reset(rollout)
    return planned


@transaction.atomic
def rollout_create(
    *, actor: Actor, version: Deployable, plan: RolloutPlan | Mapping[str, Any], name: str = ""
) -> Rollout:
    """A draft rollout of a model version or a pipeline version: plan stored (a RolloutPlan, every default
    filled in, the seed fixed), targets resolved, incompatible devices excluded with their reasons (for a
    pipeline, every stage's).

    Nothing is sent until `rollout_start`. PlanInvalid (400) names the wrong field.
    """
    _check_version(version)
    plan = as_plan(plan)
    seed = plan.seed if plan.seed is not None else random.SystemRandom().randrange(2**31)
    plan = plan.model_copy(update={"seed": seed})
    rollout = Rollout.objects.create(
        name=name or f"{version.family_name} v{version.number}",
        **deployable_columns(version),
        plan=plan,
        seed=seed,
        created_by=actor.label,
    )
    for index, spec in enumerate(plan.waves):
        Wave.objects.create(rollout=rollout, index=index, spec=spec.stored(), requires_approval=spec.approval)
    planned = _store_targets(rollout)
    if not planned.included:
        raise PlanInvalid(
            f"no device of the target can get {version}: {planned.summary()['excluded_reasons']}", field="target"
        )
    RolloutEvent.objects.create(rollout=rollout, to_status=RolloutStatus.DRAFT, actor=actor.label)
    audit_record(
        actor=actor,
        action="rollout.create",
        object_type="rollout",
        object_id=rollout.pk,
        object_repr=str(version),
        changes={deployable_field(version): str(version), "plan": plan.stored(),
                 "wave_sizes": planned.wave_sizes, "excluded": len(planned.excluded)},
    )  # fmt: skip
    return rollout
