"""The version state machine, immutability of published versions, aliases, history and roles."""

from __future__ import annotations

import hashlib

import pytest

from audit.models import AuditEntry
from models_registry.exceptions import InvalidTransition, VersionImmutable
from models_registry.models import TERMINAL, TRANSITIONS, Alias, ModelVersion, Status, VersionEvent, allowed_from
from models_registry.services import (
    alias_set,
    model_version_deprecate,
    model_version_publish,
    model_version_revoke,
    model_version_update,
)
from tests.factories import TEST_ACTOR, side_effects

from .conftest import MODELS, artifact_file, make_version

pytestmark = pytest.mark.django_db


def url(model, number=None, suffix=""):
    base = f"{MODELS}{model.pk}/versions/"
    return f"{base}{number}/{suffix}" if number is not None else base


def test_state_machine_is_declared_explicitly():
    assert TERMINAL == {Status.REVOKED}
    assert allowed_from(Status.PUBLISHED) == {Status.DRAFT}
    assert allowed_from(Status.REVOKED) == {Status.DRAFT, Status.PUBLISHED, Status.DEPRECATED}
    assert Status.DRAFT not in TRANSITIONS[Status.PUBLISHED]  # there is no way back to draft


def test_admin_walks_a_version_through_its_lifecycle(admin_client, registered_model, assert_audited):
    version = make_version(registered_model)
    response = admin_client.post(url(registered_model, 1, "publish/"))
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "published" and response.json()["is_deployable"] is True
    assert_audited("model_version", version.pk, "model_version.publish", actor="user:alice-admin")

    response = admin_client.post(url(registered_model, 1, "deprecate/"), {"reason": "v2 is better"}, format="json")
    assert response.json()["status"] == "deprecated" and response.json()["is_deployable"] is False
    assert_audited("model_version", version.pk, "model_version.deprecate")

    reason = {"reason": "trained on leaked data"}
    response = admin_client.post(url(registered_model, 1, "revoke/"), reason, format="json")
    body = response.json()
    assert body["status"] == "revoked" and body["revoked_reason"] == "trained on leaked data"
    entry = assert_audited("model_version", version.pk, "model_version.revoke")
    assert entry.changes["reason"] == "trained on leaked data"
    events = list(VersionEvent.objects.filter(version=version).values_list("from_status", "to_status"))
    assert events == [("", "draft"), ("draft", "published"), ("published", "deprecated"), ("deprecated", "revoked")]


@pytest.mark.parametrize(
    ("setup", "verb", "reason"),
    [
        ("draft", "deprecate", "a draft was never published"),
        ("revoked", "publish", "revoked versions never come back"),
        ("revoked", "deprecate", "revoked is terminal"),
        ("deprecated", "publish", "deprecated cannot be re-published"),
    ],
)
def test_forbidden_transitions_answer_409_with_the_reason(admin_client, registered_model, setup, verb, reason):
    version = make_version(registered_model)
    if setup in ("deprecated", "revoked"):
        version = model_version_publish(actor=TEST_ACTOR, version=version)
        version = model_version_deprecate(actor=TEST_ACTOR, version=version)
    if setup == "revoked":
        version = model_version_revoke(actor=TEST_ACTOR, version=version, reason="test")
    events_before = VersionEvent.objects.count()
    response = admin_client.post(url(registered_model, 1, f"{verb}/"), {"reason": "x"}, format="json")
    assert response.status_code == 409, reason
    body = response.json()
    assert body["code"] == "conflict"
    assert f"cannot {verb} version 1: it is {setup}" in body["detail"]
    assert ModelVersion.objects.get(pk=version.pk).status == setup
    assert VersionEvent.objects.count() == events_before


def test_draft_can_be_revoked_directly(registered_model, assert_audited):
    version = model_version_revoke(actor=TEST_ACTOR, version=make_version(registered_model), reason="broken export")
    assert version.status == Status.REVOKED and not version.is_deployable
    assert_audited("model_version", version.pk, "model_version.revoke", actor="system:tests")


