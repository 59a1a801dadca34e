"""What the MQTT bridge does with job messages from devices (parsing is the bridge's, rules are services')."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.messages import parse_job_update, parse_jobs_get

from .artifact_mirrors import artifact_transfer_record
from .services import ForeignJob, job_apply_device_update, jobs_answer_pending

if TYPE_CHECKING:
    from mqttbridge.runtime import Bridge, JobHandler


def job_handlers(bridge: Bridge) -> dict[str, JobHandler]:
    from mqttbridge.runtime import Rejected

    def jobs_get(uid: str, payload: bytes, job_id: str | None) -> None:
        jobs_answer_pending(uid=uid, request_id=parse_jobs_get(payload).request_id)

    def job_update(uid: str, payload: bytes, job_id: str | None) -> None:
        update = parse_job_update(payload)
        if update.job_id != job_id:
            raise Rejected("topic_mismatch", f"payload job {update.job_id} on topic of job {job_id}")
        try:
            outcome = job_apply_device_update(uid=uid, update=update)
        except ForeignJob as exc:
            raise Rejected("foreign_job", str(exc)) from None
        if outcome.why == "unknown_job":
            raise Rejected("unknown_job", update.job_id)
        # also on a redelivered SUCCEEDED (already terminal): the record is idempotent per job
        artifact_transfer_record(uid=uid, update=update)
        if not outcome.applied:
            # duplicates and late updates are normal on QoS 1: ignored, not rejected
            bridge.stats.applied[f"job_update_ignored:{outcome.why}"] += 1

    return {"jobs_get": jobs_get, "job_update": job_update}
