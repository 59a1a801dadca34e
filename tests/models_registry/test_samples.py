"""The sample ONNX models are real: onnxruntime runs them; v2 is the same function, v3 is worse."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest
from django.core.management import call_command

from models_registry import samples
from models_registry.models import Alias, ModelVersion, PipelineVersion, RegisteredModel
from protocol import signing

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def versions():
    return samples.sample_versions(slow_layers=4, hidden=64)  # small and quick; same structure as the demo's


def run(model_bytes: bytes, points: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    return session.run(["probabilities"], {"input": points})[0]


def test_onnxruntime_runs_the_classifier_and_matches_the_reference(versions):
    points, labels = samples.evaluation_set()
    probabilities = run(versions[0].onnx_bytes, points)
    assert probabilities.shape == (len(points), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    predicted = probabilities.argmax(axis=1)
    np.testing.assert_array_equal(predicted, samples.reference_predict(samples.CENTROIDS, points))
    assert float((predicted == labels).mean()) == pytest.approx(versions[0].accuracy, abs=1e-4)


def test_slow_version_has_the_same_outputs_and_more_work(versions):
    points, _ = samples.evaluation_set(50)
    np.testing.assert_allclose(run(versions[1].onnx_bytes, points), run(versions[0].onnx_bytes, points), rtol=1e-6)
    assert len(versions[1].onnx_bytes) > 10 * len(versions[0].onnx_bytes)  # the identity chain's weights


def test_less_accurate_version_is_measurably_worse(versions):
    points, labels = samples.evaluation_set()
    accuracy = lambda data: float((run(data, points).argmax(axis=1) == labels).mean())  # noqa: E731
    assert accuracy(versions[2].onnx_bytes) < accuracy(versions[0].onnx_bytes) - 0.05
    assert versions[2].accuracy < versions[0].accuracy


def test_same_arguments_give_the_same_bytes(versions):
    again = samples.sample_versions(slow_layers=4, hidden=64)
    assert [v.onnx_bytes for v in again] == [v.onnx_bytes for v in versions]


def test_sample_models_command_writes_and_registers_idempotently(tmp_path, assert_audited):
    call_command("sample_models", out=tmp_path / "out", register=True)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["classifier-v1.onnx", "classifier-v2.onnx", "classifier-v3.onnx", "motion-detector-v1.onnx"]
    model = RegisteredModel.objects.get(name="demo-classifier")
    versions = list(ModelVersion.objects.filter(model=model).order_by("number"))
    assert [(v.number, v.status) for v in versions] == [(1, "published"), (2, "published"), (3, "published")]
    assert versions[0].sha256 == hashlib.sha256((tmp_path / "out" / "classifier-v1.onnx").read_bytes()).hexdigest()
    assert versions[2].metrics["accuracy"] < versions[0].metrics["accuracy"]
    assert Alias.objects.get(model=model, name="production").version == versions[0]
    assert signing.manifest_version(versions[2].manifest) == 3
    assert_audited("model_version", versions[1].pk, "model_version.publish", actor="system:sample_models")

    pipeline = PipelineVersion.objects.with_stages().get(pipeline__name="demo-motion-then-classify")
    assert pipeline.status == "published"
    assert [(s.name, str(s.version)) for s in pipeline.ordered_stages()] == [
        ("detect", "demo-motion-detector v1"), ("classify", "demo-classifier v1"),
    ]  # fmt: skip

    call_command("sample_models", register=True)  # a re-run changes nothing
    assert ModelVersion.objects.filter(model=model).count() == 3
    assert PipelineVersion.objects.count() == 1
