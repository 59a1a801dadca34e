"""Topics of device protocol v1 below `fogdeck/v1/devices/{uid}` and their parser for the bridge.

`protocol.topics` owns the prefix and the uid rule (the broker's ACL boundary); this module names
what lives under it. See docs/protocol.md for direction, QoS and retain of each topic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from protocol.messages import (
    JobsGet,
    JobUpdate,
    ProtocolError,
    StateMessage,
    StatusMessage,
    TelemetryMessage,
    parse_job_update,
    parse_jobs_get,
    parse_state,
    parse_status,
    parse_telemetry,
)
from protocol.topics import DEVICES_ROOT, device_prefix, is_valid_device_uid

TopicKind = Literal["status", "state", "jobs_get", "job_update", "telemetry"]
"""Kinds a device publishes (and the bridge receives)."""

QOS = 1  # every protocol message is QoS 1

_JOB_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# The bridge subscribes to exactly these, so its own publishes (notify, get/accepted) never come back.
BRIDGE_SUBSCRIPTIONS: tuple[str, ...] = (
    f"{DEVICES_ROOT}/+/status",
    f"{DEVICES_ROOT}/+/state",
    f"{DEVICES_ROOT}/+/jobs/get",
    f"{DEVICES_ROOT}/+/jobs/+/update",
    f"{DEVICES_ROOT}/+/telemetry",
)


def status_topic(uid: str) -> str:
    return f"{device_prefix(uid)}/status"


def state_topic(uid: str) -> str:
    return f"{device_prefix(uid)}/state"


def jobs_notify_topic(uid: str) -> str:
    return f"{device_prefix(uid)}/jobs/notify"


def jobs_get_topic(uid: str) -> str:
    return f"{device_prefix(uid)}/jobs/get"


def jobs_get_accepted_topic(uid: str) -> str:
    return f"{device_prefix(uid)}/jobs/get/accepted"


def job_update_topic(uid: str, job_id: str) -> str:
    if not _JOB_ID_RE.match(job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    return f"{device_prefix(uid)}/jobs/{job_id}/update"


def job_update_accepted_topic(uid: str, job_id: str) -> str:
    return f"{job_update_topic(uid, job_id)}/accepted"


def job_update_rejected_topic(uid: str, job_id: str) -> str:
    return f"{job_update_topic(uid, job_id)}/rejected"


def job_update_answers_filter(uid: str) -> str:
    """What a device subscribes to for the answers to its job updates (both kinds, every job)."""
    return f"{device_prefix(uid)}/jobs/+/update/+"


def job_answer_of(uid: str, topic: str) -> tuple[str, Literal["accepted", "rejected"]] | None:
    """(job id, kind) when `topic` is an answer to one of `uid`'s job updates, else None."""
    prefix = f"{device_prefix(uid)}/jobs/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    if len(rest) != 3 or rest[1] != "update" or rest[2] not in ("accepted", "rejected"):
        return None
    if not _JOB_ID_RE.match(rest[0]):
        return None
    return rest[0], rest[2]  # type: ignore[return-value]


def telemetry_topic(uid: str) -> str:
    return f"{device_prefix(uid)}/telemetry"


_ROOT_PARTS = DEVICES_ROOT.split("/")


def parse_topic(topic: str) -> tuple[str, TopicKind, str | None]:
    """`(uid, kind, job_id or None)` of a device → control plane topic; else `ProtocolError("unknown_topic")`."""
    if not isinstance(topic, str):
        raise ProtocolError("unknown_topic", "topic is not a string")
    parts = topic.split("/")
    root = _ROOT_PARTS
    if len(parts) < len(root) + 2 or parts[: len(root)] != root:
        raise ProtocolError("unknown_topic", topic[:200])
    uid, rest = parts[len(root)], parts[len(root) + 1 :]
    if not is_valid_device_uid(uid):
        raise ProtocolError("unknown_topic", f"invalid device uid in {topic[:200]!r}")
    if rest == ["status"]:
        return uid, "status", None
    if rest == ["state"]:
        return uid, "state", None
    if rest == ["telemetry"]:
        return uid, "telemetry", None
    if rest == ["jobs", "get"]:
        return uid, "jobs_get", None
    if len(rest) == 3 and rest[0] == "jobs" and rest[2] == "update" and _JOB_ID_RE.match(rest[1]):
        return uid, "job_update", rest[1]
    raise ProtocolError("unknown_topic", topic[:200])


DeviceMessage = StatusMessage | StateMessage | JobsGet | JobUpdate | TelemetryMessage


@dataclass(frozen=True, slots=True)
class Incoming:
    """One parsed device → control plane message."""

    uid: str
    kind: TopicKind
    job_id: str | None
    message: DeviceMessage


_PARSERS: dict[TopicKind, Callable[[bytes], DeviceMessage]] = {
    "status": parse_status,
    "state": parse_state,
    "jobs_get": parse_jobs_get,
    "job_update": parse_job_update,
    "telemetry": parse_telemetry,
}


def parse_device_message(topic: str, payload: bytes) -> Incoming:
    """Topic and payload together; a job update must name the job of its topic ("topic_mismatch")."""
    uid, kind, job_id = parse_topic(topic)
    message = _PARSERS[kind](payload)
    if isinstance(message, JobUpdate) and message.job_id != job_id:
        raise ProtocolError("topic_mismatch", f"update for job {message.job_id} on the topic of job {job_id}")
    return Incoming(uid=uid, kind=kind, job_id=job_id, message=message)
