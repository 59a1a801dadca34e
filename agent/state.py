"""What the agent must remember across restarts, in one `state.json` replaced atomically.

Slots, the active model, per-job update sequence numbers and the ids of finished jobs. A reader
after a crash sees either the old or the new file, never half of one (write, fsync, rename).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from protocol.messages import ActiveModel, JobStatus, SlotContent, SlotName, Slots

logger = logging.getLogger("fogdeck.agent.state")

STATE_FILE = "state.json"
# Enough to outlive any job the control plane could still redeliver; bounded so the file stays small.
FINISHED_JOBS_KEPT = 2000


class FinishedJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus
    reason: str | None = None
    seq: int = 0  # the last seq sent, so a re-sent outcome still moves forward


class _StateFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    slots: Slots = Slots(a=None, b=None)
    active: dict[str, ActiveModel] = {}
    seqs: dict[str, int] = {}  # last seq sent per unfinished job
    current_job: str | None = None  # the job that was running; reported FAILED if we restart mid-way
    finished: dict[str, FinishedJob] = {}  # insertion-ordered: the oldest are dropped first


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform lets you open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """Thread-safe access to the persisted state; every change is on disk before the call returns."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_FILE
        self._lock = threading.RLock()
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state = self._load()

    def _load(self) -> _StateFile:
        try:
            return _StateFile.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return _StateFile()
        except (ValidationError, ValueError) as exc:
            # Keep the evidence, start empty: a device that serves nothing is better than one that won't boot.
            corrupt = self.path.with_suffix(".corrupt")
            os.replace(self.path, corrupt)
            logger.error("state file %s is unreadable (%s); moved to %s", self.path, exc, corrupt)
            return _StateFile()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = self._state.model_dump_json(indent=1).encode()
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.dir)

    # --- slots and the active model ------------------------------------------------------------

    def slots(self) -> Slots:
        with self._lock:
            return self._state.slots

    def active(self) -> dict[str, ActiveModel]:
        with self._lock:
            return dict(self._state.active)

    def active_version(self, model: str) -> int | None:
        with self._lock:
            entry = self._state.active.get(model)
            return entry.version if entry else None

    def inactive_slot(self) -> SlotName:
        """The slot no active model uses; the v1 agent serves one model, so there always is one."""
        with self._lock:
            used = {entry.slot for entry in self._state.active.values()}
        return "b" if "a" in used else "a"

    def set_slot(self, slot: SlotName, content: SlotContent | None) -> None:
        with self._lock:
            if any(entry.slot == slot for entry in self._state.active.values()):
                raise RuntimeError(f"slot {slot} is active and cannot be changed")
            self._state.slots = self._state.slots.model_copy(update={slot: content})
            self._save()

    def activate(self, slot: SlotName) -> ActiveModel:
        """Serve what `slot` holds, in place of whatever was active (one model at a time)."""
        with self._lock:
            content = getattr(self._state.slots, slot)
            if content is None:
                raise RuntimeError(f"slot {slot} is empty")
            entry = ActiveModel(version=content.version, slot=slot)
            self._state.active = {content.model: entry}
            self._save()
            return entry

    # --- jobs ------------------------------------------------------------------------------------

    def next_seq(self, job_id: str) -> int:
        with self._lock:
            seq = self._state.seqs.get(job_id, 0) + 1
            self._state.seqs[job_id] = seq
            self._save()
            return seq

    def set_current_job(self, job_id: str | None) -> None:
        with self._lock:
            self._state.current_job = job_id
            self._save()

    def current_job(self) -> str | None:
        with self._lock:
            return self._state.current_job

    def finished(self, job_id: str) -> FinishedJob | None:
        with self._lock:
            return self._state.finished.get(job_id)

    def finish(self, job_id: str, status: JobStatus, reason: str | None) -> None:
        with self._lock:
            seq = self._state.seqs.pop(job_id, 0)
            if self._state.current_job == job_id:
                self._state.current_job = None
            finished = self._state.finished
            finished.pop(job_id, None)
            finished[job_id] = FinishedJob(status=status, reason=reason, seq=seq)
            while len(finished) > FINISHED_JOBS_KEPT:
                finished.pop(next(iter(finished)))
            self._save()

    def next_finished_seq(self, job_id: str) -> FinishedJob | None:
        """Reserve a new seq to re-send a finished job's outcome; None when the job is not finished."""
        with self._lock:
            done = self._state.finished.get(job_id)
            if done is None:
                return None
            done.seq += 1
            self._save()
            return done.model_copy()

    def dump(self) -> dict[str, object]:
        with self._lock:
            return json.loads(self._state.model_dump_json())
