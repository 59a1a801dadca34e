"""The registry lifecycles (model versions, pipeline versions) follow the one transition rule
(core/transitions.py): a move writes its event and audit entry, already there writes nothing, a forbidden
move raises InvalidTransition, and of two movers that read the same state only one wins."""

from __future__ import annotations

import pytest

from audit.models import AuditEntry
from core.transitions import InvalidTransition, transition
from models_registry.models import ModelVersion, PipelineEvent, PipelineVersion, Status, VersionEvent
from models_registry.pipeline_services import (
    pipeline_create,
    pipeline_version_create,
    pipeline_version_deprecate,
    pipeline_version_publish,
    pipeline_version_revoke,
)
from models_registry.services import model_version_deprecate, model_version_publish, model_version_revoke
from tests.factories import TEST_ACTOR, side_effects
from tests.pipeline_helpers import ACTOR, publish_sample_pipeline, sample_stages

from .conftest import make_version

pytestmark = pytest.mark.django_db


def model_trail(version: ModelVersion) -> tuple[int, int]:
    return (
        VersionEvent.objects.filter(version=version).count(),
        AuditEntry.objects.for_object("model_version", version.pk).count(),
    )


def pipeline_trail(version: PipelineVersion) -> tuple[int, int]:
    return (
        PipelineEvent.objects.filter(pipeline_version=version).count(),
        AuditEntry.objects.for_object("pipeline_version", version.pk).count(),
    )


def test_model_version_deprecate_moves_once_and_again_is_a_no_op(registered_model, assert_audited):
    version = make_version(registered_model, publish=True)
    before = model_trail(version)
    deprecated = model_version_deprecate(actor=TEST_ACTOR, version=version, reason="superseded")
    assert deprecated.status == Status.DEPRECATED and deprecated.deprecated_at is not None
    assert model_trail(version) == (before[0] + 1, before[1] + 1)
    assert_audited("model_version", version.pk, "model_version.deprecate")
    again = model_version_deprecate(actor=TEST_ACTOR, version=version, reason="twice")
    assert again.status == Status.DEPRECATED and again.deprecated_at == deprecated.deprecated_at
    assert model_trail(version) == (before[0] + 1, before[1] + 1)


def test_a_forbidden_model_version_move_raises_and_writes_nothing(registered_model):
    draft = make_version(registered_model)
    before = model_trail(draft)
    with pytest.raises(InvalidTransition, match="only published versions can be deprecated"):
        model_version_deprecate(actor=TEST_ACTOR, version=draft)
    assert ModelVersion.objects.get(pk=draft.pk).status == Status.DRAFT and model_trail(draft) == before


def test_of_two_movers_of_a_model_version_only_one_wins(registered_model):
    version = make_version(registered_model, publish=True)
    stale = ModelVersion.objects.get(pk=version.pk)  # both read it published
    assert transition(ModelVersion, pk=version.pk, current=stale.status, to=Status.DEPRECATED).changed
    assert not transition(ModelVersion, pk=version.pk, current=stale.status, to=Status.DEPRECATED).changed
    # a third decided from the same stale read to revoke: the state it decided on is gone, so it conflicts
    with pytest.raises(InvalidTransition, match="changed meanwhile: it is deprecated"):
        transition(ModelVersion, pk=version.pk, current=stale.status, to=Status.REVOKED)
    assert ModelVersion.objects.get(pk=version.pk).status == Status.DEPRECATED


def test_pipeline_versions_follow_the_same_rule(assert_audited):
    version = publish_sample_pipeline()
    before = pipeline_trail(version)
    pipeline_version_deprecate(actor=ACTOR, version=version, reason="superseded")
    assert pipeline_trail(version) == (before[0] + 1, before[1] + 1)
    pipeline_version_deprecate(actor=ACTOR, version=version, reason="twice")  # already there
    assert pipeline_trail(version) == (before[0] + 1, before[1] + 1)
    revoked = pipeline_version_revoke(actor=ACTOR, version=version, reason="broken")
    assert revoked.status == Status.REVOKED and pipeline_trail(version) == (before[0] + 2, before[1] + 2)
    assert_audited("pipeline_version", version.pk, "pipeline_version.revoke")
    pipeline_version_revoke(actor=ACTOR, version=version, reason="again")
    assert pipeline_trail(version) == (before[0] + 2, before[1] + 2)
    with pytest.raises(InvalidTransition, match="only published versions can be deprecated"):
        pipeline_version_deprecate(actor=ACTOR, version=version)


