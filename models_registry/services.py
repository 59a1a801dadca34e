"""Every audited write to the model registry. The API, the admin and `sample_models` call these.

Artifacts are content-addressed (`artifacts/<model_id>/<sha256>.<ext>`): the bytes are written to
storage before the database transaction (it can be slow), and removed again if that transaction does
not commit and no other version uses the same key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.files.storage import default_storage
from django.core.signing import Signer
from django.db import transaction
from django.db.models import Max
from django.urls import reverse

from audit.actors import Actor
from audit.services import AuditSpec, audit_record, diff, snapshot
from core.resolve_cache import resolve_cache_invalidate

from . import lifecycle
from .exceptions import ArtifactTooLarge, InvalidTransition, VersionImmutable
from .lifecycle import MODEL_VERSION
from .models import (
    FORMAT_EXTENSIONS,
    Alias,
    ModelVersion,
    Pipeline,
    RegisteredModel,
    Status,
)
from .uploads import hash_stream, max_artifact_bytes

logger = logging.getLogger(__name__)

MODEL_FIELDS = ("name", "task", "description", "owner")
VERSION_FIELDS = (
    "label",
    "framework",
    "format",
    "artifact_key",
    "size",
    "sha256",
    "io_signature",
    "metrics",
    "parent",
    "training_data",
    "code_commit",
    "runtime",
    "min_runtime_version",
    "archs",
    "min_memory_mb",
    "accelerator",
)
# Fields a draft edit may change (the artifact is replaced through `artifact=`, the number never changes).
EDITABLE_FIELDS = frozenset(VERSION_FIELDS) - {"artifact_key", "size", "sha256"}

DOWNLOAD_SALT = "fogdeck.models_registry.artifact-download"


# --- models ---------------------------------------------------------------------------------------
@transaction.atomic
def model_create(
    *, actor: Actor, name: str, task: str = "", description: str = "", owner: Any = None
) -> RegisteredModel:
    if Pipeline.objects.filter(name=name).exists():
        raise ValidationError({"name": [f"a pipeline is already named {name!r}; pipelines and models share names"]})
    model = RegisteredModel(name=name, task=task, description=description, owner=owner)
    model.full_clean()
    model.save()
    audit_record(
        actor=actor,
        action="model.create",
        object_type="model",
        object_id=model.pk,
        object_repr=model.name,
        changes=diff({}, snapshot(model, MODEL_FIELDS)),
    )
    return model


@transaction.atomic
def model_update(*, actor: Actor, model: RegisteredModel, **fields: Any) -> RegisteredModel:
    before = snapshot(model, MODEL_FIELDS)
    for key, value in fields.items():
        setattr(model, key, value)
    model.full_clean()
    model.save()
    changes = diff(before, snapshot(model, MODEL_FIELDS))
    if changes:
        audit_record(
            actor=actor,
            action="model.update",
            object_type="model",
            object_id=model.pk,
            object_repr=model.name,
            changes=changes,
        )
    return model


@transaction.atomic
def model_delete(*, actor: Actor, model: RegisteredModel) -> None:
    """Deletes a model without versions (versions PROTECT their model: ProtectedError otherwise)."""
    before = snapshot(model, MODEL_FIELDS)
    pk, name = model.pk, model.name
    model.delete()
    audit_record(
        actor=actor,
        action="model.delete",
        object_type="model",
        object_id=pk,
        object_repr=name,
        changes=diff(before, {}),
    )


# --- artifacts ------------------------------------------------------------------------------------
def artifact_key(model: RegisteredModel, sha256: str, format: str) -> str:
    return f"artifacts/{model.pk}/{sha256}.{FORMAT_EXTENSIONS[format]}"


def _digest(artifact: IO[bytes]) -> tuple[str, int]:
    """sha256 and size: already computed by the upload handler, or computed here chunk by chunk."""
    sha256, size = getattr(artifact, "sha256", ""), getattr(artifact, "size", None)
    limit = max_artifact_bytes()
    if sha256 and size is not None:
        if size > limit:
            raise ArtifactTooLarge(limit)
        return sha256, size
    if hasattr(artifact, "seek"):
        artifact.seek(0)
    sha256, size = hash_stream(artifact, limit)
    artifact.seek(0)
    return sha256, size


def _delete_if_unreferenced(key: str) -> None:
    if not ModelVersion.objects.filter(artifact_key=key).exists():
        default_storage.delete(key)


@contextmanager
def _stored_artifact(model: RegisteredModel, artifact: IO[bytes], format: str) -> Iterator[tuple[str, str, int]]:
    """Put the artifact at its content-addressed key; undo that if the caller's block fails."""
    sha256, size = _digest(artifact)
    key = artifact_key(model, sha256, format)
    created = False
    if not default_storage.exists(key):  # same bytes for this model already stored: nothing to write
        saved = default_storage.save(key, artifact)
        created = True
        if saved != key:  # a concurrent upload of the same bytes won the race: drop our copy
            default_storage.delete(saved)
            created = False
    try:
        yield key, sha256, size
    except BaseException:
        if created:
            _delete_if_unreferenced(key)
        raise


