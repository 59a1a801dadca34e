"""The rollout detail built from plain rows (serializers.rollout_detail) answers byte for byte what
RolloutDetailSerializer, the schema's description of it, gives for the same rollout."""

from __future__ import annotations

import pytest
from django.db.models import Prefetch
from rest_framework.renderers import JSONRenderer

from deployments.api.serializers import RolloutDetailSerializer
from deployments.models import GateEvaluation, Job, Rollout, RolloutEvent
from deployments.selectors import artifact_transfer_summary, rollout_counts, rollout_excluded
from deployments.services.tick import rollout_advance
from fleet.models import ArtifactTransfer
from tests.deployments.rollout_helpers import finish
from tests.deployments.test_rollout_api import URL, body
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db


def serialized_the_old_way(rollout_id: int) -> bytes:
    rollout = (
        Rollout.objects.select_related("model", "version", "pipeline", "pipeline_version")
        .prefetch_related(
            "waves",
            Prefetch("gate_results", queryset=GateEvaluation.objects.select_related("wave")),
            Prefetch("events", queryset=RolloutEvent.objects.select_related("wave")),
        )
        .get(pk=rollout_id)
    )
    counts = rollout_counts(rollout.pk)
    context = {
        "counts": counts.waves,
        "excluded": rollout_excluded(rollout, counts=counts),
        "artifact_transfer": artifact_transfer_summary(rollout),
    }
    return JSONRenderer().render(RolloutDetailSerializer(rollout, context=context).data)


def test_the_detail_from_plain_rows_is_what_the_serializer_gives(operator_client, published_version):
    site = SiteFactory()
    for _ in range(10):
        DeviceFactory(site=site, tags=["canary"])
    DeviceFactory(site=site, tags=["canary"], runtimes=[{"name": "tflite", "version": "2.14"}])  # excluded
    created = operator_client.post(URL, body(published_version.pk, health_gate=None), format="json").json()
    rollout_id = created["id"]
    assert operator_client.post(f"{URL}{rollout_id}/start/", format="json").status_code == 200
    for _ in range(2):  # two waves install and pass their gate
        rollout_advance(rollout_id=rollout_id)
        for job in Job.objects.filter(rollout_id=rollout_id, finished_at__isnull=True).select_related("device"):
            finish(job)
        rollout_advance(rollout_id=rollout_id)
    job = Job.objects.filter(rollout_id=rollout_id).select_related("device").first()
    assert job is not None
    ArtifactTransfer.objects.create(
        job_id=job.pk, rollout_id=rollout_id, device=job.device, sha256=published_version.sha256,
        source="cloud", size=published_version.size, refused=[],
    )  # fmt: skip
    paused = operator_client.post(f"{URL}{rollout_id}/pause/", {"reason": "looking at wave 1"}, format="json")
    assert paused.status_code == 200

    response = operator_client.get(f"{URL}{rollout_id}/")
    assert response.status_code == 200
    detail = response.json()
    # the rollout has each part the comparison has to cover
    assert len(detail["gate_results"]) >= 2 and {g["wave"] for g in detail["gate_results"]} >= {0, 1}
    assert any(e["wave"] is None for e in detail["timeline"]) and any(e["wave"] == 1 for e in detail["timeline"])
    assert detail["excluded"]["count"] == 1 and detail["artifact_transfer"]["cloud_downloads"] == 1
    assert detail["waves"][0]["finished_at"] is not None and detail["waves"][0]["jobs"] == {"SUCCEEDED": 1}
    assert response.content == serialized_the_old_way(rollout_id)
    assert paused.content == response.content  # an action answers the same detail
