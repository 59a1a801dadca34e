"""The AWS IoT Jobs device MQTT API, as Fogdeck's bridge speaks it (docs/protocol.md, "AWS IoT Jobs dialect").

Topics, request payloads, response payloads, execution statuses and error codes follow AWS's "Jobs device
MQTT API operations" and the AWS IoT Device SDK v2's `awsiot.iotjobs` models (field names, epoch-second
timestamps, `RejectedErrorCode` values). The thing name is the device uid, so the ACL boundary of a device
is `$aws/things/{uid}/jobs/` beside its Fogdeck prefix. Plain Python: the bridge, the agent and the
simulator share it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from protocol.topics import is_valid_device_uid

DIALECT_FOGDECK = "fogdeck"
DIALECT_AWS = "aws-iot-jobs"

THINGS_ROOT = "$aws/things"
MAX_PAYLOAD_BYTES = 256 * 1024

# execution statuses (the SDK's iotjobs.JobStatus); Fogdeck's job statuses have the same names but REMOVED.
# Final, so each one's type is its Literal and it fits where a Fogdeck JobStatus is expected.
QUEUED: Final = "QUEUED"
IN_PROGRESS: Final = "IN_PROGRESS"
SUCCEEDED: Final = "SUCCEEDED"
FAILED: Final = "FAILED"
TIMED_OUT: Final = "TIMED_OUT"
REJECTED: Final = "REJECTED"
REMOVED: Final = "REMOVED"
CANCELED: Final = "CANCELED"
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED, CANCELED})
DEVICE_SETTABLE: Final = (IN_PROGRESS, SUCCEEDED, FAILED, REJECTED)
"""What UpdateJobExecution accepts from a device; the others are the service's to set. A tuple: mypy narrows
a status's Literal type by `in` a tuple, not a frozenset."""

ErrorCode = Literal[
    "InvalidTopic",
    "InvalidJson",
    "InvalidRequest",
    "InvalidStateTransition",
    "ResourceNotFound",
    "VersionMismatch",
    "InternalError",
    "RequestThrottled",
    "TerminalStateReached",
]

Operation = Literal["get_pending", "start_next", "describe", "update"]
NEXT_JOB_ID = "$next"  # DescribeJobExecution's alias for the next pending execution

_JOB_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# The bridge subscribes to exactly the request topics, so its own replies and notifications never come back.
BRIDGE_SUBSCRIPTIONS: tuple[str, ...] = (
    f"{THINGS_ROOT}/+/jobs/get",
    f"{THINGS_ROOT}/+/jobs/start-next",
    f"{THINGS_ROOT}/+/jobs/+/get",
    f"{THINGS_ROOT}/+/jobs/+/update",
)


def jobs_prefix(uid: str) -> str:
    """`$aws/things/{uid}/jobs`: every AWS-dialect topic of the device is below it (its second ACL boundary)."""
    if not is_valid_device_uid(uid):
        raise ValueError(f"invalid device uid {uid!r}")
    return f"{THINGS_ROOT}/{uid}/jobs"


def notify_topic(uid: str) -> str:
    return f"{jobs_prefix(uid)}/notify"


def notify_next_topic(uid: str) -> str:
    return f"{jobs_prefix(uid)}/notify-next"


def request_topic(uid: str, operation: Operation, job_id: str | None = None) -> str:
    prefix = jobs_prefix(uid)
    if operation == "get_pending":
        return f"{prefix}/get"
    if operation == "start_next":
        return f"{prefix}/start-next"
    if job_id is None:
        raise ValueError(f"{operation} needs a job id")
    return f"{prefix}/{job_id}/{'get' if operation == 'describe' else 'update'}"


def response_topic(uid: str, operation: Operation, job_id: str | None, *, accepted: bool) -> str:
    return f"{request_topic(uid, operation, job_id)}/{'accepted' if accepted else 'rejected'}"


def is_aws_topic(topic: str) -> bool:
    return topic.startswith(THINGS_ROOT + "/")


# --- requests ----------------------------------------------------------------------------------------

ClientToken = Annotated[str, StringConstraints(min_length=1, max_length=64)]
StatusDetailKey = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9:_-]{1,128}$")]
StatusDetailValue = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
StatusDetails = Annotated[dict[StatusDetailKey, StatusDetailValue], Field(max_length=10)]


def _not_zero(minutes: int) -> int:
    if minutes == 0:
        raise ValueError("0 is not a step timeout (1 to 10080 minutes, or -1)")
    return minutes