# --- versions -------------------------------------------------------------------------------------
_REQUIREMENT_DEFAULTS: dict[str, Any] = {
    "runtime": "",
    "min_runtime_version": "",
    "archs": [],
    "min_memory_mb": None,
    "accelerator": "",
}


def _split_nested(requirements: dict[str, Any] | None, lineage: dict[str, Any] | None) -> dict[str, Any]:
    """The API's nested `requirements` and `lineage` objects as model fields (None clears a requirement)."""
    fields: dict[str, Any] = {}
    for key, value in (requirements or {}).items():
        fields[key] = _REQUIREMENT_DEFAULTS[key] if value is None else value
    for key, value in (lineage or {}).items():
        fields[key] = "" if value is None and key != "parent" else value
    return fields


def model_version_create(
    *,
    actor: Actor,
    model: RegisteredModel,
    artifact: IO[bytes],
    format: str,
    framework: str,
    label: str = "",
    metrics: dict[str, float] | None = None,
    io_signature: dict[str, Any] | None = None,
    requirements: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    created_by: Any = None,
) -> ModelVersion:
    """Store the artifact and create the next draft version of `model` (numbers increase, never reused).

    Size and sha256 are the server's own. If anything fails, nothing stays in storage or the database.
    `lineage` may hold `parent` (a version of the same model), `training_data`, `code_commit`.
    """
    with _stored_artifact(model, artifact, format) as (key, sha256, size), transaction.atomic():
        # locking the model row serializes number assignment for concurrent uploads
        RegisteredModel.objects.select_for_update().filter(pk=model.pk).get()
        number = (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        version = ModelVersion(
            model=model,
            number=number,
            label=label,
            framework=framework,
            format=format,
            artifact_key=key,
            size=size,
            sha256=sha256,
            metrics=metrics or {},
            io_signature=io_signature or {},
            created_by=created_by,
            **_split_nested(requirements, lineage),
        )
        _check_parent(version)
        version.full_clean()
        version.save()
        lifecycle.version_created(
            MODEL_VERSION, actor=actor, version=version,
            changes={"number": number, **diff({}, snapshot(version, VERSION_FIELDS))},
        )  # fmt: skip
    return version


def _check_parent(version: ModelVersion) -> None:
    if version.parent is not None and (version.parent.model_id != version.model_id or version.parent.pk == version.pk):
        raise ValidationError({"parent": ["the parent must be another version of the same model"]})


def _immutable(number: int, status: str) -> VersionImmutable:
    return VersionImmutable(f"version {number} is {status}: only drafts can be changed; upload a new version instead")


def model_version_update(
    *,
    actor: Actor,
    version: ModelVersion,
    artifact: IO[bytes] | None = None,
    requirements: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    **fields: Any,
) -> ModelVersion:
    """Edit a draft (metadata and/or a replacement artifact). Anything but a draft raises VersionImmutable
    before a byte is stored."""
    fields.update(_split_nested(requirements, lineage))
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    current = ModelVersion.objects.filter(pk=version.pk).values_list("status", flat=True).get()
    if current != Status.DRAFT:
        raise _immutable(version.number, current)
    if artifact is None:
        with transaction.atomic():
            return _apply_draft_edit(actor=actor, version=version, fields=fields)
    fmt = fields.get("format", version.format)
    with _stored_artifact(version.model, artifact, fmt) as (key, sha256, size), transaction.atomic():
        fields.update(artifact_key=key, sha256=sha256, size=size)
        return _apply_draft_edit(actor=actor, version=version, fields=fields)


def _apply_draft_edit(*, actor: Actor, version: ModelVersion, fields: dict[str, Any]) -> ModelVersion:
    locked = ModelVersion.objects.select_for_update().select_related("model").get(pk=version.pk)
    if locked.status != Status.DRAFT:  # published between our check and the lock
        raise _immutable(locked.number, locked.status)
    before = snapshot(locked, VERSION_FIELDS)
    old_key = locked.artifact_key
    for key, value in fields.items():
        setattr(locked, key, value)
    _check_parent(locked)
    locked.full_clean()
    locked.save()
    changes = diff(before, snapshot(locked, VERSION_FIELDS))
    if changes:
        audit_record(
            actor=actor,
            action="model_version.update",
            object_type="model_version",
            object_id=locked.pk,
            object_repr=str(locked),
            changes=changes,
        )
    if locked.artifact_key != old_key:
        transaction.on_commit(lambda: _delete_if_unreferenced(old_key))
    return locked


def model_version_publish(*, actor: Actor, version: ModelVersion) -> ModelVersion:
    """Sign and publish a draft. From here on its artifact and metadata are immutable.

    The signed manifest text, its base64 Ed25519 signature and the key id are stored on the version.
    Publishing a published version is a no-op (nothing re-signed, no event, no audit entry). The rule is
    the registry's one lifecycle (lifecycle.py).
    """
    return lifecycle.version_publish(MODEL_VERSION, actor=actor, version=version)


def model_version_deprecate(*, actor: Actor, version: ModelVersion, reason: str = "") -> ModelVersion:
    """Published -> deprecated: devices keep running it, no new deployment may pick it. Idempotent."""
    return lifecycle.version_deprecate(MODEL_VERSION, actor=actor, version=version, reason=reason)


def model_version_revoke(*, actor: Actor, version: ModelVersion, reason: str) -> ModelVersion:
    """Any non-revoked version -> revoked, for good: never deployable again, its aliases are removed.

    The reason is mandatory and kept on the version, its event and the audit entry. Idempotent.
    """
    return lifecycle.version_revoke(MODEL_VERSION, actor=actor, version=version, reason=reason)


# --- aliases --------------------------------------------------------------------------------------
@transaction.atomic
def alias_set(*, actor: Actor, model: RegisteredModel, name: str, version: ModelVersion) -> Alias:
    """Point `model@name` at a published version of that model. Setting it to where it is is a no-op."""
    locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if locked.model_id != model.pk:
        raise InvalidTransition(f"version {locked.pk} belongs to another model")
    if not locked.is_deployable:
        raise InvalidTransition(
            f"alias {name!r} can only point at a published version; version {locked.number} is {locked.status}"
        )
    alias = Alias.objects.select_for_update().filter(model=model, name=name).select_related("version").first()
    if alias is not None and alias.version_id == locked.pk:
        return alias
    previous = alias.version.number if alias is not None else None
    if alias is None:
        alias = Alias(model=model, name=name, version=locked)
        alias.full_clean()
    alias.version = locked
    alias.save()
    resolve_cache_invalidate()
    audit_record(
        actor=actor,
        action="model.alias_set",
        object_type="model",
        object_id=model.pk,
        object_repr=model.name,
        changes={"alias": name, "version": {"before": previous, "after": locked.number}},
    )
    return alias


@transaction.atomic
def alias_delete(*, actor: Actor, model: RegisteredModel, name: str) -> bool:
    """Remove `model@name`; False when there was no such alias (nothing audited)."""
    alias = Alias.objects.select_for_update().filter(model=model, name=name).select_related("version").first()
    if alias is None:
        return False
    number = alias.version.number
    alias.delete()
    resolve_cache_invalidate()
    audit_record(
        actor=actor,
        action="model.alias_delete",
        object_type="model",
        object_id=model.pk,
        object_repr=model.name,
        changes={"alias": name, "version": {"before": number, "after": None}},
    )
    return True


# --- downloads ------------------------------------------------------------------------------------
def _is_s3(storage: Any) -> bool:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # pragma: no cover - django-storages is a dependency
        return False
    return isinstance(storage, S3Storage)


def download_signer() -> Signer:
    """Signs and checks our own download links, under a key derived for them alone (settings.ARTIFACT_LINK_KEY)."""
    return Signer(key=settings.ARTIFACT_LINK_KEY, salt=DOWNLOAD_SALT)


def sign_local_download(key: str, version_id: int, ttl: int) -> str:
    """A token for /api/v1/artifacts/<token>/: the storage key, the version and an expiry, signed."""
    expires_ms = int((time.time() + ttl) * 1000)
    return download_signer().sign_object({"k": key, "v": version_id, "e": expires_ms})


def _download_url(version: ModelVersion, ttl: int) -> str:
    if version.status == Status.REVOKED:
        raise InvalidTransition(f"version {version.number} is revoked: it can no longer be downloaded")
    if _is_s3(default_storage):
        if not default_storage.querystring_auth:
            raise ImproperlyConfigured("S3 storage must use querystring_auth: artifact URLs are presigned")
        return str(default_storage.url(version.artifact_key, expire=ttl))
    return reverse("artifact-download", kwargs={"token": sign_local_download(version.artifact_key, version.pk, ttl)})


def model_version_download_url(*, actor: Actor, version: ModelVersion, ttl: int | None = None) -> str:
    """A time-limited URL for the artifact (S3 presigned, or our signed URL on local storage). Audited.

    Revoked versions are never handed out. Local URLs are paths; the caller makes them absolute.
    """
    ttl = ttl if ttl is not None else settings.ARTIFACT_URL_TTL_SECONDS
    url = _download_url(version, ttl)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="model_version.download",
            object_type="model_version",
            object_id=version.pk,
            object_repr=str(version),
            changes={"ttl_seconds": ttl, "sha256": version.sha256},
        )
    return url


def model_version_download_grant(*, actor: Actor, version: ModelVersion, ttl: int, jobs: int) -> tuple[str, AuditSpec]:
    """One URL for the job documents of a batch of `jobs` deployments, and the one audit entry saying so.

    The same URL `model_version_download_url` issues (it names no device: our signed token or an S3
    presigned URL carry only the artifact, the version and the expiry), so a rollout chunk asks once per
    version instead of once per job. The caller records the returned entry with `audit_record_many` in
    the transaction that creates the jobs (one chain-head lock for the whole batch).
    """
    url = _download_url(version, ttl)
    audit = AuditSpec(
        actor=actor, action="model_version.download", object_type="model_version", object_id=version.pk,
        object_repr=str(version), changes={"ttl_seconds": ttl, "sha256": version.sha256, "jobs": jobs},
    )  # fmt: skip
    return url, audit
