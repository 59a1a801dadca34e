"""Building rollout state the way the code does: versions through the registry, jobs through the services."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

from django.utils import timezone

from audit.actors import Actor
from deployments.models import Job, JobStatus
from deployments.services import job_apply_device_update
from models_registry.models import ModelVersion
from models_registry.samples import build_classifier
from models_registry.services import model_version_create, model_version_publish
from protocol.messages import JobUpdate
from telemetry.models import TelemetrySample

ACTOR = Actor.system("tests")


def publish_next_version(previous: ModelVersion, name: str = "fogdeck-sample-classifier-next") -> ModelVersion:
    """Another published version of the same model, computing exactly what the previous one does."""
    version = model_version_create(
        actor=ACTOR,
        model=previous.model,
        artifact=io.BytesIO(build_classifier(name=name)),
        format="onnx",
        framework="other",
        requirements={"runtime": "onnxruntime", "min_runtime_version": "1.16", "min_memory_mb": 512},
    )
    return model_version_publish(actor=ACTOR, version=version)


def finish(job: Job, status: str = JobStatus.SUCCEEDED) -> None:
    """The device reports the job in progress, then finished."""
    uid = job.device.uid
    for seq, state in ((1, JobStatus.IN_PROGRESS), (2, status)):
        update = JobUpdate(schema_version=1, job_id=str(job.id), seq=seq, status=state, ts=timezone.now())
        job_apply_device_update(uid=uid, update=update)


def telemetry(device_ids: list[int], model: str, number: int, at: dt.datetime, p95: float, **extra: Any) -> None:
    TelemetrySample.objects.bulk_create(
        TelemetrySample(
            device_id=pk, model_name=model, version_number=number, ts=at, interval_s=1.0,
            requests=extra.get("requests", 50), errors=extra.get("errors", 0),
            p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 1.2, max_ms=p95 * 1.5,
        )
        for pk in device_ids
    )  # fmt: skip
