"""What a publish signs: the manifest of a model version and of a pipeline version (protocol/signing.py).

The canonical text of one of these is stored on the version with its signature; devices verify it before
they install anything (docs/protocol.md).
"""

from __future__ import annotations

import datetime as dt

from protocol import signing
from protocol.pipelines import PIPELINE_MANIFEST_SCHEMA_VERSION, PipelineManifest, StageManifest

from .models import ModelVersion, PipelineVersion


def build_manifest(version: ModelVersion, published_at: dt.datetime) -> signing.Manifest:
    return {
        "schema_version": signing.MANIFEST_SCHEMA_VERSION,
        "model": version.model.name,
        "model_id": version.model_id,
        "version": version.number,
        "label": version.label,
        "format": version.format,
        "framework": version.framework,
        "sha256": version.sha256,
        "size": version.size,
        "requirements": {
            "runtime": version.runtime,
            "min_runtime_version": version.min_runtime_version,
            "archs": list(version.archs),
            "min_memory_mb": version.min_memory_mb,
            "accelerator": version.accelerator,
        },
        "published_at": published_at.isoformat(),
    }


def build_pipeline_manifest(version: PipelineVersion, published_at: dt.datetime) -> PipelineManifest:
    """Each stage's model, version, format, sha256 and size: one signature covers the whole chain."""
    stages: list[StageManifest] = [
        {
            "name": stage.name,
            "model": stage.version.model.name,
            "model_id": stage.version.model_id,
            "version": stage.version.number,
            "format": stage.version.format,
            "sha256": stage.version.sha256,
            "size": stage.version.size,
            "condition": stage.condition,
        }
        for stage in version.ordered_stages()
    ]
    return {
        "schema_version": PIPELINE_MANIFEST_SCHEMA_VERSION,
        "kind": "pipeline",
        "pipeline": version.pipeline.name,
        "pipeline_id": version.pipeline_id,
        "version": version.number,
        "stages": stages,
        "published_at": published_at.isoformat(),
    }
