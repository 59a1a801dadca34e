"""The device's job ledger: the job state machine the agent and the simulator share (no I/O, no clock).

What it decides: which jobs are queued and which one runs (one at a time, in arrival order), what a
`cancel` does (a queued job is dropped and reported CANCELED; a running one stops at its next
checkpoint unless activation has started), each update's `seq` (it only grows per job, across
restarts when the caller persists `LedgerState`), which finished jobs it remembers (and drops again
when they come back), and which updates the control plane has not answered yet: the latest update of
each job stays in `unacked` until `P/jobs/{id}/update/accepted|rejected` answers it, and `due()` hands
it back for a re-send with exponential backoff. How long it waits first follows how long answers take
(`ResendClock`, never sooner than RESEND_FIRST_S): a control plane that answers in 20 s during a large
wave is slow, not losing updates; re-sent after a fixed 5 s, a 10,000-device wave carried about 22,000
duplicates that slowed the bridges further.
The caller does the I/O: it publishes what the ledger returns and saves `LedgerState` after every
change (the agent to state.json, the simulator nowhere). Time comes in as `now` (monotonic seconds), so tests drive it.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from agent.policy import JobRefused
from protocol.messages import (
    MAX_RECENT_JOBS,
    TERMINAL_JOB_STATUSES,
    JobDocument,
    JobStatus,
    JobStep,
    JobUpdate,
    JobUpdateAccepted,
    JobUpdateRejected,
    RecentJob,
    utc_now,
)

# Enough to outlive any job the control plane could still redeliver; bounded so the state stays small.
FINISHED_JOBS_KEPT = 2000
RESEND_FIRST_S = 10.0  # an update unanswered this long (or for the answer time's RTO, if longer) is sent again ...
RESEND_MAX_S = 60.0  # ... then after twice as long each time, up to this
RESEND_JITTER = 0.2  # ± this share, so a fleet that lost its answers together does not re-send together
# After a job arrives without a (valid) envelope, the device reports its state and asks for its jobs again,
# at most this often and then with the updates' backoff, until a jobs/get reply comes with every job signed:
# the control plane signs jobs only for devices whose state it has, and a state (or a jobs/get) lost on its
# way (a broker dropping the bridge's messages) would otherwise leave such a device without its jobs.
REASK_MIN_S = 5.0
# An IN_PROGRESS update within this long of the job's last one sent is held back, and replaced by the next
# one; the newest is sent once the interval is over (by `due`), a final one at once. A small model goes
# from downloading to SUCCEEDED in a fraction of a second: five updates, each written, answered and
# parsed, where the control plane needs the first and the last (docs/protocol.md, "Progress updates").
PROGRESS_INTERVAL_S = 1.0


class Deadlined(Protocol):
    """A job, or one download of a pipeline job's stage: what a checkpoint reads."""

    @property
    def job_id(self) -> str: ...

    @property
    def timeout_seconds(self) -> int: ...


class FinishedJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus
    reason: str | None = None
    seq: int = 0  # the last seq sent, so a re-sent outcome still moves forward


class LedgerState(BaseModel):
    """What must survive a restart (the agent persists it in state.json; old files lack `unacked`)."""

    model_config = ConfigDict(extra="ignore")

    seqs: dict[str, int] = {}  # last seq sent per unfinished job
    current_job: str | None = None  # the job that was running; reported FAILED if we restart mid-way
    finished: dict[str, FinishedJob] = {}  # insertion-ordered: the oldest are dropped first
    unacked: dict[str, JobUpdate] = {}  # the latest update per job the control plane has not answered


Admission = Literal["queued", "duplicate", "finished"]
CancelOutcome = Literal["dequeued", "stopping", "ignored"]


@dataclass
class _Resend:
    at: float
    delay: float
    sent: float = 0.0  # when the update was last sent
    resent: bool = False  # its answer then says nothing about the answer time (which send does it answer?)
    held: bool = False  # a progress update not sent yet: `at` is when it may go (PROGRESS_INTERVAL_S)


