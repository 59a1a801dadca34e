"""Gateway mirrors in job documents, the transfer accounting the bridge stores, and its rollout summary."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from audit.actors import Actor
from deployments.artifact_mirrors import artifact_transfer_record
from deployments.bridge_handlers import job_updates
from deployments.job_documents import job_document
from deployments.models import Job, JobStatus
from deployments.selectors import artifact_transfer_summary
from deployments.services.jobs import deployment_create
from deployments.services.rollout_drafts import rollout_create
from fleet.models import ArtifactTransfer, Device
from fleet.services import device_mark_seen, device_report_state, device_revoke
from models_registry.keys import active_key
from protocol import gateway_tokens
from protocol.messages import JobsNotify, JobUpdate, RefusedSource, encode, parse_jobs_notify, utc_now
from tests.deployments.rollout_helpers import RecordingBridge, finish
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")
CACHE_URL = "http://gw.plant-1.example:8700"


def report(device: Device, *, capabilities: list[str] | None = None, cache_url: str | None = None) -> Device:
    state = {
        "schema_version": 1,
        "ts": utc_now().isoformat(),
        "agent_version": "0.1.0",
        "hardware": {"arch": "aarch64", "cpu": "Cortex-A72 x4", "memory_mb": 2048, "accelerator": "none"},
        "runtimes": [{"name": "onnxruntime", "version": "1.18"}],
        "slots": {"a": None, "b": None},
        "active": {},
    }
    if capabilities is not None:
        state["capabilities"] = capabilities
    if cache_url is not None:
        state["cache_url"] = cache_url
    device_mark_seen(actor=Actor.device(device.uid), uid=device.uid, online=True)
    return device_report_state(actor=Actor.device(device.uid), uid=device.uid, state=state, agent_version="0.1.0")


@pytest.fixture
def gateway() -> Device:
    return report(DeviceFactory(tier="fog", memory_mb=8192), capabilities=["artifact_mirrors"], cache_url=CACHE_URL)


def edge(gateway: Device | None, *, capable: bool = True, **fields) -> Device:
    device = DeviceFactory(parent=gateway, **fields)
    return report(device, capabilities=["artifact_mirrors"] if capable else None)


def test_a_capable_device_behind_a_gateway_gets_the_gateway_first_with_a_token_for_it(gateway, published_version):
    device = edge(gateway)
    job = deployment_create(actor=ACTOR, device=device, version=published_version)
    document = job_document(job)
    gateway_mirror, cloud_mirror = document.mirrors
    assert (gateway_mirror.source, cloud_mirror.source) == ("gateway", "cloud")
    assert cloud_mirror.url == document.artifact_url
    url = urllib.parse.urlsplit(gateway_mirror.url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{CACHE_URL}/v1/artifacts/{published_version.sha256}"
    key = active_key()
    claims = gateway_tokens.verify(
        urllib.parse.parse_qs(url.query)["token"][0],
        public_key_b64=lambda kid: key.public_key_b64 if kid == key.key_id else None,
        gateway_uid=gateway.uid,
        sha256=published_version.sha256,
    )
    assert (claims.dev, claims.size, claims.src) == (device.uid, published_version.size, document.artifact_url)
    # what the device receives parses with the protocol's strict parser
    sent = parse_jobs_notify(encode(JobsNotify(schema_version=1, jobs=[document])))
    assert sent.jobs[0].mirrors == document.mirrors


@pytest.mark.parametrize("case", ["old_agent", "no_parent", "gateway_offline", "gateway_revoked", "no_cache_url"])
def test_otherwise_the_job_has_the_cloud_url_only_and_old_agents_see_no_new_field(case, gateway, published_version):
    if case == "gateway_offline":
        device_mark_seen(actor=Actor.device(gateway.uid), uid=gateway.uid, online=False)
    if case == "gateway_revoked":
        device_revoke(actor=ACTOR, device=gateway, reason="stolen")
    if case == "no_cache_url":
        report(gateway, capabilities=["artifact_mirrors"])
    device = edge(None if case == "no_parent" else gateway, capable=case != "old_agent")
    document = job_document(deployment_create(actor=ACTOR, device=device, version=published_version))
    assert document.mirrors is None
    assert "mirrors" not in json.loads(encode(JobsNotify(schema_version=1, jobs=[document])))["jobs"][0]


def succeeded(job: Job, *, source: str, size: int, refused: list[RefusedSource] | None = None) -> JobUpdate:
    return JobUpdate(
        schema_version=1,
        job_id=str(job.pk),
        seq=job.last_seq + 10,
        status="SUCCEEDED",
        ts=utc_now(),
        artifact_source=source,
        artifact_bytes=size,
        refused_sources=refused,
    )


def test_the_bridge_stores_where_a_succeeded_job_got_its_artifact_once(gateway, published_version):
    device = edge(gateway)
    job = deployment_create(actor=ACTOR, device=device, version=published_version)
    bridge = RecordingBridge()
    update = succeeded(job, source="gateway", size=published_version.size)
    assert job_updates([(device.uid, update)], bridge) == [None]
    assert job_updates([(device.uid, update)], bridge) == [None]  # a QoS 1 redelivery: ignored, not refused
    assert bridge.counted == ["job_update_ignored:job_already_terminal"]
    assert [topic.rsplit("/", 1)[-1] for topic, _ in bridge.answers] == ["accepted", "accepted"]
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    (transfer,) = ArtifactTransfer.objects.all()
    assert (transfer.job_id, transfer.device, transfer.gateway, transfer.source, transfer.size) == (
        job.pk,
        device,
        gateway,
        "gateway",
        published_version.size,
    )


def test_no_transfer_is_stored_for_a_job_that_did_not_succeed_or_another_device(gateway, published_version):
    device = edge(gateway)
    job = deployment_create(actor=ACTOR, device=device, version=published_version)
    assert artifact_transfer_record(uid=device.uid, update=succeeded(job, source="cloud", size=5)) is None  # QUEUED
    finish(job)
    assert artifact_transfer_record(uid=gateway.uid, update=succeeded(job, source="cloud", size=5)) is None
    assert ArtifactTransfer.objects.count() == 0


def test_rollout_summary_adds_bytes_per_source_and_per_gateway(gateway, published_version, operator_client):
    devices = [edge(gateway, tags=["plant"]) for _ in range(3)]
    plan = {"target": {"filter": {"tag": "plant"}}, "waves": [{"percent": 100}], "job_timeout_seconds": 60, "seed": 1}
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan)
    wave = rollout.waves.get()
    size = published_version.size
    refused = [RefusedSource(source="gateway", reason="sha256 mismatch: expected a, got b")]
    for device, (source, refusals) in zip(
        devices, [("gateway", None), ("gateway", None), ("cloud", refused)], strict=True
    ):
        job = deployment_create(
            actor=ACTOR, device=device, version=published_version, rollout_id=rollout.pk, wave_id=wave.pk
        )
        finish(job)
        artifact_transfer_record(uid=device.uid, update=succeeded(job, source=source, size=size, refused=refusals))
    elsewhere = deployment_create(actor=ACTOR, device=edge(gateway), version=published_version)  # not in the rollout
    finish(elsewhere)
    artifact_transfer_record(uid=elsewhere.device.uid, update=succeeded(elsewhere, source="cloud", size=size))

    expected = {
        "cloud_bytes": size,
        "gateway_bytes": 2 * size,
        "cloud_downloads": 1,
        "gateway_downloads": 2,
        "refused_gateway_copies": 1,
        "gateway_fill_bytes_max": size,
        "gateways": [{"uid": gateway.uid, "bytes": 2 * size, "downloads": 2}],
    }
    assert artifact_transfer_summary(rollout) == expected
    answer = operator_client.get(f"/api/v1/rollouts/{rollout.pk}/")
    assert answer.status_code == 200 and answer.json()["artifact_transfer"] == expected


def test_a_fresh_rollout_has_an_empty_summary(gateway, published_version):
    edge(gateway, tags=["fresh"])
    plan = {"target": {"filter": {"tag": "fresh"}}, "waves": [{"percent": 100}], "seed": 1}
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan)
    summary = artifact_transfer_summary(rollout)
    assert summary["cloud_bytes"] == summary["gateway_bytes"] == 0 and summary["gateways"] == []
