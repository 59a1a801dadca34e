"""What the MQTT bridge does with job messages from devices (parsing is the bridge's, rules are services').

`manage.py mqtt_bridge` hands these to the `Bridge`; this module does not import the bridge.
"""

from __future__ import annotations

from typing import Protocol

from protocol.aws_jobs import AwsRequest
from protocol.device_topics import job_update_accepted_topic, job_update_rejected_topic
from protocol.messages import JobsGet, JobUpdate, JobUpdateAccepted, JobUpdateRejected, StateMessage, encode

from .artifact_mirrors import artifact_transfers_record_many
from .aws_jobs import aws_jobs_handle_requests
from .reconciliation import jobs_reconcile_reported
from .services.device_updates import UpdateOutcome, jobs_apply_device_updates
from .services.pending_jobs import jobs_answer_pending_many

# outcomes that are refusals (counted and logged); the other misses are normal on QoS 1 (duplicates,
# late updates) and only counted as ignored
_REFUSED = {"unknown_job", "foreign_job"}


class Answering(Protocol):
    """What the handlers need of the bridge (mqttbridge.runtime.Bridge): tallies, and answers published to
    devices once the batch has committed."""

    def count_applied(self, kind: str, count: int = 1) -> None: ...

    def answer_after_commit(self, topic: str, payload: bytes) -> None: ...


def accepted_answer(uid: str, job_id: str, outcome: UpdateOutcome) -> tuple[str, bytes]:
    """`P/jobs/{id}/update/accepted` with the job as stored. A job no update was ever applied to (stored
    seq -1, e.g. timed out while QUEUED) is answered with seq 0: its status, terminal there, answers them all."""
    seq = max(outcome.seq, 0)
    answer = JobUpdateAccepted(schema_version=1, job_id=job_id, status=outcome.status, seq=seq)  # type: ignore[arg-type]
    return job_update_accepted_topic(uid, job_id), encode(answer)


def rejected_answer(uid: str, job_id: str, seq: int | None, reason: str) -> tuple[str, bytes]:
    """`P/jobs/{id}/update/rejected` with the reason code."""
    answer = JobUpdateRejected(schema_version=1, job_id=job_id, seq=seq, reason_code=reason)  # type: ignore[arg-type]
    return job_update_rejected_topic(uid, job_id), encode(answer)


def job_updates(items: list[tuple[str, JobUpdate]], bridge: Answering) -> list[tuple[str, str] | None]:
    """One verdict per (uid, update): a refusal (reason, detail) or None. Every update gets an answer
    after commit: rejected with its reason, or accepted with the job as stored (one per job: it covers
    every seq up to its own)."""
    outcomes = jobs_apply_device_updates(updates=items)
    verdicts: list[tuple[str, str] | None] = []
    stored: dict[tuple[str, str], UpdateOutcome] = {}
    for (uid, update), outcome in zip(items, outcomes, strict=True):
        if outcome.why in _REFUSED:
            verdicts.append((outcome.why, outcome.detail or update.job_id))
            bridge.answer_after_commit(*rejected_answer(uid, update.job_id, update.seq, outcome.why))
            continue
        if not outcome.applied:
            bridge.count_applied(f"job_update_ignored:{outcome.why}")
        stored[(uid, update.job_id)] = outcome
        verdicts.append(None)
    for (uid, job_id), outcome in stored.items():
        bridge.answer_after_commit(*accepted_answer(uid, job_id, outcome))
    # also on a redelivered SUCCEEDED (already terminal): the record is idempotent per job
    artifact_transfers_record_many(items=[item for item, v in zip(items, verdicts, strict=True) if v is None])
    return verdicts


def state_results(reports: list[tuple[str, StateMessage]], bridge: Answering) -> None:
    """Apply the finished jobs a device's state lists that we still have active (reconciliation)."""
    listed = [(uid, state.recent_jobs) for uid, state in reports if state.recent_jobs]
    applied = jobs_reconcile_reported(reports=listed)
    for uid, job_id, outcome in applied:
        bridge.count_applied("job_result_from_state")
        bridge.answer_after_commit(*accepted_answer(uid, job_id, outcome))


def jobs_get(requests: list[tuple[str, JobsGet]]) -> None:
    jobs_answer_pending_many(requests=[(uid, request.request_id) for uid, request in requests])


def aws_jobs_requests(requests: list[AwsRequest]) -> list[tuple[str, str] | None]:
    """AWS IoT Jobs requests (deployments/aws_jobs.py), answered in order through the outbox: one verdict
    each, None when answered on `/accepted`; one answered on `/rejected` is counted as `aws_<ErrorCode>`."""
    return aws_jobs_handle_requests(requests=requests)


# what `manage.py mqtt_bridge` (and a test's bridge) passes to `Bridge(**HANDLERS, …)`
HANDLERS = {
    "job_updates": job_updates,
    "state_results": state_results,
    "jobs_get": jobs_get,
    "aws_jobs": aws_jobs_requests,
}