StepTimeout = Annotated[int, Field(ge=-1, le=10080), AfterValidator(_not_zero)]
"""Minutes, 1 to 10080; -1 clears the step timer (the job's own timeout applies again)."""


class _Request(BaseModel):
    # unknown fields are ignored, as AWS does (clients add fields across SDK versions); types are strict
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)

    clientToken: ClientToken | None = None


class GetPendingRequest(_Request):
    pass


class StartNextRequest(_Request):
    statusDetails: StatusDetails | None = None
    stepTimeoutInMinutes: StepTimeout | None = None


class DescribeRequest(_Request):
    executionNumber: Annotated[int, Field(ge=1)] | None = None
    includeJobDocument: bool = True


class UpdateRequest(_Request):
    status: Literal["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED"]
    statusDetails: StatusDetails | None = None
    expectedVersion: Annotated[int, Field(ge=0)] | None = None
    executionNumber: Annotated[int, Field(ge=1)] | None = None
    includeJobExecutionState: bool = False
    includeJobDocument: bool = False
    stepTimeoutInMinutes: StepTimeout | None = None


RequestBody = GetPendingRequest | StartNextRequest | DescribeRequest | UpdateRequest
_BODIES: dict[str, type[_Request]] = {
    "get_pending": GetPendingRequest,
    "start_next": StartNextRequest,
    "describe": DescribeRequest,
    "update": UpdateRequest,
}


@dataclass(frozen=True, slots=True)
class AwsRequest:
    """One request from a thing. `error` is set (and `body` None) when it must be answered on `/rejected`."""

    uid: str
    operation: Operation
    job_id: str | None
    client_token: str | None
    body: RequestBody | None
    error: tuple[ErrorCode, str] | None = None


class UnknownAwsTopic(ValueError):
    """Not a jobs request topic of a valid thing: nobody to answer, the message is dropped and counted."""


def parse_request_topic(topic: str) -> tuple[str, Operation, str | None]:
    """`(uid, operation, job_id)`; UnknownAwsTopic when there is no thing to answer."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "$aws" or parts[1] != "things" or parts[3] != "jobs":
        raise UnknownAwsTopic(topic[:200])
    uid, rest = parts[2], parts[4:]
    if not is_valid_device_uid(uid):
        raise UnknownAwsTopic(f"invalid thing name in {topic[:200]!r}")
    if rest == ["get"]:
        return uid, "get_pending", None
    if rest == ["start-next"]:
        return uid, "start_next", None
    if len(rest) == 2 and rest[1] in ("get", "update"):
        return uid, "describe" if rest[1] == "get" else "update", rest[0]
    raise UnknownAwsTopic(topic[:200])


def _client_token_of(payload: bytes) -> str | None:
    """The clientToken of a request that failed validation, when there is a usable one to echo."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    token = data.get("clientToken") if isinstance(data, dict) else None
    return token if isinstance(token, str) and 0 < len(token) <= 64 else None


def parse_request(topic: str, payload: bytes) -> AwsRequest:
    """Topic and payload of a request. Raises UnknownAwsTopic only; every other problem is an AwsRequest
    with `error` (InvalidTopic, InvalidJson, InvalidRequest), to be answered on the `/rejected` topic."""
    uid, operation, job_id = parse_request_topic(topic)
    if job_id is not None and not _JOB_ID_RE.match(job_id) and not (operation == "describe" and job_id == NEXT_JOB_ID):
        return AwsRequest(uid, operation, job_id, None, None, ("InvalidTopic", "invalid job id in the topic"))
    if len(payload) > MAX_PAYLOAD_BYTES:
        return AwsRequest(uid, operation, job_id, None, None, ("InvalidRequest", "payload over 256 KiB"))
    try:
        data = json.loads(payload.decode("utf-8")) if payload.strip() else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        return AwsRequest(uid, operation, job_id, None, None, ("InvalidJson", "payload is not UTF-8 JSON"))
    if not isinstance(data, dict):
        return AwsRequest(uid, operation, job_id, None, None, ("InvalidJson", "payload is not a JSON object"))
    try:
        body = _BODIES[operation].model_validate(data)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in error["loc"]) or "payload" for error in exc.errors()})
        detail = f"invalid {', '.join(fields)}"[:500]
        return AwsRequest(uid, operation, job_id, _client_token_of(payload), None, ("InvalidRequest", detail))
    return AwsRequest(uid, operation, job_id, body.clientToken, body)  # type: ignore[arg-type]


# --- responses ---------------------------------------------------------------------------------------


