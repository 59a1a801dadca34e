"""Every audited write to pipelines: create, version (with its stages), publish (signs), deprecate, revoke.

A pipeline version's lifecycle is a model version's (`Status`, `TRANSITIONS` in models.py), changed only
here with guarded updates, each writing a `PipelineEvent` and an audit entry in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record
from protocol import signing
from protocol.pipelines import (
    MAX_STAGES,
    PIPELINE_MANIFEST_SCHEMA_VERSION,
    Condition,
    PipelineManifest,
    StageManifest,
    condition_errors,
)

from . import keys
from .exceptions import InvalidTransition
from .models import (
    ModelVersion,
    Pipeline,
    PipelineEvent,
    PipelineStage,
    PipelineVersion,
    RegisteredModel,
    Status,
    allowed_from,
)


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
        _event(version, actor=actor, from_status="", to_status=Status.DRAFT)
        audit_record(
            actor=actor,
            action="pipeline_version.create",
            object_type="pipeline_version",
            object_id=version.pk,
            object_repr=str(version),
            changes={
                "number": number,
                "stages": [
                    {"name": s["name"], "version": str(s["version"]), "condition": s.get("condition")} for s in stages
                ],
            },
        )
    return version


def _event(version: PipelineVersion, *, actor: Actor, from_status: str, to_status: str, reason: str = "") -> None:
    PipelineEvent.objects.create(
        pipeline_version=version,
        from_status=from_status,
        to_status=to_status,
        actor=actor.label[:200],
        reason=reason,
        at=timezone.now(),
    )


def build_pipeline_manifest(version: PipelineVersion, published_at: Any) -> PipelineManifest:
    stages: list[StageManifest] = [
        {
            "name": stage.name,
            "model": stage.version.model.name,
            "model_id": stage.version.model_id,
            "version": stage.version.number,
            "format": stage.version.format,
            "sha256": stage.version.sha256,
            "size": stage.version.size,
            "condition": stage.condition,
        }
        for stage in version.ordered_stages()
    ]
    return {
        "schema_version": PIPELINE_MANIFEST_SCHEMA_VERSION,
        "kind": "pipeline",
        "pipeline": version.pipeline.name,
        "pipeline_id": version.pipeline_id,
        "version": version.number,
        "stages": stages,
        "published_at": published_at.isoformat(),
    }


def _refuse(version_pk: int, target: str, verb: str) -> PipelineVersion:
    current = PipelineVersion.objects.select_related("pipeline").get(pk=version_pk)
    if current.status == target:
        return current
    sources = ", ".join(sorted(allowed_from(target)))
    raise InvalidTransition(
        f"cannot {verb} pipeline version {current.number}: it is {current.status} "
        f"(only {sources} versions can be {target})"
    )


def pipeline_version_publish(*, actor: Actor, version: PipelineVersion) -> PipelineVersion:
    """Sign and publish a draft whose stages are all still published. Re-publishing is a no-op.

    The manifest names each stage's model, version, format, sha256 and size, so one signature covers
    the whole chain; the stages' own signed manifests still travel with each stage to the device.
    """
    key = keys.active_key()
    with transaction.atomic():
        locked = (
            PipelineVersion.objects.select_for_update()
            .filter(pk=version.pk, status__in=allowed_from(Status.PUBLISHED))
            .first()
        )
        if locked is None:
            return _refuse(version.pk, Status.PUBLISHED, "publish")
        locked = PipelineVersion.objects.with_stages().get(pk=locked.pk)
        stale = [str(stage.version) for stage in locked.ordered_stages() if not stage.version.is_deployable]
        if stale:
            raise InvalidTransition(f"cannot publish: stage versions no longer published: {', '.join(stale)}")
        now = timezone.now()
        manifest_text = signing.canonical_text(build_pipeline_manifest(locked, now))
        signature = signing.sign(key.private_key, manifest_text)
        PipelineVersion.objects.filter(pk=locked.pk, status__in=allowed_from(Status.PUBLISHED)).update(
            status=Status.PUBLISHED,
            published_at=now,
            manifest=manifest_text,
            signature=signature,
            key_id=key.key_id,
            updated_at=now,
        )
        locked.refresh_from_db()
        _event(locked, actor=actor, from_status=Status.DRAFT, to_status=Status.PUBLISHED)
        audit_record(
            actor=actor,
            action="pipeline_version.publish",
            object_type="pipeline_version",
            object_id=locked.pk,
            object_repr=str(locked),
            changes={
                "status": {"before": Status.DRAFT, "after": Status.PUBLISHED},
                "key_id": key.key_id,
                "stages": [stage.version.sha256 for stage in locked.ordered_stages()],
            },
        )
    return locked


def _simple_transition(
    *,
    actor: Actor,
    version: PipelineVersion,
    target: str,
    verb: str,
    reason: str,
    stamp: str,
    extra: dict[str, Any] | None = None,
) -> PipelineVersion:
    with transaction.atomic():
        before = (
            PipelineVersion.objects.select_for_update().filter(pk=version.pk).values_list("status", flat=True).get()
        )
        now = timezone.now()
        updated = PipelineVersion.objects.filter(pk=version.pk, status__in=allowed_from(target)).update(
            status=target, updated_at=now, **{stamp: now}, **(extra or {})
        )
        if not updated:
            return _refuse(version.pk, target, verb)
        current = PipelineVersion.objects.select_related("pipeline").get(pk=version.pk)
        _event(current, actor=actor, from_status=before, to_status=target, reason=reason)
        changes: dict[str, Any] = {"status": {"before": before, "after": target}}
        if reason:
            changes["reason"] = reason
        audit_record(
            actor=actor,
            action=f"pipeline_version.{verb}",
            object_type="pipeline_version",
            object_id=current.pk,
            object_repr=str(current),
            changes=changes,
        )
    return current


def pipeline_version_deprecate(*, actor: Actor, version: PipelineVersion, reason: str = "") -> PipelineVersion:
    """Published -> deprecated: devices keep running it, no new deployment may pick it. Idempotent."""
    return _simple_transition(
        actor=actor,
        version=version,
        target=Status.DEPRECATED,
        verb="deprecate",
        reason=reason,
        stamp="deprecated_at",
    )


def pipeline_version_revoke(*, actor: Actor, version: PipelineVersion, reason: str) -> PipelineVersion:
    """Any non-revoked version -> revoked, for good (a reason is mandatory). Idempotent."""
    if not reason.strip():
        raise ValueError("a revocation needs a reason")
    return _simple_transition(
        actor=actor,
        version=version,
        target=Status.REVOKED,
        verb="revoke",
        reason=reason,
        stamp="revoked_at",
        extra={"revoked_reason": reason},
    )
