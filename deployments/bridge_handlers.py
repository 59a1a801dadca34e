"""What the MQTT bridge does with job messages from devices (parsing is the bridge's, rules are services')."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol.messages import JobsGet, JobUpdate

from .artifact_mirrors import artifact_transfers_record_many
from .services import jobs_answer_pending_many, jobs_apply_device_updates

if TYPE_CHECKING:
    from mqttbridge.runtime import Bridge

# outcomes that are refusals (counted and logged); the other misses are normal on QoS 1 (duplicates,
# late updates) and only counted as ignored
_REFUSED = {"unknown_job", "foreign_job"}


def job_updates_handler(bridge: Bridge) -> Callable[[list[tuple[str, JobUpdate]]], list[tuple[str, str] | None]]:
    def job_updates(items: list[tuple[str, JobUpdate]]) -> list[tuple[str, str] | None]:
        outcomes = jobs_apply_device_updates(updates=items)
        verdicts: list[tuple[str, str] | None] = []
        for (_, update), outcome in zip(items, outcomes, strict=True):
            if outcome.why in _REFUSED:
                verdicts.append((outcome.why, outcome.detail or update.job_id))
                continue
            if not outcome.applied:
                bridge.count_applied(f"job_update_ignored:{outcome.why}")
            verdicts.append(None)
        # also on a redelivered SUCCEEDED (already terminal): the record is idempotent per job
        artifact_transfers_record_many(items=[item for item, v in zip(items, verdicts, strict=True) if v is None])
        return verdicts

    return job_updates


def jobs_get_handler() -> Callable[[list[tuple[str, JobsGet]]], None]:
    def jobs_get(requests: list[tuple[str, JobsGet]]) -> None:
        jobs_answer_pending_many(requests=[(uid, request.request_id) for uid, request in requests])

    return jobs_get
