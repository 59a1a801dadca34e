"""The job worker: one job at a time, download → verify → activate into the inactive A/B slot.

A job either ends SUCCEEDED with its version serving, or ends FAILED/REJECTED/TIMED_OUT/CANCELED
with the previously active slot still serving; the switch itself is one atomic rename of
state.json (see `StateStore.activate`).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.inference import LoadedModel
from agent.pipeline import install_pipeline
from agent.policy import JobRefused, SigningKeys, check_artifact, check_version, verify_download
from agent.state import StateStore
from protocol.messages import (
    ArtifactMirror,
    ArtifactSource,
    JobDocument,
    JobStatus,
    JobStep,
    JobUpdate,
    RefusedSource,
    SlotContent,
    utc_now,
)

logger = logging.getLogger("fogdeck.agent.jobs")

MODEL_FILE = "model.onnx"
_CHUNK = 64 * 1024
_PROGRESS_EVERY_S = 0.5
_HTTP_TIMEOUT_S = 30.0
_MIRROR_TIMEOUT_S = 5.0  # a gateway that does not answer within this falls back to the next source


@dataclass
class ArtifactTransfer:
    """Where this job's artifact came from, for the SUCCEEDED update (and which sources were refused)."""

    source: ArtifactSource | None = None
    size: int = 0
    refused: list[RefusedSource] = field(default_factory=list)

    def refuse(self, source: ArtifactSource, reason: str) -> None:
        logger.warning("artifact source %s refused: %s", source, reason)
        self.refused.append(RefusedSource(source=source, reason=reason[:256]))

    def note(self) -> str:
        return "; ".join(f"{r.source} copy refused: {r.reason}" for r in self.refused)


def artifact_sources(job: JobDocument) -> list[ArtifactMirror]:
    """The job's mirrors in order, ending with its `artifact_url` (the cloud) when they don't list it."""
    mirrors = list(job.mirrors or [])
    if all(m.url != job.artifact_url for m in mirrors):
        mirrors.append(ArtifactMirror(url=job.artifact_url, source="cloud"))
    return mirrors


def slot_path(state_dir: Path, slot: str) -> Path:
    return state_dir / "slots" / slot / MODEL_FILE


