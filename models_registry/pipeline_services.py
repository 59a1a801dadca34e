"""Every audited write to pipelines: create, version (with its stages), publish (signs), deprecate, revoke.

A pipeline version's lifecycle is a model version's, and so is its implementation (lifecycle.py): guarded
updates along `TRANSITIONS` (models.py), each writing a `PipelineEvent` and an audit entry in the same
transaction and broadcasting the new status on commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from audit.actors import Actor
from audit.services import audit_record
from protocol.pipelines import MAX_STAGES, Condition, condition_errors

from . import lifecycle
from .lifecycle import PIPELINE_VERSION
from .models import ModelVersion, Pipeline, PipelineStage, PipelineVersion, RegisteredModel


class StageSpec(TypedDict):
    name: str
    version: ModelVersion
    condition: Condition | None


@transaction.atomic
def pipeline_create(*, actor: Actor, name: str, description: str = "", owner: Any = None) -> Pipeline:
    """A new pipeline. Its name may not be a model's: devices and telemetry know both by name alone."""
    if RegisteredModel.objects.filter(name=name).exists():
        raise ValidationError({"name": [f"a model is already named {name!r}; pipelines and models share names"]})
    pipeline = Pipeline(name=name, description=description, owner=owner)
    pipeline.full_clean()
    pipeline.save()
    audit_record(
        actor=actor,
        action="pipeline.create",
        object_type="pipeline",
        object_id=pipeline.pk,
        object_repr=pipeline.name,
        changes={"name": name, "description": description},
    )
    return pipeline


def _output_names(version: ModelVersion) -> set[str] | None:
    """The output names the version declares in its io_signature; None when it declares none."""
    outputs = (version.io_signature or {}).get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return None
    return {str(item.get("name")) for item in outputs if isinstance(item, dict)}


def _check_stages(stages: Sequence[StageSpec]) -> None:
    """Every reason the chain is invalid, as field errors `stages[i].field`."""
    errors: dict[str, list[str]] = {}
    if not 1 <= len(stages) <= MAX_STAGES:
        raise ValidationError({"stages": [f"a pipeline has 1 to {MAX_STAGES} stages, got {len(stages)}"]})
    names = [stage["name"] for stage in stages]
    for index, stage in enumerate(stages):
        version, condition = stage["version"], stage.get("condition")
        if names.index(stage["name"]) != index:
            errors.setdefault(f"stages[{index}].name", []).append(f"stage name {stage['name']!r} is used twice")
        if not version.is_deployable:
            errors.setdefault(f"stages[{index}].version", []).append(
                f"{version} is {version.status}: stages must be published versions"
            )
        if index == 0 and condition is not None:
            errors.setdefault(f"stages[{index}].condition", []).append("the first stage has no previous output to test")
            continue
        problems = condition_errors(condition)
        if not problems and condition is not None:
            declared = _output_names(stages[index - 1]["version"])
            if declared is not None and condition["output"] not in declared:
                problems.append(
                    f"the previous stage ({stages[index - 1]['version']}) has no output {condition['output']!r}; "
                    f"it has {', '.join(sorted(declared))}"
                )
        if problems:
            errors.setdefault(f"stages[{index}].condition", []).extend(problems)
    if errors:
        raise ValidationError(errors)


def pipeline_version_create(
    *, actor: Actor, pipeline: Pipeline, stages: Sequence[StageSpec], created_by: Any = None
) -> PipelineVersion:
    """The next draft version of `pipeline` with its ordered stages (published model versions only)."""
    _check_stages(stages)
    with transaction.atomic():
        Pipeline.objects.select_for_update().filter(pk=pipeline.pk).get()  # serializes number assignment
        number = (pipeline.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        version = PipelineVersion.objects.create(pipeline=pipeline, number=number, created_by=created_by)
        for position, stage in enumerate(stages):
            row = PipelineStage(
                pipeline_version=version,
                position=position,
                name=stage["name"],
                version=stage["version"],
                condition=stage.get("condition"),
            )
            row.full_clean(exclude=["pipeline_version"])
            row.save()
        lifecycle.version_created(
            PIPELINE_VERSION,
            actor=actor,
            version=version,
            changes={
                "number": number,
                "stages": [
                    {"name": s["name"], "version": str(s["version"]), "condition": s.get("condition")} for s in stages
                ],
            },
        )
    return version


def pipeline_version_publish(*, actor: Actor, version: PipelineVersion) -> PipelineVersion:
    """Sign and publish a draft whose stages are all still published. Re-publishing is a no-op.

    The manifest names each stage's model, version, format, sha256 and size, so one signature covers
    the whole chain; the stages' own signed manifests still travel with each stage to the device. The
    rule is the registry's one lifecycle (lifecycle.py), as for a model version.
    """
    return lifecycle.version_publish(PIPELINE_VERSION, actor=actor, version=version)


def pipeline_version_deprecate(*, actor: Actor, version: PipelineVersion, reason: str = "") -> PipelineVersion:
    """Published -> deprecated: devices keep running it, no new deployment may pick it. Idempotent."""
    return lifecycle.version_deprecate(PIPELINE_VERSION, actor=actor, version=version, reason=reason)


def pipeline_version_revoke(*, actor: Actor, version: PipelineVersion, reason: str) -> PipelineVersion:
    """Any non-revoked version -> revoked, for good (a reason is mandatory). Idempotent."""
    return lifecycle.version_revoke(PIPELINE_VERSION, actor=actor, version=version, reason=reason)
