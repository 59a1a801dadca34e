"""Model pipelines on the device: install every stage as one unit, then run the chain behind `/infer`.

Install: each stage is downloaded (or reused from the active slot when its bytes are already there),
checked against its sha256, its own signed manifest and the pipeline's signed manifest, and written into
the inactive slot with `pipeline.json`. All stages are loaded and smoke-tested, then the slot is activated
with the one atomic rename of state.json that every job uses: either the whole new pipeline serves, or
whatever served before still does.

Run: stage 1 takes the request's inputs. Each later stage runs only if its condition on the previous
stage's output holds (protocol/pipelines.py); it feeds each input by name from the previous stage's
outputs, else from the request. A false condition skips that stage and the rest of the chain.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.download import hash_file
from agent.inference import BadInput, LoadedModel
from agent.policy import JobRefused, SigningKeys
from agent.state import StateStore
from protocol import signing
from protocol.messages import JobDocument, JobStatus, JobStep, PipelineStageDocument, SlotContent, SlotName
from protocol.pipelines import Condition, condition_holds

PIPELINE_FILE = "pipeline.json"
STAGE_MANIFEST_FIELDS = ("model", "version", "format", "sha256", "size")


def stage_file(slot_dir: Path, position: int) -> Path:
    return slot_dir / f"stage-{position}.onnx"


def manifest_digest(manifest_text: str) -> str:
    """What a pipeline slot records as its sha256: the digest of the signed pipeline manifest."""
    return hashlib.sha256(manifest_text.encode()).hexdigest()


@dataclass(frozen=True)
class StageRun:
    name: str
    model: str
    version: int
    ran: bool
    latency_ms: float | None = None
    condition_value: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "version": self.version,
            "status": "ran" if self.ran else "skipped",
            "latency_ms": self.latency_ms,
            "condition_value": self.condition_value,
        }


@dataclass(frozen=True)
class Stage:
    name: str
    condition: Condition | None
    loaded: LoadedModel


class LoadedPipeline:
    """Every stage in its own onnxruntime session; the same `prepare` as a model (stage 1's inputs)."""

    def __init__(self, *, model: str, version: int, sha256: str, stages: list[Stage]) -> None:
        self.model, self.version, self.sha256, self.stages = model, version, sha256, stages
        self.inputs = stages[0].loaded.inputs

    @classmethod
    def from_slot(cls, slot_dir: Path, *, model: str, version: int, sha256: str) -> LoadedPipeline:
        spec = json.loads((slot_dir / PIPELINE_FILE).read_text())
        stages = [
            Stage(
                name=item["name"],
                condition=item.get("condition"),
                loaded=LoadedModel(
                    stage_file(slot_dir, position), model=item["model"], version=item["version"], sha256=item["sha256"]
                ),
            )
            for position, item in enumerate(spec["stages"])
        ]
        return cls(model=model, version=version, sha256=sha256, stages=stages)

    def prepare(self, raw: object) -> dict[str, np.ndarray]:
        return self.stages[0].loaded.prepare(raw)

    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[StageRun]]:
        """The last stage that ran's outputs, and what each stage did."""
        runs: list[StageRun] = []
        outputs: dict[str, np.ndarray] = {}
        stopped = False
        for index, stage in enumerate(self.stages):
            loaded = stage.loaded
            if index > 0 and not stopped:
                try:
                    holds, observed = condition_holds(stage.condition, outputs)
                except KeyError:
                    raise BadInput(f"stage {stage.name}: the previous stage has no output {stage.condition}") from None
                if not holds:
                    stopped = True
                    runs.append(StageRun(stage.name, loaded.model, loaded.version, False, None, observed))
                    continue
            elif stopped:
                runs.append(StageRun(stage.name, loaded.model, loaded.version, False))
                continue
            else:
                observed = None
            stage_feeds = {spec.name: outputs.get(spec.name, feeds.get(spec.name)) for spec in loaded.inputs}
            missing = [name for name, value in stage_feeds.items() if value is None]
            if missing:
                raise BadInput(f"stage {stage.name} needs inputs {', '.join(missing)} that nothing provides")
            started = time.perf_counter()
            outputs = loaded.run(stage_feeds)  # type: ignore[arg-type]
            latency = (time.perf_counter() - started) * 1000
            runs.append(StageRun(stage.name, loaded.model, loaded.version, True, latency, observed))
        return outputs, runs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer(feeds)[0]

    def smoke_test(self) -> float:
        """Every stage once on zeros, whatever the conditions; latency of the whole chain in ms."""
        started = time.perf_counter()
        for stage in self.stages:
            stage.loaded.smoke_test()
        return (time.perf_counter() - started) * 1000