class JobRunner:
    """Accepts jobs from any thread (`submit`, `cancel`) and runs them on its own worker thread."""

    def __init__(
        self,
        *,
        store: StateStore,
        keys: SigningKeys,
        publish_update: Callable[[JobUpdate], None],
        on_activated: Callable[[LoadedModel], None],
        on_state_changed: Callable[[], None],
    ) -> None:
        self._store = store
        self._keys = keys
        self._publish_update = publish_update
        self._on_activated = on_activated
        self._on_state_changed = on_state_changed
        self._queue: queue.Queue[JobDocument | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[str, JobDocument] = {}  # queued, not started
        self._running: str | None = None
        self._activating = False
        self._cancel_requested: set[str] = set()
        self._thread: threading.Thread | None = None
        self.downloads = store.dir / "downloads"

    # --- called from the MQTT thread ------------------------------------------------------------

    def submit(self, job: JobDocument, *, resend_finished: bool = False) -> bool:
        """Queue `job` unless it is queued, running or finished; True when queued.

        `resend_finished` re-reports a finished job's outcome: the control plane listing it in a
        jobs/get reply means it never got that outcome.
        """
        done = self._store.finished(job.job_id)
        if done is not None:
            logger.info("dropping job %s: already finished (%s)", job.job_id, done.status)
            if resend_finished:
                again = self._store.next_finished_seq(job.job_id)
                if again is not None:
                    self._send(job.job_id, again.seq, again.status, None, None, again.reason)
            return False
        with self._lock:
            if job.job_id in self._pending or job.job_id == self._running:
                return False
            self._pending[job.job_id] = job
        self._queue.put(job)
        logger.info("queued job %s: %s %s v%s", job.job_id, job.kind, job.model, job.version)
        return True

    def cancel(self, job_id: str) -> None:
        with self._lock:
            queued = self._pending.pop(job_id, None)
            if queued is None:
                if job_id == self._running and not self._activating:
                    self._cancel_requested.add(job_id)
                return
        self._report(job_id, "CANCELED", reason="canceled by the control plane before it started")

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.downloads.mkdir(parents=True, exist_ok=True)
        interrupted = self._store.current_job()
        if interrupted is not None:
            # We restarted in the middle of it; whatever it did, the active slot in state.json serves.
            self._report(interrupted, "FAILED", reason="interrupted by agent restart")
        for leftover in self.downloads.iterdir():
            leftover.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._work, name="fogdeck-agent-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                if self._pending.pop(job.job_id, None) is None:
                    continue  # canceled while queued
                self._running, self._activating = job.job_id, False
            try:
                self._execute(job)
            finally:
                with self._lock:
                    self._running = None
                    self._cancel_requested.discard(job.job_id)

    # --- one job --------------------------------------------------------------------------------

    def _execute(self, job: JobDocument) -> None:
        deadline = time.monotonic() + job.timeout_seconds
        self._store.set_current_job(job.job_id)
        download = self.downloads / f"{job.job_id}.part"
        transfer = ArtifactTransfer()
        try:
            check_version(job, self._store.active_version(job.model))
            if job.is_pipeline:
                install_pipeline(self, job, deadline)  # every stage, activated together (agent/pipeline.py)
                self._report(job.job_id, "SUCCEEDED")
                return
            self._report(job.job_id, "IN_PROGRESS", step="downloading", progress=0.0)
            reused = self._reusable_slot(job)
            if reused is not None:
                path = slot_path(self._store.dir, reused)
                size, sha256 = _hash_file(path)
                self._report(job.job_id, "IN_PROGRESS", step="downloading", progress=1.0)
            else:
                path = download
                size, sha256 = self._download_from_sources(job, download, deadline, transfer)
            self._checkpoint(job, deadline)
            self._report(job.job_id, "IN_PROGRESS", step="verifying")
            verify_download(job, size, sha256, self._keys)
            self._checkpoint(job, deadline)
            with self._lock:
                self._activating = True
            self._report(job.job_id, "IN_PROGRESS", step="activating")
            self._activate(job, path, reused)
            self._report(job.job_id, "SUCCEEDED", reason=transfer.note() or None, transfer=transfer)
        except JobRefused as refused:
            logger.warning("job %s %s: %s", job.job_id, refused.status, refused.reason)
            reason = "; ".join(filter(None, [refused.reason, transfer.note()]))
            self._report(job.job_id, refused.status, reason=reason, transfer=transfer)
        except Exception as exc:
            logger.exception("job %s failed", job.job_id)
            self._report(job.job_id, "FAILED", reason=f"agent error: {type(exc).__name__}: {exc}"[:1000])
        finally:
            download.unlink(missing_ok=True)

    def _checkpoint(self, job: JobDocument, deadline: float) -> None:
        with self._lock:
            canceled = job.job_id in self._cancel_requested
        if canceled:
            raise JobRefused("CANCELED", "canceled by the control plane")
        if time.monotonic() > deadline:
            raise JobRefused("TIMED_OUT", f"not finished within {job.timeout_seconds} s")

    def _reusable_slot(self, job: JobDocument) -> str | None:
        """The inactive slot when it already holds this artifact (a rollback to the previous version)."""
        slot = self._store.inactive_slot()
        content = getattr(self._store.slots(), slot)
        if content is not None and content.sha256 == job.sha256 and slot_path(self._store.dir, slot).exists():
            return slot
        return None

    def _download_from_sources(
        self, job: JobDocument, target: Path, deadline: float, transfer: ArtifactTransfer
    ) -> tuple[int, str]:
        """Try each source in order; an unreachable one or bytes that fail sha256/size move on to the next.

        The last source's failures end the job as before (its bytes are checked in `verifying`).
        """
        sources = artifact_sources(job)
        for index, mirror in enumerate(sources):
            last = index == len(sources) - 1
            try:
                size, sha256 = self._download(job, mirror.url, target, deadline, fallback=not last)
                if not last:
                    check_artifact(job, size, sha256)
            except JobRefused as exc:
                if last or exc.status in ("CANCELED", "TIMED_OUT"):
                    raise
                transfer.refuse(mirror.source, exc.reason)
                continue
            transfer.source, transfer.size = mirror.source, size
            return size, sha256
        raise AssertionError("unreachable: the last source returns or raises")

    def _download(
        self, job: JobDocument, url: str, target: Path, deadline: float, *, fallback: bool = False
    ) -> tuple[int, str]:
        """Stream the artifact to `target`; (bytes received, sha256). Stops after size+1 bytes."""
        digest, received, last_report = hashlib.sha256(), 0, time.monotonic()
        timeout = max(1.0, min(_MIRROR_TIMEOUT_S if fallback else _HTTP_TIMEOUT_S, deadline - time.monotonic()))
        try:
            # The URL comes from a signed-in control plane and is checked to be http(s) by the protocol.
            with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:  # noqa: S310
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if received > job.size:
                        break  # more than announced: the sha256 check will refuse it, no need for the rest
                    now = time.monotonic()
                    if now - last_report >= _PROGRESS_EVERY_S:
                        last_report = now
                        self._report(
                            job.job_id, "IN_PROGRESS", step="downloading", progress=min(1.0, received / job.size)
                        )
                    self._checkpoint(job, deadline)
        except urllib.error.HTTPError as exc:
            raise JobRefused("FAILED", f"download failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise JobRefused("FAILED", f"download failed: {getattr(exc, 'reason', exc)}") from None
        self._report(job.job_id, "IN_PROGRESS", step="downloading", progress=min(1.0, received / job.size))
        return received, digest.hexdigest()

    def _activate(self, job: JobDocument, artifact: Path, reused: str | None) -> None:
        slot = reused or self._store.inactive_slot()
        installed = slot_path(self._store.dir, slot)
        if reused is None:
            # The inactive slot is overwritten; what was in it is no longer reported as installed.
            self._store.set_slot(slot, None)
            shutil.rmtree(installed.parent, ignore_errors=True)
            installed.parent.mkdir(parents=True)
            artifact.replace(installed)
            self._store.set_slot(slot, SlotContent(model=job.model, version=job.version, sha256=job.sha256))
        try:
            loaded = LoadedModel(installed, model=job.model, version=job.version, sha256=job.sha256)
        except Exception as exc:
            self._discard(slot)
            raise JobRefused("FAILED", f"model does not load: {exc}"[:1000]) from None
        try:
            loaded.smoke_test()
        except Exception as exc:
            self._discard(slot)
            raise JobRefused("FAILED", f"smoke inference failed: {exc}"[:1000]) from None
        self._store.activate(slot)
        self._on_activated(loaded)
        self._on_state_changed()

    def _discard(self, slot: str) -> None:
        self._store.set_slot(slot, None)  # type: ignore[arg-type]
        shutil.rmtree(slot_path(self._store.dir, slot).parent, ignore_errors=True)
        self._on_state_changed()

    # --- reporting ------------------------------------------------------------------------------

    def _report(
        self,
        job_id: str,
        status: JobStatus,
        *,
        step: JobStep | None = None,
        progress: float | None = None,
        reason: str | None = None,
        transfer: ArtifactTransfer | None = None,
    ) -> None:
        seq = self._store.next_seq(job_id)
        self._send(job_id, seq, status, step, progress, reason, transfer)
        if status != "IN_PROGRESS" and status != "QUEUED":
            self._store.finish(job_id, status, reason)

    def _send(
        self,
        job_id: str,
        seq: int,
        status: JobStatus,
        step: JobStep | None,
        progress: float | None,
        reason: str | None,
        transfer: ArtifactTransfer | None = None,
    ) -> None:
        succeeded_with_source = status == "SUCCEEDED" and transfer is not None and transfer.source is not None
        update = JobUpdate(
            schema_version=1,
            job_id=job_id,
            seq=seq,
            status=status,
            step=step,
            progress=progress,
            reason=reason[:1024] if reason else None,
            ts=utc_now(),
            artifact_source=transfer.source if succeeded_with_source else None,  # type: ignore[union-attr]
            artifact_bytes=transfer.size if succeeded_with_source else None,  # type: ignore[union-attr]
            refused_sources=(transfer.refused or None) if transfer is not None else None,
        )
        self._publish_update(update)


def _hash_file(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
