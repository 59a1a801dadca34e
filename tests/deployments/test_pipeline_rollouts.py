"""Rollouts of a pipeline version: the same plan, waves and gates; one compatibility check over every stage."""

from __future__ import annotations

import pytest

from deployments.models import RolloutTarget
from tests.factories import DeviceFactory
from tests.pipeline_helpers import publish_sample_pipeline

pytestmark = pytest.mark.django_db


def test_pipeline_rollout_excludes_a_device_that_cannot_run_stage_two_with_the_reason(operator_client):
    version = publish_sample_pipeline(classifier_memory_mb=2048)
    small = DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], memory_mb=1024)
    big = DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], memory_mb=4096)
    body = {"pipeline_version": version.pk, "target": {"devices": [small.pk, big.pk]}, "waves": [{"percent": 100}]}

    created = operator_client.post("/api/v1/rollouts/", body, format="json")

    assert created.status_code == 201, created.content
    data = created.json()
    assert (data["pipeline_name"], data["pipeline_version_number"], data["version"]) == (
        "motion-then-classify", 1, None,
    )  # fmt: skip
    excluded = RolloutTarget.objects.get(rollout_id=data["id"], device=small)
    assert excluded.excluded_reasons == ["stage 2 (classify: frame-classifier v1): needs 2048 MB, device has 1024 MB"]
    assert RolloutTarget.objects.get(rollout_id=data["id"], device=big).wave is not None


def test_rollout_takes_a_version_or_a_pipeline_version_not_both(operator_client, published_version):
    pipeline_version = publish_sample_pipeline()
    device = DeviceFactory()
    body = {"version": published_version.pk, "pipeline_version": pipeline_version.pk,
            "target": {"devices": [device.pk]}, "waves": [{"percent": 100}]}  # fmt: skip
    answer = operator_client.post("/api/v1/rollouts/", body, format="json")
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["field"] == "version"
