"""Registered models, their immutable versions, lifecycle events and aliases.

A version's status (a model version's or a pipeline version's) only changes through
`models_registry.lifecycle` (a guarded update per transition); every transition writes a `VersionEvent`
(`PipelineEvent`). Only drafts may be edited; a published version's artifact,
metadata and signed manifest never change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal, Self, TypedDict

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from core import transitions
from fleet.models import Accelerator
from protocol.messages import PipelineStageDocument, StageCondition
from protocol.pipelines import PIPELINE_FORMAT

from .compatibility import Requirements, pipeline_requirements_of, requirements_of
from .validators import (
    validate_archs,
    validate_code_commit,
    validate_io_signature,
    validate_metrics,
    validate_runtime_name,
    validate_runtime_version,
)


class Status(models.TextChoices):
    DRAFT = "draft"
    PUBLISHED = "published"
    DEPRECATED = "deprecated"
    REVOKED = "revoked"


# from-state -> the states it may move to; `allowed_from` reads it the other way for guarded updates.
TRANSITIONS: dict[str, frozenset[str]] = {
    Status.DRAFT: frozenset({Status.PUBLISHED, Status.REVOKED}),
    Status.PUBLISHED: frozenset({Status.DEPRECATED, Status.REVOKED}),
    Status.DEPRECATED: frozenset({Status.REVOKED}),
    Status.REVOKED: frozenset(),
}
TERMINAL: frozenset[str] = transitions.terminal_of(TRANSITIONS)


def allowed_from(target: str) -> frozenset[str]:
    """The states a version may move to `target` from."""
    return transitions.allowed_from(TRANSITIONS, target)


# --- what deployments install: the types of the Deployable protocol (models_registry/deployables.py) ---

DeployableKind = Literal["model", "pipeline"]
Family = tuple[DeployableKind, int]
"""What a deployable is a version of: ("model", model id) or ("pipeline", pipeline id)."""

ArtifactUrl = Callable[["ModelVersion"], str]
"""A model version's absolute artifact URL for a job document (fresh per document, or one per batch)."""


class DeployableDocument(TypedDict):
    """A deployable's part of a JobDocument (protocol/messages.py): the same for every device it goes to."""

    model: str
    model_id: int
    version: int
    version_id: int
    format: str
    artifact_url: str | None
    sha256: str | None
    size: int | None
    manifest: str
    signature: str
    key_id: str
    stages: list[PipelineStageDocument] | None


class ArtifactFormat(models.TextChoices):
    ONNX = "onnx"
    TFLITE = "tflite"
    TORCHSCRIPT = "torchscript"
    TENSORRT = "tensorrt"
    OPENVINO = "openvino"


# The file extension of each format's content-addressed storage key.
FORMAT_EXTENSIONS = {
    ArtifactFormat.ONNX: "onnx",
    ArtifactFormat.TFLITE: "tflite",
    ArtifactFormat.TORCHSCRIPT: "pt",
    ArtifactFormat.TENSORRT: "engine",
    ArtifactFormat.OPENVINO: "xml",
}


class Framework(models.TextChoices):
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
    KERAS = "keras"
    SKLEARN = "sklearn"
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"
    JAX = "jax"
    PADDLE = "paddle"
    OTHER = "other"


slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]{0,63}$", "Use 1-64 lower-case letters, digits, '_' or '-', starting with a letter or digit."
)


class RegisteredModel(models.Model):
    name = models.CharField(max_length=120, unique=True)
    task = models.CharField(max_length=80, blank=True, help_text="e.g. classification, detection, anomaly")
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_models"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"
        # `?task=` on the model list
        indexes = [models.Index(fields=["task", "name"], name="regmodel_task_idx")]

    def __str__(self) -> str:
        return self.name


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def deployable(self) -> ModelVersionQuerySet:
        return self.filter(status=Status.PUBLISHED)

    def with_related(self) -> ModelVersionQuerySet:
        return self.select_related("model", "parent", "created_by")


