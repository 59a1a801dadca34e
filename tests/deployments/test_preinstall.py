"""`installations_preinstall`: a version recorded as what devices already run (the demo's baseline)."""

from __future__ import annotations

import io

import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditEntry
from deployments.api.serializers import RolloutPlanSerializer
from deployments.exceptions import DeploymentRefused
from deployments.models import Installation, RolloutTarget
from deployments.services.installations import installations_preinstall
from deployments.services.rollout_drafts import rollout_create
from fleet.services import device_create
from models_registry.samples import sample_versions
from models_registry.services import model_version_create, model_version_publish
from tests.factories import SiteFactory, side_effects

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def _device(uid: str, *, runtimes: list[dict[str, str]], memory_mb: int = 2048):
    return device_create(
        actor=ACTOR, uid=uid, name=uid, site=SiteFactory(), tier="edge", arch="aarch64", cpu="Cortex-A72 x4",
        memory_mb=memory_mb, accelerator="none", runtimes=runtimes,
    )  # fmt: skip


@pytest.fixture
def fleet():
    onnx = [{"name": "onnxruntime", "version": "1.18"}]
    return {
        "a": _device("pre-a", runtimes=onnx),
        "b": _device("pre-b", runtimes=onnx),
        "tflite": _device("pre-tflite", runtimes=[{"name": "tflite", "version": "2.14"}]),
        "small": _device("pre-small", runtimes=onnx, memory_mb=256),
    }


def test_compatible_devices_get_a_current_installation_without_a_job_and_each_is_audited(
    published_version, fleet, assert_audited
):
    result = installations_preinstall(actor=ACTOR, version=published_version, devices=list(fleet.values()))

    assert sorted(i.device.uid for i in result.installed) == ["pre-a", "pre-b"]
    current = Installation.objects.filter(until__isnull=True, version=published_version)
    assert sorted(current.values_list("device__uid", flat=True)) == ["pre-a", "pre-b"]
    assert all(i.job_id is None and i.model_id == published_version.model_id for i in current)
    # the fixture's version needs onnxruntime and 512 MB: each skipped device says why
    assert "onnxruntime" in result.skipped["pre-tflite"]
    assert "512" in result.skipped["pre-small"]
    entry = assert_audited("device", fleet["a"].pk, "installation.preinstalled", actor="system:tests")
    assert entry.changes == {"model": published_version.model.name, "version": published_version.number}
    assert (
        not AuditEntry.objects.for_object("device", fleet["tflite"].pk)
        .filter(action="installation.preinstalled")
        .exists()
    )


def test_a_rerun_changes_nothing(published_version, fleet):
    devices = list(fleet.values())
    installations_preinstall(actor=ACTOR, version=published_version, devices=devices)
    rows = list(Installation.objects.values_list("pk", "device_id", "since"))
    audited = AuditEntry.objects.filter(action="installation.preinstalled").count()

    again = installations_preinstall(actor=ACTOR, version=published_version, devices=devices)

    assert again.installed == []
    assert again.skipped["pre-a"].startswith("already runs a version of")
    assert list(Installation.objects.values_list("pk", "device_id", "since")) == rows
    assert AuditEntry.objects.filter(action="installation.preinstalled").count() == audited


def test_a_version_that_is_not_published_is_refused(published_version, fleet):
    draft = model_version_create(
        actor=ACTOR, model=published_version.model, artifact=io.BytesIO(sample_versions()[2].onnx_bytes),
        format="onnx", framework="other", requirements={"runtime": "onnxruntime"},
    )  # fmt: skip

    with pytest.raises(DeploymentRefused, match="not deployable"):
        installations_preinstall(actor=ACTOR, version=draft, devices=list(fleet.values()))

    assert not Installation.objects.exists()


def test_the_resolve_cache_is_invalidated_on_commit(published_version, fleet, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        installations_preinstall(actor=ACTOR, version=published_version, devices=[fleet["a"]])

    assert [c.__name__ for c in side_effects(callbacks)] == ["resolve_cache_bump"]


def test_a_rollout_takes_the_preinstalled_version_as_its_baseline(published_version, fleet):
    installations_preinstall(actor=ACTOR, version=published_version, devices=[fleet["a"], fleet["b"]])
    newer = model_version_publish(
        actor=ACTOR,
        version=model_version_create(
            actor=ACTOR, model=published_version.model, artifact=io.BytesIO(sample_versions()[1].onnx_bytes),
            format="onnx", framework="other", requirements={"runtime": "onnxruntime", "min_memory_mb": 512},
        ),
    )  # fmt: skip
    serializer = RolloutPlanSerializer(
        data={"version": newer.pk, "target": {"devices": [fleet["a"].pk, fleet["b"].pk]}, "waves": [{"percent": 100}]}
    )
    serializer.is_valid(raise_exception=True)
    version, name, plan = serializer.to_plan()

    rollout = rollout_create(actor=ACTOR, version=version, plan=plan, name=name)

    targets = RolloutTarget.objects.filter(rollout=rollout)
    assert {t.baseline_version_id for t in targets} == {published_version.pk}
    assert Installation.objects.filter(until__isnull=True, since__lte=timezone.now()).count() == 2