def test_revoking_a_revoked_model_version_keeps_the_first_reason(registered_model):
    version = make_version(registered_model, publish=True)
    model_version_revoke(actor=TEST_ACTOR, version=version, reason="leaked")
    again = model_version_revoke(actor=TEST_ACTOR, version=version, reason="second thoughts")
    assert again.revoked_reason == "leaked"
    assert VersionEvent.objects.filter(version=version, to_status=Status.REVOKED).count() == 1


def test_pipeline_version_transitions_schedule_their_broadcast_on_commit(django_capture_on_commit_callbacks):
    # as test_lifecycle's test_transitions_schedule_their_broadcast_on_commit asks of a model version
    detector, classifier = sample_stages()
    pipeline = pipeline_create(actor=ACTOR, name="gated")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        version = pipeline_version_create(
            actor=ACTOR, pipeline=pipeline,
            stages=[{"name": "detect", "version": detector, "condition": None},
                    {"name": "classify", "version": classifier, "condition": None}],
        )  # fmt: skip
    assert len(side_effects(callbacks)) == 1
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        pipeline_version_publish(actor=ACTOR, version=version)
    assert len(side_effects(callbacks)) == 1
    with django_capture_on_commit_callbacks() as callbacks:  # a re-run broadcasts nothing
        pipeline_version_publish(actor=ACTOR, version=version)
    assert callbacks == []
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(InvalidTransition):
        pipeline_version_publish(actor=ACTOR, version=pipeline_version_revoke(actor=ACTOR, version=version, reason="x"))
    assert len(side_effects(callbacks)) == 1  # the revoke's; the refused publish scheduled nothing


def test_both_kinds_broadcast_every_status_change_on_the_registry_group(registered_model, registry_broadcasts):
    def statuses(received: list, kind: str) -> list[tuple[str, int, str]]:
        assert {message["type"] for message in received} == {f"{kind}.status"}
        parent = "model" if kind == "model_version" else "pipeline"
        return [(m["payload"][parent], m["payload"]["number"], m["payload"]["status"]) for m in received]

    model_id = registered_model.pk
    version = None

    def upload_and_publish() -> None:
        nonlocal version
        version = model_version_publish(actor=TEST_ACTOR, version=make_version(registered_model))

    assert statuses(registry_broadcasts(upload_and_publish), "model_version") == [
        (model_id, 1, Status.DRAFT),
        (model_id, 1, Status.PUBLISHED),
    ]
    received = registry_broadcasts(lambda: model_version_deprecate(actor=TEST_ACTOR, version=version))
    assert statuses(received, "model_version") == [(model_id, 1, Status.DEPRECATED)]
    assert registry_broadcasts(lambda: model_version_deprecate(actor=TEST_ACTOR, version=version)) == []

    pipeline_version = None

    def build_and_publish() -> None:
        nonlocal pipeline_version
        detector, classifier = sample_stages()
        pipeline = pipeline_create(actor=ACTOR, name="gated")
        draft = pipeline_version_create(
            actor=ACTOR, pipeline=pipeline,
            stages=[{"name": "detect", "version": detector, "condition": None},
                    {"name": "classify", "version": classifier, "condition": None}],
        )  # fmt: skip
        pipeline_version = pipeline_version_publish(actor=ACTOR, version=draft)

    received = registry_broadcasts(build_and_publish)
    pipeline_received = [m for m in received if m["type"] == "pipeline_version.status"]
    pipeline_id = pipeline_version.pipeline_id
    assert statuses(pipeline_received, "pipeline_version") == [
        (pipeline_id, 1, Status.DRAFT),
        (pipeline_id, 1, Status.PUBLISHED),
    ]
    assert pipeline_received[-1]["payload"]["id"] == pipeline_version.pk
    received = registry_broadcasts(lambda: pipeline_version_revoke(actor=ACTOR, version=pipeline_version, reason="x"))
    assert statuses(received, "pipeline_version") == [(pipeline_id, 1, Status.REVOKED)]
    assert registry_broadcasts(lambda: pipeline_version_revoke(actor=ACTOR, version=pipeline_version, reason="y")) == []
