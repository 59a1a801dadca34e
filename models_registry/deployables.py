"""What a deployment installs, whatever its kind: a `Deployable` (a model version or a pipeline version).

Deployments (jobs, rollouts, installations, rollback baselines) go one path for both kinds through this
protocol: the family a device has one of installed and reports by name, the version number, the model
versions whose artifacts a device downloads, what a device needs to run it, and its part of a job document.
`ModelVersion` and `PipelineVersion` implement it (models_registry/models.py); where the kinds truly
differ (a pipeline's document carries its stages), the difference lives there.

The database keeps one pair of nullable columns per kind on each row that names a deployable (`version`
and `model`, `pipeline_version` and `pipeline`; a check constraint says exactly one pair is set, and the
family columns carry the per-family unique constraints). `KINDS` names them; `deployable_columns` writes
them, `deployable_of` and `family_of` read them back, `family_filter` filters on them.

A new kind: implement `Deployable` on its version model, give the rows their pair of columns (and widen
the check constraints), and add its entry to `KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce

from .compatibility import Requirements
from .models import (
    ArtifactUrl,
    DeployableDocument,
    DeployableKind,
    Family,
    ModelVersion,
    Pipeline,
    PipelineVersion,
    RegisteredModel,
)

# the protocol's types are declared with the models that implement it (no import circle)
__all__ = [
    "KINDS",
    "ArtifactUrl",
    "Deployable",
    "DeployableDocument",
    "DeployableKind",
    "Family",
    "KindColumns",
    "deployable_columns",
    "deployable_field",
    "deployable_of",
    "family_filter",
    "family_lock",
    "family_name_and_number",
    "family_of",
    "family_versions",
    "paired_column_ids",
]


class Deployable(Protocol):
    """What deployments needs to know of the thing a job installs."""

    deployable_kind: ClassVar[DeployableKind]

    @property
    def pk(self) -> int: ...

    @property
    def number(self) -> int: ...

    @property
    def status(self) -> str: ...

    @property
    def is_deployable(self) -> bool: ...

    @property
    def family(self) -> Family: ...

    @property
    def family_name(self) -> str:
        """The name devices report it under and telemetry stores it under (the model's or the pipeline's)."""
        ...

    @property
    def gateway_artifact(self) -> ModelVersion | None:
        """The artifact the job document points at itself, which a gateway may serve from its cache
        (None for a pipeline: its stages' artifacts come from the cloud)."""
        ...

    def for_deployment(self) -> Self:
        """This deployable with what the methods below read loaded (a pipeline's stages, their versions)."""
        ...

    def artifacts(self) -> list[ModelVersion]:
        """The model versions whose artifacts a device downloads, in order."""
        ...

    def compatibility_requirements(self) -> Requirements:
        """The input of `compatibility.reasons_for` (a pipeline needs every stage's)."""
        ...

    def document_fields(self, url_of: ArtifactUrl) -> DeployableDocument: ...


@dataclass(frozen=True)
class KindColumns:
    """Where a kind is stored: its columns on Job, Rollout and Installation (`baseline_` + the version's on
    RolloutTarget), and its models."""

    version_column: str  # also the name a request and an audit entry give it
    family_column: str
    version_model: type[ModelVersion] | type[PipelineVersion]
    family_model: type[RegisteredModel] | type[Pipeline]


# the pipeline first: a row is read as a pipeline's when its pipeline version is set
KINDS: dict[DeployableKind, KindColumns] = {
    "pipeline": KindColumns("pipeline_version", "pipeline", PipelineVersion, Pipeline),
    "model": KindColumns("version", "model", ModelVersion, RegisteredModel),
}


def deployable_field(deployable: Deployable) -> str:
    """The input naming it ("version" or "pipeline_version"): in a refusal, an audit entry's changes."""
    return KINDS[deployable.deployable_kind].version_column


def deployable_columns(deployable: Deployable | None, *, prefix: str = "", family: bool = True) -> dict[str, object]:
    """Every paired column of a row, set for `deployable` (None: none of them): its version and family
    columns get it, the other kinds' get None. `family=False` for a row without family columns (a
    RolloutTarget's baseline, `prefix="baseline_"`)."""
    columns: dict[str, object] = {}
    for kind, names in KINDS.items():
        mine = deployable if deployable is not None and deployable.deployable_kind == kind else None
        columns[prefix + names.version_column] = mine
        if family:
            columns[f"{prefix}{names.family_column}_id"] = mine.family[1] if mine is not None else None
    return columns


def deployable_of(row: models.Model, *, prefix: str = "") -> Deployable | None:
    """The deployable a row's paired columns name (loaded through its relation), None when none is set."""
    for names in KINDS.values():
        if getattr(row, f"{prefix}{names.version_column}_id") is not None:
            found: Deployable | None = getattr(row, prefix + names.version_column)
            return found
    return None


def family_of(row: models.Model) -> Family:
    """What a row installs a version of, from its columns alone (no related row is loaded)."""
    for kind, names in KINDS.items():
        if getattr(row, f"{names.version_column}_id") is not None:
            family_id: int | None = getattr(row, f"{names.family_column}_id")
            if family_id is not None:
                return kind, family_id
    raise ValueError(f"{type(row).__name__} {row.pk} names no version with its family (a check constraint)")


def paired_column_ids(row: models.Model) -> dict[str, int | None]:
    """A row's paired columns by id, to write the same deployable on another row (a job's installation)."""
    return {
        f"{name}_id": getattr(row, f"{name}_id")
        for names in KINDS.values()
        for name in (names.version_column, names.family_column)
    }


def family_filter(family: Family, *, prefix: str = "") -> Q:
    """Rows (through `prefix`, e.g. "rollout__") of that model's or pipeline's versions."""
    kind, family_id = family
    return Q(**{f"{prefix}{KINDS[kind].family_column}_id": family_id})


def family_versions(family: Family) -> models.QuerySet[ModelVersion] | models.QuerySet[PipelineVersion]:
    """Every version of the model or the pipeline, whatever its status."""
    kind, family_id = family
    names = KINDS[kind]
    return names.version_model.objects.filter(**{f"{names.family_column}_id": family_id})


def family_lock(family: Family) -> None:
    """Lock the model's or the pipeline's row until the transaction ends: serializes writers of the family."""
    kind, family_id = family
    KINDS[kind].family_model.objects.select_for_update().filter(pk=family_id).first()


def family_name_and_number(prefix: str = "") -> tuple[Coalesce, Coalesce]:
    """SQL for a row's (family name, version number) through `prefix`, whatever its kind: what devices
    and telemetry call it, for `values_list`."""
    return (
        Coalesce(*(f"{prefix}{names.family_column}__name" for names in KINDS.values())),
        Coalesce(*(f"{prefix}{names.version_column}__number" for names in KINDS.values())),
    )
