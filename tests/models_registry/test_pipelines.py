"""Pipelines in the registry: versions with ordered stages, signed manifests, lifecycle, one compatibility check."""

from __future__ import annotations

import json

import pytest

from deployments.exceptions import DeploymentRefused
from deployments.services.jobs import deployment_create
from models_registry.exceptions import InvalidTransition
from models_registry.models import PipelineEvent, Status
from models_registry.pipeline_services import pipeline_version_publish, pipeline_version_revoke
from models_registry.services import model_version_revoke
from protocol import signing
from tests.factories import DeviceFactory
from tests.pipeline_helpers import ACTOR, publish_sample_pipeline, sample_stages

pytestmark = pytest.mark.django_db
PIPELINES = "/api/v1/pipelines/"


def test_published_pipeline_manifest_signs_every_stage_sha256_and_republishing_changes_nothing(assert_audited):
    version = publish_sample_pipeline()
    manifest = json.loads(version.manifest)
    stages = version.ordered_stages()
    assert [s["sha256"] for s in manifest["stages"]] == [s.version.sha256 for s in stages]
    assert manifest["stages"][1]["condition"] == {"output": "score", "op": ">=", "value": 0.5}
    from models_registry import keys

    assert signing.verify(keys.active_key().public_key_b64, version.manifest, version.signature)
    assert_audited("pipeline_version", version.pk, "pipeline_version.publish")

    again = pipeline_version_publish(actor=ACTOR, version=version)
    assert again.signature == version.signature
    assert PipelineEvent.objects.filter(pipeline_version=version, to_status=Status.PUBLISHED).count() == 1


def test_revoked_pipeline_version_cannot_be_published_or_deployed():
    version = publish_sample_pipeline()
    revoked = pipeline_version_revoke(actor=ACTOR, version=version, reason="wrong threshold")
    assert revoked.status == Status.REVOKED and revoked.revoked_reason == "wrong threshold"
    with pytest.raises(InvalidTransition, match="only draft versions can be published"):
        pipeline_version_publish(actor=ACTOR, version=version)
    device = DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], memory_mb=4096)
    with pytest.raises(DeploymentRefused, match="revoked"):
        deployment_create(actor=ACTOR, device=device, pipeline_version=version)


def test_one_compatibility_check_refuses_a_device_that_runs_stage_one_but_not_stage_two(admin_client):
    version = publish_sample_pipeline(classifier_memory_mb=2048)
    small = DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], memory_mb=1024)
    big = DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], memory_mb=4096)

    url = f"{PIPELINES}{version.pipeline_id}/versions/{version.number}/compatibility/"
    body = admin_client.get(url).json()
    assert (body["compatible"], body["incompatible"]) == (1, 1)
    assert body["reasons"] == {"stage 2 (classify: frame-classifier v1): needs 2048 MB, device has 1024 MB": 1}

    with pytest.raises(DeploymentRefused, match=r"stage 2 \(classify: frame-classifier v1\): needs 2048 MB"):
        deployment_create(actor=ACTOR, device=small, pipeline_version=version)
    job = deployment_create(actor=ACTOR, device=big, pipeline_version=version)
    assert job.pipeline_version_id == version.pk and job.version_id is None


def test_api_creates_and_publishes_a_pipeline_for_admins_only(admin_client, viewer_client, assert_audited):
    sample_stages()
    created = admin_client.post(PIPELINES, {"name": "gated", "description": "d"}, format="json")
    assert created.status_code == 201, created.content
    pipeline_id = created.json()["id"]
    assert_audited("pipeline", pipeline_id, "pipeline.create")
    stages = [
        {"name": "detect", "model": "motion-detector", "version": 1},
        {"name": "classify", "model": "frame-classifier", "version": 1,
         "condition": {"output": "score", "op": ">=", "value": 0.5}},
    ]  # fmt: skip
    versions = f"{PIPELINES}{pipeline_id}/versions/"
    assert viewer_client.post(versions, {"stages": stages}, format="json").status_code == 403
    draft = admin_client.post(versions, {"stages": stages}, format="json")
    assert draft.status_code == 201, draft.content
    assert [s["name"] for s in draft.json()["stages"]] == ["detect", "classify"]
    published = admin_client.post(f"{versions}1/publish/")
    assert published.status_code == 200 and published.json()["status"] == "published"
    assert viewer_client.get(f"{versions}1/").json()["manifest"] == published.json()["manifest"]


def test_api_names_the_stage_field_of_a_bad_condition(admin_client):
    sample_stages()
    pipeline_id = admin_client.post(PIPELINES, {"name": "gated"}, format="json").json()["id"]
    stages = [
        {"name": "detect", "model": "motion-detector", "version": 1},
        {"name": "classify", "model": "frame-classifier", "version": 1,
         "condition": {"output": "probability", "op": ">=", "value": 0.5}},
    ]  # fmt: skip
    answer = admin_client.post(f"{PIPELINES}{pipeline_id}/versions/", {"stages": stages}, format="json")
    assert answer.status_code == 400
    errors = {e["field"]: e["reason"] for e in answer.json()["errors"]}
    assert "no output 'probability'" in errors["stages[1].condition"]

    stages[1]["condition"] = {"output": "score", "op": "~", "value": 0.5}
    answer = admin_client.post(f"{PIPELINES}{pipeline_id}/versions/", {"stages": stages}, format="json")
    assert answer.status_code == 400 and "op must be one of" in json.dumps(answer.json()["errors"])


def test_a_stage_version_revoked_before_publishing_blocks_the_publish():
    detector, classifier = sample_stages()
    from models_registry.pipeline_services import pipeline_create, pipeline_version_create

    pipeline = pipeline_create(actor=ACTOR, name="gated")
    draft = pipeline_version_create(
        actor=ACTOR, pipeline=pipeline,
        stages=[{"name": "detect", "version": detector, "condition": None},
                {"name": "classify", "version": classifier, "condition": None}],
    )  # fmt: skip
    model_version_revoke(actor=ACTOR, version=classifier, reason="bad weights")
    with pytest.raises(InvalidTransition, match="no longer published"):
        pipeline_version_publish(actor=ACTOR, version=draft)


def test_a_pipeline_cannot_take_a_model_name():
    sample_stages()
    from django.core.exceptions import ValidationError

    from models_registry.pipeline_services import pipeline_create

    with pytest.raises(ValidationError, match="a model is already named"):
        pipeline_create(actor=ACTOR, name="motion-detector")


def test_the_admin_shows_pipeline_versions_with_their_stages_read_only(client):
    from django.contrib.auth import get_user_model

    version = publish_sample_pipeline()
    client.force_login(get_user_model().objects.create_superuser("root-admin", password="x-not-used-1!"))
    page = client.get(f"/admin/models_registry/pipelineversion/{version.pk}/change/")
    assert page.status_code == 200
    assert "frame-classifier v1" in page.content.decode()
    assert client.get("/admin/models_registry/pipelineversion/add/").status_code == 403
