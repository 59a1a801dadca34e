"""The sample two-stage pipeline (motion detector -> classifier), built through the registry's services."""

from __future__ import annotations

import io
from typing import Any

from audit.actors import Actor
from models_registry.models import ModelVersion, PipelineVersion, RegisteredModel
from models_registry.pipeline_services import pipeline_create, pipeline_version_create, pipeline_version_publish
from models_registry.samples import (
    DETECTOR_IO_SIGNATURE,
    IO_SIGNATURE,
    PIPELINE_CONDITION,
    build_classifier,
    build_motion_detector,
)
from models_registry.services import model_create, model_version_create, model_version_publish

ACTOR = Actor.system("tests")


def publish_model(name: str, onnx_bytes: bytes, io_signature: dict[str, Any], **requirements: Any) -> ModelVersion:
    model = model_create(actor=ACTOR, name=name, task="pipeline-stage")
    version = model_version_create(
        actor=ACTOR,
        model=model,
        artifact=io.BytesIO(onnx_bytes),
        format="onnx",
        framework="other",
        io_signature=io_signature,
        requirements={"runtime": "onnxruntime", **requirements},
    )
    return model_version_publish(actor=ACTOR, version=version)


def publish_model_version(model: RegisteredModel, onnx_bytes: bytes) -> ModelVersion:
    """A further published version of an existing stage model (same signature)."""
    version = model_version_create(
        actor=ACTOR,
        model=model,
        artifact=io.BytesIO(onnx_bytes),
        format="onnx",
        framework="other",
        io_signature=IO_SIGNATURE,
        requirements={"runtime": "onnxruntime"},
    )
    return model_version_publish(actor=ACTOR, version=version)


def sample_stages(*, classifier_memory_mb: int | None = None) -> tuple[ModelVersion, ModelVersion]:
    detector = publish_model("motion-detector", build_motion_detector(), DETECTOR_IO_SIGNATURE)
    extra = {"min_memory_mb": classifier_memory_mb} if classifier_memory_mb else {}
    classifier = publish_model("frame-classifier", build_classifier(), IO_SIGNATURE, **extra)
    return detector, classifier


def publish_sample_pipeline(
    *, classifier_memory_mb: int | None = None, name: str = "motion-then-classify"
) -> PipelineVersion:
    detector, classifier = sample_stages(classifier_memory_mb=classifier_memory_mb)
    pipeline = pipeline_create(actor=ACTOR, name=name, description="classify only frames with motion")
    version = pipeline_version_create(
        actor=ACTOR,
        pipeline=pipeline,
        stages=[
            {"name": "detect", "version": detector, "condition": None},
            {"name": "classify", "version": classifier, "condition": dict(PIPELINE_CONDITION)},  # type: ignore[typeddict-item]
        ],
    )
    return pipeline_version_publish(actor=ACTOR, version=version)