def epoch_seconds(moment: dt.datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


@dataclass(frozen=True, slots=True)
class Execution:
    """A job execution as the AWS API shows it (built by the control plane from a Fogdeck job)."""

    job_id: str
    thing_name: str
    status: str
    status_details: dict[str, str]
    queued_at: dt.datetime
    started_at: dt.datetime | None
    last_updated_at: dt.datetime
    version_number: int
    execution_number: int = 1
    job_document: dict[str, Any] | None = None

    def data(self, *, include_document: bool = True) -> dict[str, Any]:
        """JobExecutionData: what notify-next, start-next, {jobId}/get and an update's document show."""
        data: dict[str, Any] = {
            "jobId": self.job_id,
            "thingName": self.thing_name,
            "status": self.status,
            "statusDetails": self.status_details,
            "queuedAt": epoch_seconds(self.queued_at),
            "lastUpdatedAt": epoch_seconds(self.last_updated_at),
            "versionNumber": self.version_number,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            data["startedAt"] = epoch_seconds(self.started_at)
        if include_document and self.job_document is not None:
            data["jobDocument"] = self.job_document
        return data

    def summary(self) -> dict[str, Any]:
        """JobExecutionSummary: what notify and jobs/get list."""
        summary: dict[str, Any] = {
            "jobId": self.job_id,
            "queuedAt": epoch_seconds(self.queued_at),
            "lastUpdatedAt": epoch_seconds(self.last_updated_at),
            "versionNumber": self.version_number,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            summary["startedAt"] = epoch_seconds(self.started_at)
        return summary

    def state(self) -> dict[str, Any]:
        """JobExecutionState: an update's accepted reply and the executionState of some errors."""
        return {"status": self.status, "statusDetails": self.status_details, "versionNumber": self.version_number}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode()


def _with_token(message: dict[str, Any], client_token: str | None, now: dt.datetime) -> dict[str, Any]:
    message["timestamp"] = epoch_seconds(now)
    if client_token is not None:
        message["clientToken"] = client_token
    return message


def rejected(
    code: ErrorCode, text: str, *, client_token: str | None, now: dt.datetime, execution: Execution | None = None
) -> dict[str, Any]:
    """The ErrorResponse of every `/rejected` topic (executionState with VersionMismatch and
    InvalidStateTransition)."""
    message: dict[str, Any] = {"code": code, "message": text}
    if execution is not None:
        message["executionState"] = execution.state()
    return _with_token(message, client_token, now)


def pending_reply(
    in_progress: list[Execution], queued: list[Execution], *, client_token: str | None, now: dt.datetime
) -> dict[str, Any]:
    """`jobs/get/accepted`."""
    message = {"inProgressJobs": [e.summary() for e in in_progress], "queuedJobs": [e.summary() for e in queued]}
    return _with_token(message, client_token, now)


def execution_reply(execution: Execution | None, *, client_token: str | None, now: dt.datetime) -> dict[str, Any]:
    """`start-next/accepted` and `{jobId}/get/accepted` (no `execution` when there is nothing pending)."""
    message = {} if execution is None else {"execution": execution.data()}
    return _with_token(message, client_token, now)


def update_reply(
    execution: Execution, request: UpdateRequest, *, client_token: str | None, now: dt.datetime
) -> dict[str, Any]:
    """`{jobId}/update/accepted`: executionState and jobDocument only when the request asked for them."""
    message: dict[str, Any] = {}
    if request.includeJobExecutionState:
        message["executionState"] = execution.state()
    if request.includeJobDocument and execution.job_document is not None:
        message["jobDocument"] = execution.job_document
    return _with_token(message, client_token, now)


def notify_message(in_progress: list[Execution], queued: list[Execution], *, now: dt.datetime) -> dict[str, Any]:
    """`jobs/notify` (JobExecutionsChangedEvent): summaries by status; `jobs` is `{}` when nothing is pending."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    if in_progress:
        jobs[IN_PROGRESS] = [e.summary() for e in in_progress]
    if queued:
        jobs[QUEUED] = [e.summary() for e in queued]
    return {"timestamp": epoch_seconds(now), "jobs": jobs}


def notify_next_message(execution: Execution | None, *, now: dt.datetime) -> dict[str, Any]:
    """`jobs/notify-next` (NextJobExecutionChangedEvent): no `execution` when nothing is pending any more."""
    message: dict[str, Any] = {"timestamp": epoch_seconds(now)}
    if execution is not None:
        message["execution"] = execution.data()
    return message
