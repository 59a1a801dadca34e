"""What the agent must remember across restarts, in one `state.json` replaced atomically.

Slots, the active model, and the job ledger's state (per-job update sequence numbers, the finished
jobs, the updates the control plane has not answered yet; see agent/ledger.py). A reader
after a crash sees either the old or the new file, never half of one (write, fsync, rename).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ConfigDict, ValidationError

from agent.ledger import FINISHED_JOBS_KEPT, PROGRESS_INTERVAL_S, FinishedJob, JobLedger, LedgerState
from protocol.messages import ActiveModel, SlotContent, SlotName, Slots

__all__ = ["FINISHED_JOBS_KEPT", "FinishedJob", "StateStore"]

logger = logging.getLogger("fogdeck.agent.state")

STATE_FILE = "state.json"
MAX_REVOKED_KEPT = 4096  # per model; the newest revoked numbers are kept (old ones are below any floor that matters)


class _StateFile(LedgerState):
    """Slots, the active model and revoked versions; the job ledger's fields (`LedgerState`) besides."""

    model_config = ConfigDict(extra="ignore")

    slots: Slots = Slots(a=None, b=None)
    active: dict[str, ActiveModel] = {}
    # version numbers per model that signed job envelopes said are revoked; only ever grows, so an
    # older (still valid) envelope replayed later cannot make a revoked version installable again
    revoked: dict[str, list[int]] = {}


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

    def __init__(self, state_dir: Path, *, progress_interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_FILE
        self._lock = threading.RLock()
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state = self._load()
        self._ledger = JobLedger(self._state, progress_interval_s=progress_interval_s)

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

    @contextmanager
    def jobs(self) -> Iterator[JobLedger]:
        """The job ledger, under the store's lock; what it changed is on disk when the block ends."""
        with self._lock:
            before = self._ledger_snapshot()
            yield self._ledger
            if self._ledger_snapshot() != before:
                self._save()

    def _ledger_snapshot(self) -> tuple[object, ...]:
        state = self._state
        return (
            dict(state.seqs),
            state.current_job,
            [(k, v.status, v.seq) for k, v in state.finished.items()],
            [(k, v.seq) for k, v in state.unacked.items()],
        )

    def note_revoked(self, model: str, versions: list[int]) -> frozenset[int]:
        """Remember `versions` of `model` as revoked (persisted); every version of it known revoked."""
        with self._lock:
            known = set(self._state.revoked.get(model, []))
            if not set(versions) <= known:
                known |= set(versions)
                self._state.revoked[model] = sorted(known)[-MAX_REVOKED_KEPT:]
                self._save()
            return frozenset(known)

    def dump(self) -> dict[str, object]:
        with self._lock:
            dumped: dict[str, object] = json.loads(self._state.model_dump_json())
            return dumped
