"""The Deployable protocol's two implementations: each writes and reads its own pair of columns, names its
family, and hands deployments the artifacts and the document part a device needs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db.models import Q

from deployments.models import Installation, Job, Rollout, RolloutTarget
from models_registry.compatibility import (
    PipelineRequirements,
    pipeline_requirements_of,
    profile_of,
    reasons_for,
    requirements_of,
)
from models_registry.deployables import (
    Deployable,
    deployable_columns,
    deployable_field,
    deployable_of,
    family_filter,
    family_name_and_number,
    family_of,
    family_versions,
    paired_column_ids,
)
from models_registry.models import ModelVersion, PipelineVersion
from protocol.messages import JobDocument
from tests.factories import DeviceFactory
from tests.pipeline_helpers import publish_sample_pipeline

pytestmark = pytest.mark.django_db


def url_of(version: ModelVersion) -> str:
    return f"https://cdn.example/{version.sha256}"


def as_job_document(deployable: Deployable) -> JobDocument:
    """The deployable's part in a whole (valid) job document, as deployments builds one."""
    return JobDocument(
        job_id="00000000-0000-0000-0000-000000000001",
        kind="install",
        **deployable.for_deployment().document_fields(url_of),
        timeout_seconds=60,
        created_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    )


def installed_names(deployable: Deployable) -> list[tuple[Any, ...]]:
    device = DeviceFactory()
    Installation.objects.create(
        device=device, since=dt.datetime(2025, 1, 1, tzinfo=dt.UTC), **deployable_columns(deployable)
    )
    return list(Installation.objects.filter(device=device).values_list(*family_name_and_number()))


def test_a_model_version_is_written_to_and_read_back_from_the_version_columns(published_version: ModelVersion):
    version = published_version
    columns = deployable_columns(version)
    assert columns == {"pipeline_version": None, "pipeline_id": None, "version": version, "model_id": version.model_id}
    assert deployable_field(version) == "version"
    assert version.family == ("model", version.model_id) and version.family_name == "shape-classifier"

    for row in (Job(**columns), Rollout(**columns), Installation(**columns)):
        assert deployable_of(row) == version
        assert family_of(row) == ("model", version.model_id)
    assert paired_column_ids(Job(**columns)) == {
        "pipeline_version_id": None, "pipeline_id": None, "version_id": version.pk, "model_id": version.model_id,
    }  # fmt: skip
    baseline = deployable_columns(version, prefix="baseline_", family=False)
    assert baseline == {"baseline_pipeline_version": None, "baseline_version": version}
    assert RolloutTarget(**baseline).baseline == version
    assert RolloutTarget(**deployable_columns(None, prefix="baseline_", family=False)).baseline is None

    assert family_filter(version.family, prefix="rollout__") == Q(rollout__model_id=version.model_id)
    assert list(family_versions(version.family)) == [version]
    assert installed_names(version) == [("shape-classifier", version.number)]


def test_a_model_version_installs_its_own_artifact_with_its_own_requirements(published_version: ModelVersion):
    version = published_version
    assert version.for_deployment() is version
    assert version.artifacts() == [version] and version.gateway_artifact == version
    assert version.compatibility_requirements() == requirements_of(version)

    document = as_job_document(version)
    assert (document.model, document.model_id, document.version, document.version_id) == (
        "shape-classifier", version.model_id, version.number, version.pk,
    )  # fmt: skip
    assert (document.format, document.artifact_url, document.sha256, document.size) == (
        "onnx", url_of(version), version.sha256, version.size,
    )  # fmt: skip
    assert (document.manifest, document.signature, document.key_id) == (
        version.manifest, version.signature, version.key_id,
    )  # fmt: skip
    assert document.stages is None


def test_a_pipeline_version_is_written_to_and_read_back_from_the_pipeline_columns():
    version = publish_sample_pipeline()
    columns = deployable_columns(version)
    assert columns == {
        "pipeline_version": version, "pipeline_id": version.pipeline_id, "version": None, "model_id": None,
    }  # fmt: skip
    assert deployable_field(version) == "pipeline_version"
    assert version.family == ("pipeline", version.pipeline_id) and version.family_name == "motion-then-classify"

    for row in (Job(**columns), Rollout(**columns), Installation(**columns)):
        assert deployable_of(row) == version
        assert family_of(row) == ("pipeline", version.pipeline_id)
    assert paired_column_ids(Job(**columns)) == {
        "pipeline_version_id": version.pk, "pipeline_id": version.pipeline_id, "version_id": None, "model_id": None,
    }  # fmt: skip
    baseline = deployable_columns(version, prefix="baseline_", family=False)
    assert baseline == {"baseline_pipeline_version": version, "baseline_version": None}
    assert RolloutTarget(**baseline).baseline == version

    assert family_filter(version.family) == Q(pipeline_id=version.pipeline_id)
    assert list(family_versions(version.family)) == [version]
    assert installed_names(version) == [("motion-then-classify", version.number)]


def test_a_pipeline_version_installs_every_stage_artifact_in_order_and_needs_every_stage(
    django_assert_num_queries: Any,
):
    version = publish_sample_pipeline(classifier_memory_mb=2048)
    loaded = PipelineVersion.objects.get(pk=version.pk).for_deployment()
    stages = loaded.ordered_stages()
    detector, classifier = (stage.version for stage in stages)
    with django_assert_num_queries(0):  # for_deployment() loaded the stages, their versions and models
        assert loaded.artifacts() == [detector, classifier]
        assert [v.model.name for v in loaded.artifacts()] == ["motion-detector", "frame-classifier"]
    assert loaded.gateway_artifact is None

    requirements = loaded.compatibility_requirements()
    assert isinstance(requirements, PipelineRequirements)
    assert requirements == pipeline_requirements_of(stages)
    small = DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], memory_mb=1024)
    reasons = reasons_for(requirements, profile_of(small, small.runtimes.all()))
    assert reasons == ["stage 2 (classify: frame-classifier v1): needs 2048 MB, device has 1024 MB"]

    document = as_job_document(version)
    assert (document.model, document.model_id, document.version, document.version_id, document.format) == (
        "motion-then-classify", version.pipeline_id, version.number, version.pk, "pipeline",
    )  # fmt: skip
    assert (document.artifact_url, document.sha256, document.size) == (None, None, None)
    assert (document.manifest, document.signature) == (version.manifest, version.signature)
    assert document.stages is not None
    assert [(s.name, s.model, s.version_id, s.artifact_url, s.sha256) for s in document.stages] == [
        ("detect", "motion-detector", detector.pk, url_of(detector), detector.sha256),
        ("classify", "frame-classifier", classifier.pk, url_of(classifier), classifier.sha256),
    ]
    assert document.stages[0].condition is None and document.stages[1].condition is not None
