"""The job worker: one job at a time, download → verify → activate into the inactive A/B slot.

A job either ends SUCCEEDED with its version serving, or ends FAILED/REJECTED/TIMED_OUT/CANCELED
with the previously active slot still serving; the switch itself is one atomic rename of
state.json (see `StateStore.activate`).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.download import DownloadFailed, RetryPolicy, fetch, hash_file
from agent.inference import LoadedModel
from agent.pipeline import LoadedPipeline, StageDownload, install_pipeline
from agent.policy import (
    JobRefused,
    SigningKeys,
    admission_refusal,
    check_artifact,
    check_envelope,
    check_version,
    verify_download,
)
from agent.state import StateStore
from protocol.messages import (
    TERMINAL_JOB_STATUSES,
    ArtifactMirror,
    ArtifactSource,
    JobDocument,
    JobStatus,
    JobStep,
    JobUpdate,
    JobUpdateAccepted,
    JobUpdateRejected,
    RecentJob,
    RefusedSource,
    SlotContent,
    SlotName,
)

logger = logging.getLogger("fogdeck.agent.jobs")

MODEL_FILE = "model.onnx"
_PROGRESS_EVERY_S = 0.5
_HTTP_TIMEOUT_S = 30.0
_MIRROR_TIMEOUT_S = 5.0  # a gateway that does not answer within this falls back to the next source
# The last source (the cloud) is retried, resuming with Range, until the job's deadline allows no more;
# a mirror gets one more try before the next source is asked (agent/download.py).
_LAST_SOURCE_RETRY = RetryPolicy(attempts=6)
_MIRROR_RETRY = RetryPolicy(attempts=2)


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
    if job.artifact_url is not None and all(m.url != job.artifact_url for m in mirrors):
        mirrors.append(ArtifactMirror(url=job.artifact_url, source="cloud"))
    return mirrors


def slot_path(state_dir: Path, slot: str) -> Path:
    return state_dir / "slots" / slot / MODEL_FILE


class JobRunner:
    """Accepts jobs from any thread (`submit`, `cancel`) and runs them on its own worker thread.

    The queue, the cancel rules, the seqs and the unanswered updates are the ledger's (agent/ledger.py,
    shared with the simulator), kept in the state store and persisted with it.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        keys: SigningKeys,
        device_uid: str,
        publish_update: Callable[[JobUpdate], None],
        on_activated: Callable[[LoadedModel | LoadedPipeline], None],
        on_state_changed: Callable[[], None],
    ) -> None:
        self._store = store
        self._keys = keys
        self._uid = device_uid
        self.dropped_unsigned = 0  # jobs dropped unqueued: no envelope, or an expired one (admission_refusal)
        self._publish_update = publish_update
        self._on_activated = on_activated
        self._on_state_changed = on_state_changed
        self._wake: queue.Queue[bool] = queue.Queue()  # True: look at the ledger's queue; False: stop
        self._thread: threading.Thread | None = None
        self.downloads = store.dir / "downloads"

    # --- called from the MQTT thread ------------------------------------------------------------

    def submit(self, job: JobDocument, *, resend_finished: bool = False) -> bool:
        """Queue `job` unless it is queued, running or finished; True when queued.

        `resend_finished` re-reports a finished job's outcome: the control plane listing it in a
        jobs/get reply means it never got that outcome.
        """
        with self._store.jobs() as ledger:
            done = ledger.finished_job(job.job_id)
        if done is not None:
            logger.info("dropping job %s: already finished (%s)", job.job_id, done.status)
            if resend_finished:
                with self._store.jobs() as ledger:
                    again = ledger.resend_finished(job.job_id, time.monotonic())
                if again is not None:
                    self._publish_update(again)
            return False
        refusal = admission_refusal(job)
        if refusal is not None:
            self.dropped_unsigned += 1
            with self._store.jobs() as ledger:
                ledger.refused_unsigned(time.monotonic())
            logger.warning(
                "dropping job %s unqueued: %s (a signed copy comes with the jobs/get reply)", job.job_id, refusal
            )
            return False
        with self._store.jobs() as ledger:
            if ledger.admit(job) != "queued":
                return False
        self._wake.put(True)
        logger.info("queued job %s: %s %s v%s", job.job_id, job.kind, job.model, job.version)
        return True

    def cancel(self, job_id: str) -> None:
        with self._store.jobs() as ledger:
            outcome = ledger.cancel(job_id)
        if outcome == "dequeued":
            self._report(job_id, "CANCELED", reason="canceled by the control plane before it started")

    def accepted(self, answer: JobUpdateAccepted) -> None:
        with self._store.jobs() as ledger:
            ledger.on_accepted(answer, time.monotonic())

    def rejected(self, answer: JobUpdateRejected) -> None:
        with self._store.jobs() as ledger:
            if ledger.on_rejected(answer):
                logger.warning("the control plane rejected job %s's update %s: %s", answer.job_id, answer.seq,
                               answer.reason_code)  # fmt: skip

    def unanswered(self) -> list[JobUpdate]:
        """Every update the control plane has not answered (to send again after a connect)."""
        with self._store.jobs() as ledger:
            return ledger.unanswered(time.monotonic())

    def jobs_reply_signed(self) -> None:
        with self._store.jobs() as ledger:
            ledger.jobs_reply_signed()

    def reask_due(self) -> bool:
        """Time to publish the state and a jobs/get again (a job came unsigned: agent/ledger.py)."""
        with self._store.jobs() as ledger:
            return ledger.reask_due(time.monotonic())

    def recent_jobs(self) -> list[RecentJob]:
        with self._store.jobs() as ledger:
            return ledger.recent_jobs()

    def due(self) -> list[JobUpdate]:
        """The unanswered updates whose backoff is over (to send again now)."""
        with self._store.jobs() as ledger:
            return ledger.due(time.monotonic())

    def held_job_ids(self) -> list[str]:
        """The jobs queued or running here (the AWS dialect cancels those the control plane no longer lists)."""
        with self._store.jobs() as ledger:
            return ledger.held()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.downloads.mkdir(parents=True, exist_ok=True)
        with self._store.jobs() as ledger:
            interrupted = ledger.interrupted()
        if interrupted is not None:
            # We restarted in the middle of it; whatever it did, the active slot in state.json serves.
            self._report(interrupted, "FAILED", reason="interrupted by agent restart")
        for leftover in self.downloads.iterdir():
            leftover.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._work, name="fogdeck-agent-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._wake.put(False)
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while self._wake.get():
            while True:
                with self._store.jobs() as ledger:
                    job = ledger.take_next()
                if job is None:
                    break
                try:
                    self._execute(job)
                finally:
                    with self._store.jobs() as ledger:
                        ledger.done_running()

    # --- one job --------------------------------------------------------------------------------

    def _execute(self, job: JobDocument) -> None:
        deadline = time.monotonic() + job.timeout_seconds
        download = self.downloads / f"{job.job_id}.part"
        transfer = ArtifactTransfer()
        try:
            claims = check_envelope(job, device_uid=self._uid, keys=self._keys)
            revoked = self._store.note_revoked(job.model, claims.revoked)
            check_version(job, self._store.active_version(job.model), claims=claims, revoked=revoked)
            if job.is_pipeline:
                install_pipeline(self, job, deadline)  # every stage, activated together (agent/pipeline.py)
                self._report(job.job_id, "SUCCEEDED")
                return
            self._report(job.job_id, "IN_PROGRESS", step="downloading", progress=0.0)
            reused = self._reusable_slot(job)
            if reused is not None:
                path = slot_path(self._store.dir, reused)
                size, sha256 = hash_file(path)
                self._report(job.job_id, "IN_PROGRESS", step="downloading", progress=1.0)
            else:
                path = download
                size, sha256 = self._download_from_sources(job, download, deadline, transfer)
            self._checkpoint(job, deadline)
            self._report(job.job_id, "IN_PROGRESS", step="verifying")
            verify_download(job, size, sha256, self._keys)
            self._checkpoint(job, deadline)
            self.start_activation()
            self._report(job.job_id, "IN_PROGRESS", step="activating")
            self._activate(job, path, reused, sha256)
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

    def _checkpoint(self, job: JobDocument | StageDownload, deadline: float) -> None:
        with self._store.jobs() as ledger:
            ledger.checkpoint(job, deadline, time.monotonic())

    def start_activation(self) -> None:
        with self._store.jobs() as ledger:
            ledger.start_activation()

    def _reusable_slot(self, job: JobDocument) -> SlotName | None:
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
        self, job: JobDocument | StageDownload, url: str, target: Path, deadline: float, *, fallback: bool = False
    ) -> tuple[int, str]:
        """Fetch the artifact into `target`, resuming after a dropped connection; (bytes received, sha256)."""
        size = job.size or 0
        last_report = time.monotonic()

        def progress(received: int) -> None:
            nonlocal last_report
            now = time.monotonic()
            if size and now - last_report >= _PROGRESS_EVERY_S:
                last_report = now
                self._report(job.job_id, "IN_PROGRESS", step="downloading", progress=min(1.0, received / size))
            self._checkpoint(job, deadline)

        try:
            received, sha256 = fetch(
                url,
                target,
                timeout=_MIRROR_TIMEOUT_S if fallback else _HTTP_TIMEOUT_S,
                deadline=deadline,
                max_bytes=job.size,
                on_progress=progress,
                retry=_MIRROR_RETRY if fallback else _LAST_SOURCE_RETRY,
            )
        except DownloadFailed as exc:
            raise JobRefused("FAILED", f"download failed: {exc.reason}") from None
        if size:
            self._report(job.job_id, "IN_PROGRESS", step="downloading", progress=min(1.0, received / size))
        return received, sha256

    def _activate(self, job: JobDocument, artifact: Path, reused: SlotName | None, sha256: str) -> None:
        """`sha256`: the artifact's, already checked against the job's by `verify_download`."""
        slot = reused or self._store.inactive_slot()
        installed = slot_path(self._store.dir, slot)
        if reused is None:
            # The inactive slot is overwritten; what was in it is no longer reported as installed.
            self._store.set_slot(slot, None)
            shutil.rmtree(installed.parent, ignore_errors=True)
            installed.parent.mkdir(parents=True)
            artifact.replace(installed)
            self._store.set_slot(slot, SlotContent(model=job.model, version=job.version, sha256=sha256))
        try:
            loaded = LoadedModel(installed, model=job.model, version=job.version, sha256=sha256)
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

    def _discard(self, slot: SlotName) -> None:
        self._store.set_slot(slot, None)
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
        succeeded_with_source = status == "SUCCEEDED" and transfer is not None and transfer.source is not None
        with self._store.jobs() as ledger:
            update = ledger.update(
                job_id,
                status,
                now=time.monotonic(),
                step=step,
                progress=progress,
                reason=reason,
                artifact_source=transfer.source if succeeded_with_source else None,  # type: ignore[union-attr]
                artifact_bytes=transfer.size if succeeded_with_source else None,  # type: ignore[union-attr]
                refused_sources=(transfer.refused or None) if transfer is not None else None,
            )
        if update is not None:  # None: a progress update held back (agent/ledger.py, PROGRESS_INTERVAL_S)
            self._publish_update(update)
        if status in TERMINAL_JOB_STATUSES:
            self._on_state_changed()  # the retained state lists it among the recent jobs (reconciliation)