def load_slot(slot_dir: Path, *, model: str, version: int, sha256: str) -> LoadedPipeline | None:
    """The pipeline a slot holds, or None when the slot holds a single model."""
    if not (slot_dir / PIPELINE_FILE).exists():
        return None
    return LoadedPipeline.from_slot(slot_dir, model=model, version=version, sha256=sha256)


# --- verification -----------------------------------------------------------------------------------


def _manifest(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise JobRefused("REJECTED", f"{what} manifest is not JSON") from None
    if not isinstance(value, dict):
        raise JobRefused("REJECTED", f"{what} manifest is not a JSON object")
    return value


def verify_pipeline_manifest(job: JobDocument, public_key: str | None) -> None:
    """The pipeline's signature, and that its manifest lists exactly the job's stages, in order."""
    if public_key is None:
        raise JobRefused("REJECTED", f"unknown signing key {job.key_id}")
    if not signing.verify(public_key, job.manifest, job.signature):
        raise JobRefused("REJECTED", f"pipeline signature does not verify with key {job.key_id}")
    manifest = _manifest(job.manifest, "pipeline")
    if manifest.get("kind") != "pipeline" or manifest.get("pipeline") != job.model:
        raise JobRefused("REJECTED", f"manifest is not the one of pipeline {job.model}")
    if manifest.get("version") != job.version or type(manifest.get("version")) is not int:
        raise JobRefused("REJECTED", f"manifest version {manifest.get('version')!r} is not the job's {job.version}")
    listed = manifest.get("stages")
    stages = job.stages or []
    if not isinstance(listed, list) or len(listed) != len(stages):
        raise JobRefused("REJECTED", "the signed manifest lists other stages than the job")
    for position, (signed, stage) in enumerate(zip(listed, stages, strict=True)):
        condition = stage.condition.model_dump() if stage.condition else None
        expected = {
            "name": stage.name,
            "model": stage.model,
            "version": stage.version,
            "format": stage.format,
            "sha256": stage.sha256,
            "size": stage.size,
        }
        if not isinstance(signed, dict) or any(signed.get(k) != v for k, v in expected.items()):
            raise JobRefused("REJECTED", f"stage {position + 1} ({stage.name}) differs from the signed manifest")
        if (signed.get("condition") or None) != condition and not _same_condition(signed.get("condition"), condition):
            raise JobRefused("REJECTED", f"stage {position + 1} ({stage.name}) condition differs from the signed one")


def _same_condition(signed: Any, sent: dict[str, Any] | None) -> bool:
    if not isinstance(signed, dict) or sent is None:
        return signed is None and sent is None
    return (
        signed.get("output") == sent["output"]
        and signed.get("op") == sent["op"]
        and (float(signed.get("value", "nan")) == float(sent["value"]))
    )


def verify_stage(stage: PipelineStageDocument, position: int, size: int, sha256: str, public_key: str | None) -> None:
    """The stage's bytes, its own signature, and that its manifest describes them."""
    label = f"stage {position + 1} ({stage.name})"
    if sha256 != stage.sha256:
        raise JobRefused("REJECTED", f"{label}: sha256 mismatch: expected {stage.sha256}, got {sha256}")
    if size != stage.size:
        raise JobRefused("REJECTED", f"{label}: size mismatch: expected {stage.size} bytes, got {size}")
    if public_key is None:
        raise JobRefused("REJECTED", f"{label}: unknown signing key {stage.key_id}")
    if not signing.verify(public_key, stage.manifest, stage.signature):
        raise JobRefused("REJECTED", f"{label}: signature does not verify with key {stage.key_id}")
    manifest = _manifest(stage.manifest, label)
    for field in STAGE_MANIFEST_FIELDS:
        value, expected = manifest.get(field), getattr(stage, field)
        if value != expected or type(value) is not type(expected):
            raise JobRefused("REJECTED", f"{label}: manifest {field} {value!r} does not match {expected!r}")


# --- install ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageDownload:
    """What the runner's downloader reads from a job, for one stage."""

    job_id: str
    artifact_url: str
    size: int
    timeout_seconds: int


class PipelineRunner(Protocol):
    """What an install needs from the job runner (agent/jobs.py `JobRunner`), which calls it: named here
    so that this module does not import the runner back."""

    downloads: Path
    _store: StateStore
    _keys: SigningKeys

    def start_activation(self) -> None: ...

    @property
    def _on_activated(self) -> Callable[[LoadedModel | LoadedPipeline], None]: ...

    @property
    def _on_state_changed(self) -> Callable[[], None]: ...

    def _report(
        self, job_id: str, status: JobStatus, *, step: JobStep | None = ..., progress: float | None = ...
    ) -> None: ...

    def _download(
        self, job: JobDocument | StageDownload, url: str, target: Path, deadline: float, *, fallback: bool = ...
    ) -> tuple[int, str]: ...

    def _checkpoint(self, job: JobDocument | StageDownload, deadline: float) -> None: ...

    def _discard(self, slot: SlotName) -> None: ...


def install_pipeline(runner: PipelineRunner, job: JobDocument, deadline: float) -> None:
    """Download and verify every stage, then activate them together (raises JobRefused on any failure)."""
    store, stages = runner._store, job.stages or []
    runner._report(job.job_id, "IN_PROGRESS", step="verifying")
    verify_pipeline_manifest(job, runner._keys.public_key(job.key_id))
    runner._report(job.job_id, "IN_PROGRESS", step="downloading", progress=0.0)
    fetched: list[Path] = []
    try:
        for position, stage in enumerate(stages):
            reused = _already_installed(store.dir, stage)
            target = runner.downloads / f"{job.job_id}.stage-{position}.part"
            fetched.append(target)
            if reused is not None:
                shutil.copyfile(reused, target)
                size, sha256 = hash_file(target)
            else:
                size, sha256 = runner._download(
                    StageDownload(job.job_id, str(stage.artifact_url), stage.size, job.timeout_seconds),
                    str(stage.artifact_url),
                    target,
                    deadline,
                )
            runner._checkpoint(job, deadline)
            verify_stage(stage, position, size, sha256, runner._keys.public_key(stage.key_id))
            runner._report(job.job_id, "IN_PROGRESS", step="downloading", progress=(position + 1) / len(stages))
        runner.start_activation()
        runner._report(job.job_id, "IN_PROGRESS", step="activating")
        _activate(runner, job, fetched)
    finally:
        for path in fetched:
            path.unlink(missing_ok=True)


def _already_installed(state_dir: Path, stage: PipelineStageDocument) -> Path | None:
    """A stage file with these bytes in a slot (the active pipeline shares stages with the new one)."""
    for candidate in sorted((state_dir / "slots").glob("*/*.onnx")):
        spec = candidate.parent / PIPELINE_FILE
        if spec.exists():
            try:
                listed = json.loads(spec.read_text())["stages"]
                position = int(candidate.stem.split("-")[1])
                if listed[position]["sha256"] == stage.sha256:
                    return candidate
            except (ValueError, KeyError, IndexError):
                continue
    return None


def _activate(runner: PipelineRunner, job: JobDocument, files: list[Path]) -> None:
    store, stages = runner._store, job.stages or []
    slot = store.inactive_slot()
    slot_dir = store.dir / "slots" / slot
    store.set_slot(slot, None)  # the inactive slot is overwritten: no longer reported as installed
    shutil.rmtree(slot_dir, ignore_errors=True)
    slot_dir.mkdir(parents=True)
    for position, path in enumerate(files):
        path.replace(stage_file(slot_dir, position))
    spec = {
        "pipeline": job.model,
        "version": job.version,
        "stages": [
            {
                "name": s.name,
                "model": s.model,
                "version": s.version,
                "sha256": s.sha256,
                "condition": s.condition.model_dump() if s.condition else None,
            }
            for s in stages
        ],
    }
    (slot_dir / PIPELINE_FILE).write_text(json.dumps(spec))
    digest = manifest_digest(job.manifest)
    store.set_slot(slot, SlotContent(model=job.model, version=job.version, sha256=digest))
    try:
        loaded = LoadedPipeline.from_slot(slot_dir, model=job.model, version=job.version, sha256=digest)
        loaded.smoke_test()
    except Exception as exc:
        runner._discard(slot)
        raise JobRefused("FAILED", f"pipeline does not load or run: {exc}"[:1000]) from None
    store.activate(slot)  # the one atomic switch: all stages at once
    runner._on_activated(loaded)
    runner._on_state_changed()