def test_revoke_needs_a_reason(admin_client, registered_model):
    make_version(registered_model, publish=True)
    response = admin_client.post(url(registered_model, 1, "revoke/"), {}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "reason"
    assert ModelVersion.objects.get().status == Status.PUBLISHED


def test_publishing_twice_changes_nothing(admin_client, registered_model):
    version = make_version(registered_model, publish=True)
    audit_count, events = AuditEntry.objects.count(), VersionEvent.objects.count()
    response = admin_client.post(url(registered_model, 1, "publish/"))
    assert response.status_code == 200
    again = ModelVersion.objects.get(pk=version.pk)
    assert (again.manifest, again.signature) == (version.manifest, version.signature)
    assert again.published_at == version.published_at
    assert AuditEntry.objects.count() == audit_count and VersionEvent.objects.count() == events


def test_revoking_twice_changes_nothing(registered_model):
    version = make_version(registered_model, publish=True)
    first = model_version_revoke(actor=TEST_ACTOR, version=version, reason="first")
    second = model_version_revoke(actor=TEST_ACTOR, version=version, reason="second")
    assert second.revoked_reason == "first" and second.revoked_at == first.revoked_at
    assert VersionEvent.objects.filter(version=version, to_status=Status.REVOKED).count() == 1


def test_transitions_schedule_their_broadcast_on_commit(registered_model, django_capture_on_commit_callbacks):
    version = make_version(registered_model)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        model_version_publish(actor=TEST_ACTOR, version=version)
    assert len(side_effects(callbacks)) == 1
    with django_capture_on_commit_callbacks() as callbacks:  # a re-run broadcasts nothing
        model_version_publish(actor=TEST_ACTOR, version=version)
    assert callbacks == []
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(InvalidTransition):
        model_version_publish(
            actor=TEST_ACTOR, version=model_version_revoke(actor=TEST_ACTOR, version=version, reason="x")
        )
    assert len(side_effects(callbacks)) == 1  # the revoke's; the refused publish scheduled nothing


def test_published_version_refuses_edits_and_reuploads(admin_client, registered_model, tmp_path):
    version = make_version(registered_model, b"original bytes", publish=True, metrics={"accuracy": 0.9})
    stored = tmp_path / "media" / version.artifact_key
    files_before = sorted(p.name for p in (tmp_path / "media").rglob("*") if p.is_file())

    response = admin_client.patch(url(registered_model, 1), {"metrics": {"accuracy": 0.99}}, format="json")
    assert response.status_code == 409
    assert "version 1 is published: only drafts can be changed" in response.json()["detail"]
    response = admin_client.patch(
        url(registered_model, 1), {"artifact": artifact_file(b"evil bytes"), "format": "onnx"}, format="multipart"
    )
    assert response.status_code == 409
    response = admin_client.put(
        url(registered_model, 1),
        {"artifact": artifact_file(b"evil"), "format": "onnx", "framework": "pytorch"},
        format="multipart",
    )
    assert response.status_code == 409

    again = ModelVersion.objects.get(pk=version.pk)
    assert again.metrics == {"accuracy": 0.9} and again.sha256 == version.sha256
    assert again.manifest == version.manifest and again.updated_at == version.updated_at
    assert stored.read_bytes() == b"original bytes"
    assert sorted(p.name for p in (tmp_path / "media").rglob("*") if p.is_file()) == files_before
    with pytest.raises(VersionImmutable):
        model_version_update(actor=TEST_ACTOR, version=again, label="sneaky")


def test_draft_edit_is_audited_and_can_replace_the_artifact(
    admin_client, registered_model, assert_audited, tmp_path, django_capture_on_commit_callbacks
):
    version = make_version(registered_model, b"first export")
    old_file = tmp_path / "media" / version.artifact_key
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.patch(
            url(registered_model, 1),
            {"artifact": artifact_file(b"second export"), "requirements": '{"min_memory_mb": 512}', "label": "0.2"},
            format="multipart",
        )
    assert old_file.exists()  # still there until the edit commits
    for callback in callbacks:
        callback()
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["sha256"] == hashlib.sha256(b"second export").hexdigest()
    assert body["requirements"]["min_memory_mb"] == 512 and body["label"] == "0.2"
    entry = assert_audited("model_version", version.pk, "model_version.update", actor="user:alice-admin")
    assert entry.changes["min_memory_mb"] == {"before": None, "after": 512}
    assert not old_file.exists()  # the replaced artifact is deleted once the edit committed


def test_alias_moves_only_to_published_versions(operator_client, registered_model, assert_audited):
    v1 = make_version(registered_model, b"one", publish=True)
    make_version(registered_model, b"two")
    alias_url = f"{MODELS}{registered_model.pk}/aliases/production/"
    response = operator_client.put(alias_url, {"version": 2}, format="json")
    assert response.status_code == 409
    assert "only point at a published version; version 2 is draft" in response.json()["detail"]

    response = operator_client.put(alias_url, {"version": 1}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == {**response.json(), "name": "production", "version": 1, "status": "published"}
    entry = assert_audited("model", registered_model.pk, "model.alias_set", actor="user:oscar-operator")
    assert entry.changes == {"alias": "production", "version": {"before": None, "after": 1}}
    count = AuditEntry.objects.count()
    assert operator_client.put(alias_url, {"version": 1}, format="json").status_code == 200
    assert AuditEntry.objects.count() == count  # pointing it where it already points is a no-op

    listed = operator_client.get(f"{MODELS}{registered_model.pk}/aliases/").json()
    assert [(a["name"], a["version"]) for a in listed] == [("production", 1)]
    assert operator_client.delete(alias_url).status_code == 204
    assert_audited("model", registered_model.pk, "model.alias_delete")
    assert not Alias.objects.exists()
    assert v1.aliases.count() == 0


def test_revoking_a_version_removes_its_aliases(registered_model, assert_audited):
    version = make_version(registered_model, publish=True)
    alias_set(actor=TEST_ACTOR, model=registered_model, name="canary", version=version)
    model_version_revoke(actor=TEST_ACTOR, version=version, reason="bad")
    assert not Alias.objects.exists()
    assert assert_audited("model_version", version.pk, "model_version.revoke").changes["aliases_removed"] == ["canary"]


def test_viewer_cannot_move_aliases_or_publish(viewer_client, operator_client, registered_model):
    make_version(registered_model, publish=True)
    make_version(registered_model, b"draft")
    alias_url = f"{MODELS}{registered_model.pk}/aliases/prod/"
    assert viewer_client.put(alias_url, {"version": 1}, format="json").status_code == 403
    assert viewer_client.get(f"{MODELS}{registered_model.pk}/aliases/").status_code == 200
    assert operator_client.post(url(registered_model, 2, "publish/")).status_code == 403
    assert ModelVersion.objects.get(number=2).status == Status.DRAFT


def test_version_detail_has_history_and_an_empty_deployments_list(admin_client, viewer_client, registered_model):
    version = make_version(registered_model, publish=True)
    admin_client.get(url(registered_model, 1, "download/"))
    body = viewer_client.get(url(registered_model, 1)).json()
    assert body["deployments"] == []
    history = [(h["source"], h["action"]) for h in body["history"]]
    assert history == [
        ("event", "status.draft"),
        ("audit", "model_version.create"),
        ("event", "status.published"),
        ("audit", "model_version.publish"),
        ("audit", "model_version.download"),
    ]
    assert body["id"] == version.pk


def test_version_list_filters_by_status_and_format(viewer_client, registered_model):
    make_version(registered_model, b"a", publish=True)
    make_version(registered_model, b"b", format="tflite", framework="tensorflow")
    numbers = lambda q: [v["number"] for v in viewer_client.get(url(registered_model) + q).json()["results"]]  # noqa: E731
    assert numbers("") == [2, 1]
    assert numbers("?status=published") == [1]
    assert numbers("?format=tflite") == [2]
    assert viewer_client.get(f"{MODELS}999999/versions/").status_code == 404


def test_models_need_admin_to_create_and_are_filterable(admin_client, operator_client, viewer_client, assert_audited):
    payload = {"name": "anomaly-lstm", "task": "anomaly", "description": "vibration"}
    assert operator_client.post(MODELS, payload, format="json").status_code == 403
    response = admin_client.post(MODELS, payload, format="json")
    assert response.status_code == 201
    model_id = response.json()["id"]
    assert response.json()["owner"] == admin_client.user.pk
    assert_audited("model", model_id, "model.create", actor="user:alice-admin")
    admin_client.post(MODELS, {"name": "detector", "task": "detection"}, format="json")
    assert [m["name"] for m in viewer_client.get(f"{MODELS}?task=anomaly").json()["results"]] == ["anomaly-lstm"]
    assert [m["name"] for m in viewer_client.get(f"{MODELS}?search=vibra").json()["results"]] == ["anomaly-lstm"]
    assert admin_client.post(MODELS, payload, format="json").status_code == 400  # names are unique


def test_model_with_versions_cannot_be_deleted(admin_client, registered_model):
    make_version(registered_model)
    response = admin_client.delete(f"{MODELS}{registered_model.pk}/")
    assert response.status_code == 409
