"""The device's job ledger (agent/ledger.py), shared by the agent and the simulator: no I/O, time passed in."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime

import pytest

from agent.ledger import (
    PROGRESS_INTERVAL_S,
    REASK_MIN_S,
    RESEND_FIRST_S,
    RESEND_MAX_S,
    JobLedger,
    LedgerState,
    ResendClock,
)
from agent.policy import JobRefused
from protocol.messages import MAX_RECENT_JOBS, JobDocument, JobUpdateAccepted, JobUpdateRejected


def job(timeout: int = 600) -> JobDocument:
    return JobDocument(
        job_id=str(uuid.uuid4()), kind="install", model="m", model_id=1, version=2, version_id=2, format="onnx",
        artifact_url="http://cp.test/a", sha256="0" * 64, size=10, manifest="{}", signature="c2ln",
        key_id="0" * 16, timeout_seconds=timeout, created_at=datetime.now(UTC),
    )  # fmt: skip


def accepted(job_id: str, status: str, seq: int) -> JobUpdateAccepted:
    return JobUpdateAccepted(schema_version=1, job_id=job_id, status=status, seq=seq)  # type: ignore[arg-type]


@pytest.fixture
def ledger() -> JobLedger:
    return JobLedger(LedgerState(), rng=random.Random(1))


def test_jobs_run_one_at_a_time_in_arrival_order_and_a_job_is_queued_once(ledger):
    first, second = job(), job()
    assert ledger.admit(first) == "queued"
    assert ledger.admit(second) == "queued"
    assert ledger.admit(first) == "duplicate"
    assert ledger.take_next() == first
    assert ledger.admit(first) == "duplicate"  # running
    assert ledger.state.current_job == first.job_id
    ledger.update(first.job_id, "SUCCEEDED", now=0)
    ledger.done_running()
    assert ledger.admit(first) == "finished"
    assert ledger.take_next() == second


def test_cancel_drops_a_queued_job_stops_a_running_one_but_not_once_it_activates(ledger):
    queued, running = job(), job()
    ledger.admit(running)
    ledger.admit(queued)
    assert ledger.take_next() == running
    assert ledger.cancel(queued.job_id) == "dequeued"
    assert ledger.cancel(running.job_id) == "stopping"
    with pytest.raises(JobRefused) as refused:
        ledger.checkpoint(running, deadline=100, now=1)
    assert refused.value.status == "CANCELED"
    ledger.done_running()
    assert ledger.take_next() is None  # the canceled queued job never runs

    activating = job()
    ledger.admit(activating)
    ledger.take_next()
    ledger.start_activation()
    assert ledger.cancel(activating.job_id) == "ignored"
    ledger.checkpoint(activating, deadline=100, now=1)  # runs to its end


def test_a_job_past_its_deadline_times_out_at_the_next_checkpoint(ledger):
    running = job(timeout=5)
    ledger.admit(running)
    ledger.take_next()
    with pytest.raises(JobRefused) as refused:
        ledger.checkpoint(running, deadline=5, now=5.1)
    assert refused.value.status == "TIMED_OUT"


def test_seq_grows_per_job_and_the_finished_outcome_is_remembered_with_its_seq(ledger):
    a = job()
    seqs = [ledger.update(a.job_id, "IN_PROGRESS", step="downloading", now=2.0 * i).seq for i in range(3)]
    final = ledger.update(a.job_id, "FAILED", reason="disk full", now=4.5)
    assert [*seqs, final.seq] == [1, 2, 3, 4]
    assert ledger.finished_job(a.job_id).seq == 4
    again = ledger.resend_finished(a.job_id, now=0)
    assert (again.status, again.seq, again.reason) == ("FAILED", 5, "disk full")
    assert [(r.job_id, r.status, r.seq) for r in ledger.recent_jobs()] == [(a.job_id, "FAILED", 5)]


def test_the_latest_update_stays_unanswered_until_an_answer_covers_it(ledger):
    a = job()
    ledger.update(a.job_id, "IN_PROGRESS", step="downloading", now=0)
    ledger.update(a.job_id, "SUCCEEDED", now=0)
    assert [(u.seq, u.status) for u in ledger.state.unacked.values()] == [(2, "SUCCEEDED")]
    assert not ledger.on_accepted(accepted(a.job_id, "IN_PROGRESS", 1))  # an older update's answer
    assert a.job_id in ledger.state.unacked
    assert ledger.on_accepted(accepted(a.job_id, "SUCCEEDED", 2))
    assert ledger.state.unacked == {}


def test_a_final_status_stored_by_the_control_plane_answers_every_update_of_the_job(ledger):
    a = job()
    ledger.update(a.job_id, "SUCCEEDED", now=0)
    # the control plane timed it out (seq 1 was the last it saw): nothing the device sends changes that
    assert ledger.on_accepted(accepted(a.job_id, "TIMED_OUT", 0))
    assert ledger.state.unacked == {}


def test_a_rejected_update_is_not_sent_again(ledger):
    a = job()
    ledger.update(a.job_id, "SUCCEEDED", now=0)
    assert not ledger.on_rejected(
        JobUpdateRejected(schema_version=1, job_id=a.job_id, seq=0, reason_code="unknown_job")
    )
    assert ledger.on_rejected(JobUpdateRejected(schema_version=1, job_id=a.job_id, seq=1, reason_code="unknown_job"))
    assert ledger.due(now=10_000) == []


def test_unanswered_updates_are_sent_again_with_exponential_backoff(ledger):
    a = job()
    sent = ledger.update(a.job_id, "SUCCEEDED", now=0)
    times = []
    now = 0.0
    while now < 400:
        now += 0.5
        if ledger.due(now):
            times.append(now)
    gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
    assert gaps[0] == pytest.approx(RESEND_FIRST_S, rel=0.25)
    assert all(later >= earlier * 1.3 or later >= RESEND_MAX_S * 0.75 for earlier, later in itertools.pairwise(gaps))
    assert max(gaps) <= RESEND_MAX_S * 1.25
    assert ledger.due(now + RESEND_MAX_S * 2) == [sent]  # the same update, same seq: a duplicate is harmless


def first_resend_after(ledger: JobLedger, job_id: str, sent_at: float) -> float:
    now = sent_at
    while not ledger.due(now):
        now += 0.25
        assert now < sent_at + 10 * RESEND_MAX_S, "never sent again"
    return now - sent_at


def test_the_resend_clock_follows_answer_times_within_its_bounds():
    clock = ResendClock()
    assert clock.timeout == RESEND_FIRST_S  # nothing measured yet
    for _ in range(50):
        clock.observe(0.05)
    assert clock.timeout == RESEND_FIRST_S  # fast answers: the floor
    for _ in range(50):
        clock.observe(12.0)
    assert 12.0 < clock.timeout < 15.0  # steady 12 s answers: a little above them
    clock.observe(500.0)
    assert clock.timeout == RESEND_MAX_S  # never longer than the ceiling


def test_slow_answers_stretch_the_first_wait_so_a_slow_control_plane_gets_no_duplicates(ledger):
    """A wave's worth of updates answered in about 12 s each: the next update is not sent again after
    5 s, while one that is never answered still is, after the stretched wait."""
    now = 0.0
    for _ in range(8):
        a = job()
        update = ledger.update(a.job_id, "IN_PROGRESS", now=now, step="downloading")
        now += 12.0
        assert ledger.on_accepted(accepted(a.job_id, "IN_PROGRESS", update.seq), now)
    assert ledger.clock.timeout > 12.0
    lost = job()
    ledger.update(lost.job_id, "SUCCEEDED", now=now)
    waited = first_resend_after(ledger, lost.job_id, now)
    assert waited >= 12.0 * 0.8  # the clock's timeout, less the jitter
    assert waited <= RESEND_MAX_S * 1.25


def test_a_wait_set_before_answers_slowed_is_stretched_rather_than_ending_in_a_resend(ledger):
    early = job()
    ledger.update(early.job_id, "SUCCEEDED", now=0.0)  # waits RESEND_FIRST_S, the clock knows nothing yet
    other = job()
    update = ledger.update(other.job_id, "IN_PROGRESS", now=0.0, step="downloading")
    ledger.on_accepted(accepted(other.job_id, "IN_PROGRESS", update.seq), 4.0)
    for _ in range(20):  # answers now take 20 s
        extra = job()
        sent = ledger.update(extra.job_id, "IN_PROGRESS", now=0.0, step="downloading")
        ledger.on_accepted(accepted(extra.job_id, "IN_PROGRESS", sent.seq), 20.0)
    assert ledger.due(RESEND_FIRST_S * 1.3) == []  # the first wait is over, but answers take longer now
    assert first_resend_after(ledger, early.job_id, 0.0) >= 20.0


def test_an_answer_to_an_update_sent_twice_does_not_time_the_clock(ledger):
    a = job()
    assert not ledger.waiting()
    update = ledger.update(a.job_id, "SUCCEEDED", now=0.0)
    assert ledger.waiting()
    assert ledger.due(RESEND_FIRST_S * 1.5) == [update]  # sent again
    assert ledger.on_accepted(accepted(a.job_id, "SUCCEEDED", update.seq), 59.0)
    assert ledger.clock.smoothed is None  # which send did it answer? not measured (Karn's rule)
    assert not ledger.waiting()


def test_after_a_restart_every_unanswered_update_is_sent_again_at_once():
    state = LedgerState()
    before = JobLedger(state)
    a, b = job(), job()
    before.update(a.job_id, "SUCCEEDED", now=0)
    before.update(b.job_id, "IN_PROGRESS", step="verifying", now=0)
    before.take_next()  # nothing queued: queued jobs are not persisted, they come back with jobs/get
    restored = JobLedger(LedgerState.model_validate_json(state.model_dump_json()))
    assert sorted((u.job_id, u.seq) for u in restored.unanswered(now=0)) == sorted([(a.job_id, 1), (b.job_id, 1)])
    assert restored.due(now=1) == []  # just sent: the backoff starts again


def test_old_state_files_without_unanswered_updates_still_load():
    state = LedgerState.model_validate({"seqs": {}, "finished": {}, "current_job": None, "slots": {}})
    assert state.unacked == {}


def test_the_state_lists_only_the_newest_finished_jobs(ledger):
    ids = [job().job_id for _ in range(MAX_RECENT_JOBS + 5)]
    for job_id in ids:
        ledger.update(job_id, "SUCCEEDED", now=0)
    assert [r.job_id for r in ledger.recent_jobs()] == ids[-MAX_RECENT_JOBS:]


def test_a_job_that_came_unsigned_makes_the_device_ask_again_until_a_reply_comes_signed(ledger):
    assert not ledger.reask_due(now=0)
    ledger.refused_unsigned(now=0)
    assert ledger.reask_due(now=0)
    assert not ledger.reask_due(now=0.1)  # not at once again
    ledger.refused_unsigned(now=1)  # the answer came unsigned again (our state was lost again)
    assert not ledger.reask_due(now=1 + REASK_MIN_S / 2)
    asks = [t for t in range(1, 200) if ledger.reask_due(now=t)]  # no reply at all (the jobs/get was lost)
    assert asks[0] >= REASK_MIN_S * 0.8 and len(asks) >= 4  # asked again, with backoff
    assert all(b - a >= REASK_MIN_S * 0.8 for a, b in itertools.pairwise(asks))
    ledger.jobs_reply_signed()
    assert not any(ledger.reask_due(now=t) for t in range(200, 400))


def test_rapid_progress_updates_are_held_and_replaced_and_only_the_newest_goes_out(ledger):
    """A small model goes from downloading to SUCCEEDED within a second: the first update and the final
    one are sent, the steps between them are not; a slow job still reports progress every interval."""
    a = job()
    first = ledger.update(a.job_id, "IN_PROGRESS", step="downloading", progress=0.0, now=0.0)
    assert first is not None and first.seq == 1
    assert ledger.update(a.job_id, "IN_PROGRESS", step="downloading", progress=1.0, now=0.1) is None
    assert ledger.update(a.job_id, "IN_PROGRESS", step="verifying", now=0.2) is None
    assert ledger.due(0.5) == []  # its interval is not over
    assert ledger.waiting()
    held = ledger.update(a.job_id, "IN_PROGRESS", step="activating", now=0.3)
    assert held is None and ledger.state.unacked[a.job_id].step == "activating"
    assert [(u.seq, u.step) for u in ledger.due(PROGRESS_INTERVAL_S)] == [(4, "activating")]  # the newest only
    assert ledger.due(PROGRESS_INTERVAL_S + 0.5) == []  # sent: now it waits for its answer
    # the next one within the interval of that send is held again; the final one goes at once
    assert (
        ledger.update(a.job_id, "IN_PROGRESS", step="activating", progress=0.5, now=PROGRESS_INTERVAL_S + 0.2) is None
    )
    final = ledger.update(a.job_id, "SUCCEEDED", now=PROGRESS_INTERVAL_S + 0.3)
    assert final is not None and final.seq == 6
    assert list(ledger.state.unacked.values()) == [final]
    assert ledger.due(PROGRESS_INTERVAL_S * 3) == []  # the held one was replaced, not sent later


def test_without_a_progress_interval_every_update_is_sent_at_once():
    ledger = JobLedger(LedgerState(), rng=random.Random(1), progress_interval_s=0.0)
    a = job()
    sent = [ledger.update(a.job_id, "IN_PROGRESS", step=step, now=0.0) for step in ("downloading", "verifying")]
    assert [u.seq for u in sent if u is not None] == [1, 2]