class ResendClock:
    """The first re-send wait, from the answer times seen so far: TCP's retransmission timeout (RFC 6298:
    smoothed time plus four times its variation), never below RESEND_FIRST_S nor above RESEND_MAX_S.
    Only answers to updates sent once are measured (Karn's rule)."""

    def __init__(self) -> None:
        self.smoothed: float | None = None
        self.variation = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.smoothed is None:
            self.smoothed, self.variation = seconds, seconds / 2
            return
        self.variation = 0.75 * self.variation + 0.25 * abs(self.smoothed - seconds)
        self.smoothed = 0.875 * self.smoothed + 0.125 * seconds

    @property
    def timeout(self) -> float:
        if self.smoothed is None:
            return RESEND_FIRST_S
        return min(RESEND_MAX_S, max(RESEND_FIRST_S, self.smoothed + 4 * self.variation))


class JobLedger:
    """One device's jobs. Not thread-safe: the agent calls it under its state lock."""

    def __init__(
        self, state: LedgerState, *, rng: random.Random | None = None, progress_interval_s: float = PROGRESS_INTERVAL_S
    ) -> None:
        """`progress_interval_s` 0 sends every update at once (the AWS dialect, whose device never calls `due`)."""
        self.state = state
        self.progress_interval_s = progress_interval_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._queue: deque[JobDocument] = deque()
        self._queued: set[str] = set()
        self.running: str | None = None
        self.activating = False
        self._cancel_requested: set[str] = set()
        self._resend: dict[str, _Resend] = {}
        self._sent_at: dict[tuple[str, int], float] = {}  # (job, seq) -> first send, until answered
        self._last_sent: dict[str, float] = {}  # job -> when its last update was sent (unfinished jobs)
        self.clock = ResendClock()
        self._reask: _Resend | None = None
        self._last_reask = float("-inf")

    # --- the queue --------------------------------------------------------------------------------

    def admit(self, job: JobDocument) -> Admission:
        """Queue `job` unless it is queued, running or finished."""
        if job.job_id in self.state.finished:
            return "finished"
        if job.job_id in self._queued or job.job_id == self.running:
            return "duplicate"
        self._queue.append(job)
        self._queued.add(job.job_id)
        return "queued"

    def held(self) -> list[str]:
        """The jobs queued or running here (the AWS dialect cancels those the control plane no longer lists)."""
        return [*self._queued, *([self.running] if self.running else [])]

    def is_queued(self, job_id: str) -> bool:
        return job_id in self._queued

    def take_next(self) -> JobDocument | None:
        """The next queued job, now running (and remembered as such until it finishes)."""
        while self._queue:
            job = self._queue.popleft()
            if job.job_id not in self._queued:
                continue  # canceled while queued
            self._queued.discard(job.job_id)
            self.running, self.activating = job.job_id, False
            self.state.current_job = job.job_id
            return job
        return None

    def done_running(self) -> None:
        if self.running is not None:
            self._cancel_requested.discard(self.running)
        self.running, self.activating = None, False

    def cancel(self, job_id: str) -> CancelOutcome:
        """A queued job is dropped (the caller reports it CANCELED); a running one stops at its next
        checkpoint, unless activation has started: then it runs to its end."""
        if job_id in self._queued:
            self._queued.discard(job_id)
            return "dequeued"
        if job_id == self.running and not self.activating:
            self._cancel_requested.add(job_id)
            return "stopping"
        return "ignored"

    def start_activation(self) -> None:
        """From here on a cancel no longer stops the running job."""
        self.activating = True

    def checkpoint(self, job: Deadlined, deadline: float, now: float) -> None:
        """Raise JobRefused when the running job was canceled or is past its deadline."""
        if job.job_id in self._cancel_requested:
            raise JobRefused("CANCELED", "canceled by the control plane")
        if now > deadline:
            raise JobRefused("TIMED_OUT", f"not finished within {job.timeout_seconds} s")

    def interrupted(self) -> str | None:
        """The job that was running when the device last stopped (report it FAILED)."""
        return self.state.current_job

    # --- updates and their answers ----------------------------------------------------------------

    def update(
        self,
        job_id: str,
        status: JobStatus,
        *,
        now: float,
        step: JobStep | None = None,
        progress: float | None = None,
        reason: str | None = None,
        **extra: object,
    ) -> JobUpdate | None:
        """The next update of `job_id` (seq + 1), kept unanswered until the control plane answers it: to send
        now, or None when it is a progress update held back (PROGRESS_INTERVAL_S): `due` hands it out
        later unless a newer one replaces it. Seqs of replaced updates are never sent (the rule needs
        them to grow, not to be consecutive)."""
        seq = self.state.seqs.get(job_id, 0) + 1
        self.state.seqs[job_id] = seq
        update = JobUpdate(schema_version=1, job_id=job_id, seq=seq, status=status, step=step, progress=progress,
                           reason=reason[:1024] if reason else None, ts=utc_now(), **extra)  # type: ignore[arg-type]  # fmt: skip
        if status in TERMINAL_JOB_STATUSES:
            self._finish(job_id, status, update.reason, seq)
        elif status == "IN_PROGRESS" and (last := self._last_sent.get(job_id)) is not None:
            if now - last < self.progress_interval_s:
                self.state.unacked[job_id] = update
                self._resend[job_id] = _Resend(at=last + self.progress_interval_s, delay=0.0, held=True)
                return None
        self._track(update, now)
        return update

    def resend_finished(self, job_id: str, now: float) -> JobUpdate | None:
        """A finished job's outcome again, with a new seq: the control plane listing it as pending (a
        jobs/get reply) means it never got it. None when the job is not finished."""
        done = self.state.finished.get(job_id)
        if done is None:
            return None
        done.seq += 1
        update = JobUpdate(schema_version=1, job_id=job_id, seq=done.seq, status=done.status,
                           reason=done.reason[:1024] if done.reason else None, ts=utc_now())  # fmt: skip
        self._track(update, now)
        return update

    def _finish(self, job_id: str, status: JobStatus, reason: str | None, seq: int) -> None:
        self.state.seqs.pop(job_id, None)
        if self.state.current_job == job_id:
            self.state.current_job = None
        finished = self.state.finished
        finished.pop(job_id, None)
        finished[job_id] = FinishedJob(status=status, reason=reason, seq=seq)
        while len(finished) > FINISHED_JOBS_KEPT:
            finished.pop(next(iter(finished)))

    def _track(self, update: JobUpdate, now: float) -> None:
        # a newer update of a job answers for the older ones: the control plane's seq rule applies the
        # newest and the accepted answer carries the seq it stores
        self.state.unacked[update.job_id] = update
        wait = self.clock.timeout
        self._resend[update.job_id] = _Resend(at=now + self._jittered(wait), delay=wait, sent=now)
        self._sent_at.setdefault((update.job_id, update.seq), now)
        if update.status in TERMINAL_JOB_STATUSES:
            self._last_sent.pop(update.job_id, None)
        else:
            self._last_sent[update.job_id] = now

    def _measure(self, job_id: str, seq: int, now: float | None) -> None:
        """An answer to (job, seq): its time since that update was sent (only updates sent once are timed)."""
        sent = self._sent_at.pop((job_id, seq), None)
        if now is not None and sent is not None:
            self.clock.observe(now - sent)
        for key in [k for k in self._sent_at if k[0] == job_id and k[1] < seq]:
            del self._sent_at[key]  # answered by this one too

    def on_accepted(self, answer: JobUpdateAccepted, now: float | None = None) -> bool:
        """The control plane stored the job at `answer.seq`: the waiting update is answered when its seq is
        not newer, or when the stored status is final (nothing the device sends changes it any more).
        With `now`, the answer's time feeds the re-send clock."""
        self._measure(answer.job_id, answer.seq, now)
        waiting = self.state.unacked.get(answer.job_id)
        if waiting is None:
            return False
        if waiting.seq <= answer.seq or answer.status in TERMINAL_JOB_STATUSES:
            self._forget(answer.job_id)
            return True
        return False

    def on_rejected(self, answer: JobUpdateRejected) -> bool:
        """The update will never be applied: stop sending it (the reason is the caller's to log)."""
        waiting = self.state.unacked.get(answer.job_id)
        if waiting is None or (answer.seq is not None and answer.seq < waiting.seq):
            return False
        self._forget(answer.job_id)
        return True

    def _forget(self, job_id: str) -> None:
        self.state.unacked.pop(job_id, None)
        self._resend.pop(job_id, None)
        for key in [k for k in self._sent_at if k[0] == job_id]:
            del self._sent_at[key]

    def waiting(self) -> bool:
        """Whether anything may come due: an unanswered update, or a pending ask for the jobs."""
        return bool(self.state.unacked) or self._reask is not None

    def due(self, now: float) -> list[JobUpdate]:
        """The unanswered updates whose wait is over, oldest job first; each waits twice as long next time.
        Held progress updates whose interval is over go out here the first time.
        A first wait that answers have since shown too short (the clock's timeout grew) is stretched to it
        instead of ending in a re-send."""
        out: list[JobUpdate] = []
        timeout = self.clock.timeout
        for job_id, update in self.state.unacked.items():
            timer = self._resend.get(job_id)
            if timer is None:  # restored from disk: never sent by this process
                timer = self._resend[job_id] = _Resend(at=now, delay=RESEND_FIRST_S / 2, sent=now, resent=True)
            if timer.at > now:
                continue
            if timer.held:  # a progress update whose interval is over: its first send
                self._track(update, now)
                out.append(update)
                continue
            if not timer.resent and now - timer.sent < timeout:
                timer.delay = timeout
                timer.at = timer.sent + self._jittered(timeout)
                continue
            timer.delay = min(RESEND_MAX_S, max(timer.delay, timeout) * 2)
            timer.at = now + self._jittered(timer.delay)
            timer.sent, timer.resent = now, True
            self._sent_at.pop((job_id, update.seq), None)  # sent twice: its answer times neither send
            out.append(update)
        return out

    def unanswered(self, now: float) -> list[JobUpdate]:
        """Every unanswered update, to send right after a (re)connect; their backoff starts again."""
        wait = self.clock.timeout
        for job_id, update in self.state.unacked.items():
            self._resend[job_id] = _Resend(at=now + self._jittered(wait), delay=wait, sent=now, resent=True)
            self._sent_at.pop((job_id, update.seq), None)
        return list(self.state.unacked.values())

    def _jittered(self, delay: float) -> float:
        return delay * (1 + self._rng.uniform(-RESEND_JITTER, RESEND_JITTER))

    def refused_unsigned(self, now: float) -> None:
        """A job came without a valid envelope (dropped unqueued): ask again soon (`reask_due`)."""
        if self._reask is None:
            self._reask = _Resend(at=max(now, self._last_reask + REASK_MIN_S), delay=REASK_MIN_S)

    def jobs_reply_signed(self) -> None:
        """A jobs/get reply came with every job signed (or none): the control plane has our state."""
        self._reask = None

    def reask_due(self, now: float) -> bool:
        """True when the device should publish its state and a jobs/get again (until `jobs_reply_signed`)."""
        timer = self._reask
        if timer is None or timer.at > now:
            return False
        self._last_reask = now
        timer.at = now + self._jittered(timer.delay)
        timer.delay = min(RESEND_MAX_S, timer.delay * 2)
        return True

    # --- reported state ---------------------------------------------------------------------------

    def finished_job(self, job_id: str) -> FinishedJob | None:
        return self.state.finished.get(job_id)

    def recent_jobs(self) -> list[RecentJob]:
        """The newest finished jobs (for `P/state`), oldest first."""
        items = list(self.state.finished.items())[-MAX_RECENT_JOBS:]
        return [
            RecentJob(job_id=job_id, status=done.status, seq=done.seq, reason=(done.reason or "")[:256] or None)  # type: ignore[arg-type]
            for job_id, done in items
        ]