class ModelVersion(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField(help_text="1, 2, 3 … per model, never reused")
    label = models.CharField(max_length=64, blank=True, help_text="optional semantic label, e.g. 1.2.0")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    framework = models.CharField(max_length=16, choices=Framework.choices)
    format = models.CharField(max_length=16, choices=ArtifactFormat.choices)

    # the artifact: content-addressed key in default_storage; size and sha256 computed by the server
    artifact_key = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)

    io_signature = models.JSONField(
        default=dict, blank=True, validators=[validate_io_signature], help_text="input/output tensors"
    )
    metrics = models.JSONField(
        default=dict, blank=True, validators=[validate_metrics], help_text="name -> finite number"
    )

    # lineage
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        help_text="the version this one was derived from (same model)",
    )
    training_data = models.CharField(max_length=500, blank=True, help_text="dataset reference (URI, DVC tag …)")
    code_commit = models.CharField(max_length=64, blank=True, validators=[validate_code_commit])

    # what a device needs (see compatibility.py)
    runtime = models.CharField(
        max_length=40,
        blank=True,
        validators=[validate_runtime_name],
        help_text="narrows the runtimes the format allows",
    )
    min_runtime_version = models.CharField(max_length=40, blank=True, validators=[validate_runtime_version])
    archs = models.JSONField(
        default=list, blank=True, validators=[validate_archs], help_text="allowed CPU architectures; empty = any"
    )
    min_memory_mb = models.PositiveIntegerField(null=True, blank=True)
    accelerator = models.CharField(max_length=8, choices=Accelerator.choices, blank=True)

    # filled once, at publish
    manifest = models.TextField(blank=True, help_text="the exact canonical JSON text that was signed")
    signature = models.TextField(blank=True, help_text="base64 Ed25519 signature of `manifest`")
    key_id = models.CharField(max_length=16, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    deprecated_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.TextField(blank=True)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelVersionQuerySet.as_manager()

    # the lifecycle core.transitions.transition() follows
    Status = Status
    TRANSITIONS = TRANSITIONS
    TERMINAL = TERMINAL

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="version_number_unique_per_model"),
            models.UniqueConstraint(
                fields=["model", "label"], condition=~models.Q(label=""), name="version_label_unique_per_model"
            ),
        ]
        indexes = [
            # the version list filtered by status, newest first; rollouts pick published versions
            models.Index(fields=["model", "status", "number"], name="version_model_status_idx"),
            # "is this artifact already stored?" (re-upload, sample registration, orphan cleanup)
            models.Index(fields=["sha256"], name="version_sha256_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    @property
    def is_deployable(self) -> bool:
        """Only published versions go to devices; deprecated and revoked ones never again."""
        return self.status == Status.PUBLISHED

    @property
    def is_editable(self) -> bool:
        return self.status == Status.DRAFT

    @property
    def requirements(self) -> dict[str, object]:
        return {
            "runtime": self.runtime,
            "min_runtime_version": self.min_runtime_version,
            "archs": list(self.archs),
            "min_memory_mb": self.min_memory_mb,
            "accelerator": self.accelerator,
        }

    @property
    def lineage(self) -> dict[str, object]:
        return {
            "parent": self.parent.number if self.parent_id and self.parent else None,
            "training_data": self.training_data,
            "code_commit": self.code_commit,
        }

    # --- a Deployable (models_registry/deployables.py): one artifact, the model's name ---

    deployable_kind: ClassVar[DeployableKind] = "model"

    @property
    def family(self) -> Family:
        return "model", self.model_id

    @property
    def family_name(self) -> str:
        return self.model.name

    @property
    def gateway_artifact(self) -> ModelVersion | None:
        return self

    def for_deployment(self) -> Self:
        return self

    def artifacts(self) -> list[ModelVersion]:
        return [self]

    def compatibility_requirements(self) -> Requirements:
        return requirements_of(self)

    def document_fields(self, url_of: ArtifactUrl) -> DeployableDocument:
        return {
            "model": self.model.name,
            "model_id": self.model_id,
            "version": self.number,
            "version_id": self.pk,
            "format": self.format,
            "artifact_url": url_of(self),
            "sha256": self.sha256,
            "size": self.size,
            "manifest": self.manifest,
            "signature": self.signature,
            "key_id": self.key_id,
            "stages": None,
        }


class VersionEvent(models.Model):
    """One status change of a version (and its creation, from ""): the version's timeline."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=12, choices=Status.choices, blank=True)
    to_status = models.CharField(max_length=12, choices=Status.choices)
    actor = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]
        # the version detail's history
        indexes = [models.Index(fields=["version", "at"], name="version_event_idx")]

    def __str__(self) -> str:
        return f"{self.version_id}: {self.from_status or '-'} -> {self.to_status}"


class Alias(models.Model):
    """A named pointer (`production`, `canary`, …) from a model to one of its published versions."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64, validators=[slug_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "name"]
        verbose_name_plural = "aliases"
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="alias_unique_per_model")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"


# --- pipelines ------------------------------------------------------------------------------------
# A pipeline version has the same lifecycle as a model version (Status, TRANSITIONS, allowed_from).


class Pipeline(models.Model):
    """An ordered chain of model versions deployed as one unit (e.g. a motion detector, then a classifier).

    Its name shares the namespace of model names: devices report and telemetry stores a pipeline under
    its name, as a model's (services refuse a pipeline named like a model and the other way round).
    """

    name = models.CharField(max_length=120, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_pipelines"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PipelineVersionQuerySet(models.QuerySet["PipelineVersion"]):
    def deployable(self) -> PipelineVersionQuerySet:
        return self.filter(status=Status.PUBLISHED)

    def with_stages(self) -> PipelineVersionQuerySet:
        return self.select_related("pipeline").prefetch_related(
            models.Prefetch("stages", queryset=PipelineStage.objects.select_related("version__model"))
        )


class PipelineVersion(models.Model):
    """An immutable chain of published model versions; its signed manifest covers every stage's sha256."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField(help_text="1, 2, 3 … per pipeline, never reused")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    manifest = models.TextField(blank=True, help_text="the exact canonical JSON text that was signed")
    signature = models.TextField(blank=True, help_text="base64 Ed25519 signature of `manifest`")
    key_id = models.CharField(max_length=16, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    deprecated_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PipelineVersionQuerySet.as_manager()

    # a model version's lifecycle
    Status = Status
    TRANSITIONS = TRANSITIONS
    TERMINAL = TERMINAL

    class Meta:
        ordering = ["pipeline", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "number"], name="pipeline_version_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline.name} v{self.number}"

    @property
    def is_deployable(self) -> bool:
        return self.status == Status.PUBLISHED

    @property
    def name(self) -> str:
        """The name devices and telemetry know it by (the pipeline's)."""
        return self.pipeline.name

    def ordered_stages(self) -> list[PipelineStage]:
        return sorted(self.stages.all(), key=lambda stage: stage.position)

    # --- a Deployable (models_registry/deployables.py): the stages' artifacts, the pipeline's name, a
    # document with the pipeline's manifest and its stages (no top-level artifact) ---

    deployable_kind: ClassVar[DeployableKind] = "pipeline"

    @property
    def family(self) -> Family:
        return "pipeline", self.pipeline_id

    @property
    def family_name(self) -> str:
        return self.pipeline.name

    @property
    def gateway_artifact(self) -> ModelVersion | None:
        return None

    def for_deployment(self) -> Self:
        return type(self).objects.with_stages().get(pk=self.pk)

    def artifacts(self) -> list[ModelVersion]:
        return [stage.version for stage in self.ordered_stages()]

    def compatibility_requirements(self) -> Requirements:
        return pipeline_requirements_of(self.ordered_stages())

    def document_fields(self, url_of: ArtifactUrl) -> DeployableDocument:
        return {
            "model": self.pipeline.name,
            "model_id": self.pipeline_id,
            "version": self.number,
            "version_id": self.pk,
            "format": PIPELINE_FORMAT,
            "artifact_url": None,
            "sha256": None,
            "size": None,
            "manifest": self.manifest,
            "signature": self.signature,
            "key_id": self.key_id,
            "stages": [stage.document(url_of) for stage in self.ordered_stages()],
        }


class PipelineStage(models.Model):
    """Stage `position` (0-based) of a pipeline version: a published model version and an optional condition.

    `condition` ({"output", "op", "value"}) is evaluated on the previous stage's output; when false the
    stage and every later one are skipped for that request. The first stage has none.
    """

    pipeline_version = models.ForeignKey(PipelineVersion, on_delete=models.CASCADE, related_name="stages")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=64, validators=[slug_validator], help_text="e.g. detect, classify")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="pipeline_stages")
    condition = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["pipeline_version", "position"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline_version", "position"], name="pipeline_stage_position_unique"),
            models.UniqueConstraint(fields=["pipeline_version", "name"], name="pipeline_stage_name_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline_version_id}[{self.position}] {self.name}"

    def document(self, url_of: ArtifactUrl) -> PipelineStageDocument:
        """The stage in a pipeline job's document: its version's own manifest and artifact URL."""
        version = self.version
        return PipelineStageDocument(
            name=self.name,
            model=version.model.name,
            model_id=version.model_id,
            version=version.number,
            version_id=version.pk,
            format=version.format,
            artifact_url=url_of(version),
            sha256=version.sha256,
            size=version.size,
            manifest=version.manifest,
            signature=version.signature,
            key_id=version.key_id,
            condition=StageCondition(**self.condition) if self.condition else None,
        )


class PipelineEvent(models.Model):
    """One status change of a pipeline version (and its creation): its timeline."""

    pipeline_version = models.ForeignKey(PipelineVersion, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=12, choices=Status.choices, blank=True)
    to_status = models.CharField(max_length=12, choices=Status.choices)
    actor = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.pipeline_version_id}: {self.from_status or '-'} -> {self.to_status}"
