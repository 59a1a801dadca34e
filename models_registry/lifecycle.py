"""The one lifecycle of registry versions, for model versions and pipeline versions alike.

A version is created as a draft, then published (signed), deprecated or revoked along `TRANSITIONS`
(models.py). Every move is a guarded update (core.transitions): a move writes its event row and its audit
entry in the same transaction and, once that commits, broadcasts the version's new status on the registry's
channel-layer group; already there is a no-op that writes and broadcasts nothing; a forbidden move raises
InvalidTransition naming the states the target may be reached from.

What differs between the two kinds is a `VersionKind` (which rows, how messages name a version, what is
signed, what a publish records or checks, what a revoke undoes); the two are at the bottom of this module.
`services.py` (model versions) and `pipeline_services.py` (pipeline versions) call these functions with theirs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record
from core.resolve_cache import resolve_cache_invalidate
from core.transitions import transition
from protocol import signing

from . import keys
from .exceptions import InvalidTransition
from .manifests import build_manifest, build_pipeline_manifest
from .models import Alias, ModelVersion, PipelineEvent, PipelineVersion, Status, VersionEvent, allowed_from

# The channel-layer group every registry status change is broadcast to, as `<object_type>.status` events
# (`model_version.status`, `pipeline_version.status`) with the version's id, parent id, number and status.
REGISTRY_GROUP = "models"

V = TypeVar("V", ModelVersion, PipelineVersion)


@dataclass(frozen=True)
class VersionKind(Generic[V]):
    """The facts of one kind of version that the shared lifecycle needs."""

    model: type[V]
    object_type: str  # the audit entries' object type and action prefix, and the broadcast event's prefix
    noun: str  # how messages name one: "version 3", "pipeline version 3"
    parent: str  # the foreign key to what it is a version of (the registered model, the pipeline)
    event_model: type[models.Model]  # the row each transition writes (the version's timeline)
    event_field: str  # that row's foreign key to the version
    manifest: Callable[[V, dt.datetime], Mapping[str, Any]]  # what a publish signs
    publish_rows: Callable[[], QuerySet[V]]  # the version as the manifest reads it
    publish_changes: Callable[[V], dict[str, Any]]  # what the publish audit entry adds to status and key id
    publish_check: Callable[[V], None] | None = None  # raises InvalidTransition when it may not be published
    on_revoke: Callable[[V], dict[str, Any]] | None = None  # undoes what must not outlive it; adds to the audit

    def label(self, number: int) -> str:
        return f"{self.noun} {number}"

    @property
    def status_event(self) -> str:
        return f"{self.object_type}.status"


# --- side effects ---------------------------------------------------------------------------------
def _event(
    kind: VersionKind[V], version: V, *, actor: Actor, from_status: str, to_status: str, reason: str = ""
) -> None:
    kind.event_model._default_manager.create(
        **{kind.event_field: version},
        from_status=from_status,
        to_status=to_status,
        actor=actor.label[:200],
        reason=reason,
        at=timezone.now(),
    )


def _broadcast_status(event: str, payload: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(REGISTRY_GROUP, {"type": event, "payload": payload})


def _schedule_broadcast(kind: VersionKind[V], version: V) -> None:
    payload = {
        "id": version.pk,
        kind.parent: getattr(version, f"{kind.parent}_id"),
        "number": version.number,
        "status": version.status,
    }
    event = kind.status_event
    transaction.on_commit(lambda: _broadcast_status(event, payload))


def _refuse(kind: VersionKind[V], version_pk: int, target: str, verb: str) -> V:
    """After a guarded update touched no row: the version if it already is in `target`, else raise."""
    current = kind.model._default_manager.select_related(kind.parent).get(pk=version_pk)
    if current.status == target:
        return current
    sources = ", ".join(sorted(allowed_from(target)))
    raise InvalidTransition(
        f"cannot {verb} {kind.label(current.number)}: it is {current.status} (only {sources} versions can be {target})"
    )


# --- the lifecycle --------------------------------------------------------------------------------
def version_created(kind: VersionKind[V], *, actor: Actor, version: V, changes: dict[str, Any]) -> None:
    """In the caller's transaction, after it saved the new draft: its first event ("" -> draft), the
    `<object_type>.create` audit entry with `changes`, and the broadcast on commit."""
    _event(kind, version, actor=actor, from_status="", to_status=Status.DRAFT)
    audit_record(
        actor=actor,
        action=f"{kind.object_type}.create",
        object_type=kind.object_type,
        object_id=version.pk,
        object_repr=str(version),
        changes=changes,
    )
    _schedule_broadcast(kind, version)


def version_publish(kind: VersionKind[V], *, actor: Actor, version: V) -> V:
    """Sign and publish a draft: the canonical manifest text, its base64 Ed25519 signature and the key id
    are stored on the version, which is immutable from here on. Publishing a published version is a no-op
    (nothing re-signed, no event, no audit entry, no broadcast)."""
    key = keys.active_key()  # may create the embedded default's first key: outside the transaction
    with transaction.atomic():
        locked = (
            kind.model._default_manager.select_for_update()
            .filter(pk=version.pk, status__in=allowed_from(Status.PUBLISHED))
            .first()
        )
        if locked is None:
            return _refuse(kind, version.pk, Status.PUBLISHED, "publish")
        locked = kind.publish_rows().get(pk=locked.pk)
        if kind.publish_check is not None:
            kind.publish_check(locked)
        before = locked.status
        now = timezone.now()
        manifest_text = signing.canonical_text(dict(kind.manifest(locked, now)))
        signature = signing.sign(key.private_key, manifest_text)
        transition(
            kind.model, pk=locked.pk, current=before, to=Status.PUBLISHED, label=kind.label(locked.number),
            published_at=now, manifest=manifest_text, signature=signature, key_id=key.key_id, updated_at=now,
        )  # fmt: skip
        locked.refresh_from_db()
        _event(kind, locked, actor=actor, from_status=before, to_status=Status.PUBLISHED)
        audit_record(
            actor=actor,
            action=f"{kind.object_type}.publish",
            object_type=kind.object_type,
            object_id=locked.pk,
            object_repr=str(locked),
            changes={
                "status": {"before": before, "after": Status.PUBLISHED},
                "key_id": key.key_id,
                **kind.publish_changes(locked),
            },
        )
        _schedule_broadcast(kind, locked)
    return locked


def _move(
    kind: VersionKind[V],
    *,
    actor: Actor,
    version: V,
    target: str,
    verb: str,
    reason: str,
    stamp: str,
    extra: dict[str, Any] | None = None,
) -> V:
    """`verb` the version: a guarded update to `target` stamping `stamp`, with its event, audit entry and
    broadcast; already there is a no-op (nothing written), a forbidden move InvalidTransition."""
    with transaction.atomic():
        before = (
            kind.model._default_manager.select_for_update().filter(pk=version.pk).values_list("status", flat=True).get()
        )
        fields: dict[str, Any] = {stamp: timezone.now(), **(extra or {})}
        try:
            moved = transition(
                kind.model, pk=version.pk, current=before, to=target, label=kind.label(version.number), **fields
            )
        except InvalidTransition:
            _refuse(kind, version.pk, target, verb)  # the same refusal, worded with the states it could come from
            raise
        current = kind.model._default_manager.select_related(kind.parent).get(pk=version.pk)
        if not moved.changed:
            return current
        _event(kind, current, actor=actor, from_status=before, to_status=target, reason=reason)
        changes: dict[str, Any] = {"status": {"before": before, "after": target}}
        if reason:
            changes["reason"] = reason
        if target == Status.REVOKED and kind.on_revoke is not None:
            changes.update(kind.on_revoke(current))
        audit_record(
            actor=actor,
            action=f"{kind.object_type}.{verb}",
            object_type=kind.object_type,
            object_id=current.pk,
            object_repr=str(current),
            changes=changes,
        )
        _schedule_broadcast(kind, current)
    return current


def version_deprecate(kind: VersionKind[V], *, actor: Actor, version: V, reason: str = "") -> V:
    """Published -> deprecated: devices keep running it, no new deployment may pick it. Idempotent."""
    return _move(
        kind, actor=actor, version=version, target=Status.DEPRECATED, verb="deprecate", reason=reason,
        stamp="deprecated_at",
    )  # fmt: skip


def version_revoke(kind: VersionKind[V], *, actor: Actor, version: V, reason: str) -> V:
    """Any non-revoked version -> revoked, for good: never deployable again (the kind's `on_revoke` removes
    what could still lead to it). The reason is mandatory and kept on the version, its event and the audit
    entry. Idempotent: a second revoke keeps the first reason."""
    if not reason.strip():
        raise ValueError("a revocation needs a reason")
    return _move(
        kind, actor=actor, version=version, target=Status.REVOKED, verb="revoke", reason=reason,
        stamp="revoked_at", extra={"revoked_reason": reason},
    )  # fmt: skip


# --- the two kinds --------------------------------------------------------------------------------
def _remove_aliases(version: ModelVersion) -> dict[str, Any]:
    """An alias must never lead a rollout to a revoked version."""
    removed = sorted(Alias.objects.filter(version=version).values_list("name", flat=True))
    Alias.objects.filter(version=version).delete()
    if not removed:
        return {}
    resolve_cache_invalidate()
    return {"aliases_removed": removed}


def _stages_still_published(version: PipelineVersion) -> None:
    stale = [str(stage.version) for stage in version.ordered_stages() if not stage.version.is_deployable]
    if stale:
        raise InvalidTransition(f"cannot publish: stage versions no longer published: {', '.join(stale)}")


MODEL_VERSION: VersionKind[ModelVersion] = VersionKind(
    model=ModelVersion,
    object_type="model_version",
    noun="version",
    parent="model",
    event_model=VersionEvent,
    event_field="version",
    manifest=build_manifest,
    publish_rows=lambda: ModelVersion.objects.select_related("model"),
    publish_changes=lambda version: {"sha256": version.sha256},
    on_revoke=_remove_aliases,
)

PIPELINE_VERSION: VersionKind[PipelineVersion] = VersionKind(
    model=PipelineVersion,
    object_type="pipeline_version",
    noun="pipeline version",
    parent="pipeline",
    event_model=PipelineEvent,
    event_field="pipeline_version",
    manifest=build_pipeline_manifest,
    publish_rows=lambda: PipelineVersion.objects.with_stages(),
    # the signed manifest names each stage; the audit entry keeps their sha256s
    publish_changes=lambda version: {"stages": [stage.version.sha256 for stage in version.ordered_stages()]},
    publish_check=_stages_still_published,
)
