"""Device protocol v1: one pydantic model per MQTT message and strict parsers for each (see docs/protocol.md).

Shared by the control plane's MQTT bridge, the device agent and the fleet simulator, so no Django
import here. Parsers never raise anything but `ProtocolError`, whose `reason_code` is a small fixed
set the bridge can count rejections by.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from protocol.latency_histogram import BUCKETS as LATENCY_BUCKETS
from protocol.topics import DEVICE_UID_PATTERN

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024

ReasonCode = Literal[
    "oversize",  # payload larger than MAX_PAYLOAD_BYTES
    "bad_json",  # not UTF-8, not JSON, or nested too deeply to parse
    "unsupported_version",  # a JSON object whose integer schema_version is not 1
    "invalid_message",  # JSON, but not this message type (missing/extra/mistyped/out-of-bounds fields)
    "unknown_topic",  # a topic that is not one of the device protocol's (see protocol.device_topics)
    "topic_mismatch",  # the payload names another job than its topic
]


class ProtocolError(ValueError):
    """A message or topic the protocol refuses; `reason_code` is stable, `detail` is for logs."""

    def __init__(self, reason_code: ReasonCode, detail: str = "") -> None:
        super().__init__(f"{reason_code}: {detail}" if detail else reason_code)
        self.reason_code: ReasonCode = reason_code
        self.detail = detail


# --- field types -------------------------------------------------------------------------------

_NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]+$"

DeviceUid = Annotated[str, StringConstraints(pattern=rf"^{DEVICE_UID_PATTERN}$")]
JobId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NO_CONTROL_CHARS)]
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NO_CONTROL_CHARS)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_CONTROL_CHARS)]
Description = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_CONTROL_CHARS)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Base64 = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9+/=_-]+$")]
HttpUrl = Annotated[str, StringConstraints(max_length=4096, pattern=r"^https?://[^\s]+$")]
ModelVersion = Annotated[int, Field(ge=1, le=2**31 - 1)]
DbId = Annotated[int, Field(ge=1, le=2**63 - 1)]
Count = Annotated[int, Field(ge=0, le=2**53)]
NonNegative = Annotated[float, Field(ge=0)]
Finite = float  # finiteness comes from allow_inf_nan=False in every model's config

SlotName = Literal["a", "b"]
DeviceState = Literal["online", "offline"]
JobKind = Literal["install", "rollback"]
JobStatus = Literal["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED"]
JobStep = Literal["downloading", "verifying", "activating"]

TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED"})


def _drop_absent(data: dict[str, Any], *optional: str) -> dict[str, Any]:
    """Leave unset optional fields added after v1 out of the wire form, so older peers still parse it."""
    for name in optional:
        if data.get(name) is None:
            data.pop(name, None)
    return data


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    # strict: no "1" for 1 and no 1.0 for an int; JSON strings still parse as datetimes.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class _OmitsAbsentAdditions(_Strict):
    """Fields added to protocol v1 after its first release are left out of the wire form when None.

    Receivers are strict (no unknown fields), so an old receiver accepts a new message only if the
    additions are absent; `_ADDITIONS` names them.
    """

    _ADDITIONS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_absent_additions(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for name in self._ADDITIONS:
            if data.get(name) is None:
                data.pop(name, None)
        return data


# --- gateway artifact cache (additive, issue 8): mirrors in jobs, the source in job updates ----

ArtifactSource = Literal["gateway", "cloud"]
CAPABILITY_ARTIFACT_MIRRORS = "artifact_mirrors"  # the agent understands JobDocument.mirrors
# the agent verifies JobDocument.envelope (protocol/job_envelope.py) and refuses jobs without one
CAPABILITY_SIGNED_JOBS = "signed_jobs"
# the agent keeps each job update until the control plane answers it on P/jobs/{id}/update/accepted|rejected
CAPABILITY_ACKED_UPDATES = "acked_updates"
SignedEnvelope = Annotated[
    str, StringConstraints(min_length=3, max_length=12 * 1024, pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
]


class ArtifactMirror(_Strict):
    """One place to download the artifact from; a job lists them in the order to try."""

    url: HttpUrl
    source: ArtifactSource


class RefusedSource(_Strict):
    """A source the device gave up on (unreachable, HTTP error, or bytes that fail sha256/size)."""

    source: ArtifactSource
    reason: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Message(_OmitsAbsentAdditions):
    schema_version: Literal[1]

    @field_validator("schema_version", mode="before")
    @classmethod
    def _exactly_the_integer(cls, value: object) -> object:
        # Literal[1] alone would take `true` and `1.0` (both == 1 in Python).
        if type(value) is not int:
            raise ValueError("schema_version must be the integer 1")
        return value


# --- messages ----------------------------------------------------------------------------------


class StatusMessage(_Message):
    """`P/status`, retained; also the agent's Last Will with state "offline"."""

    state: DeviceState
    agent_version: ShortText
    ts: AwareDatetime


class Hardware(_Strict):
    arch: ShortText
    cpu: Description
    memory_mb: Annotated[int, Field(ge=0, le=2**31 - 1)]
    accelerator: ShortText


class Runtime(_Strict):
    name: ShortText
    version: ShortText


class SlotContent(_Strict):
    model: ModelName
    version: ModelVersion
    sha256: Sha256Hex


class Slots(_Strict):
    a: SlotContent | None
    b: SlotContent | None


class ActiveModel(_Strict):
    version: ModelVersion
    slot: SlotName


TerminalJobStatus = Literal["SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED"]
MAX_RECENT_JOBS = 32


class RecentJob(_Strict):
    """One job the device finished, as its last update said (reconciliation, docs/protocol.md)."""

    job_id: JobId
    status: TerminalJobStatus
    seq: Count
    reason: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


class StateMessage(_Message):
    """`P/state`, retained: what the device reports it has installed and is serving."""

    ts: AwareDatetime
    agent_version: ShortText
    hardware: Hardware
    runtimes: Annotated[list[Runtime], Field(max_length=32)]
    slots: Slots
    active: Annotated[dict[ModelName, ActiveModel], Field(max_length=64)]
    # additive: what this agent understands, and the artifact cache it serves when it is a gateway
    capabilities: Annotated[list[ShortText], Field(max_length=32)] | None = None
    cache_url: HttpUrl | None = None
    # additive: where applications reach this device's `POST /infer` (nearest-endpoint resolution);
    # devices that omit it are not listed by resolve.
    inference_url: HttpUrl | None = None
    # additive: the device's most recent finished jobs, newest last; the control plane applies any it missed
    recent_jobs: Annotated[list[RecentJob], Field(max_length=MAX_RECENT_JOBS)] | None = None

    _ADDITIONS = ("capabilities", "cache_url", "inference_url", "recent_jobs")

    @model_validator(mode="after")
    def _active_slots_hold_the_active_versions(self) -> StateMessage:
        for name, active in self.active.items():
            content = getattr(self.slots, active.slot)
            if content is None or content.model != name or content.version != active.version:
                raise ValueError(f"active model {name!r} v{active.version} is not in slot {active.slot}")
        return self


class StageCondition(_Strict):
    """Run the stage only when the largest element of the previous stage's `output` passes `op value`."""

    output: FeatureName
    op: Literal[">=", ">", "<=", "<", "==", "!="]
    value: Finite


class PipelineStageDocument(_Strict):
    """One stage of a pipeline job: a model version's artifact and its own signed manifest."""

    name: ShortText
    model: ModelName
    model_id: DbId
    version: ModelVersion
    version_id: DbId
    format: ShortText
    artifact_url: HttpUrl
    sha256: Sha256Hex
    size: Annotated[int, Field(ge=1, le=2**40)]
    manifest: Annotated[str, StringConstraints(min_length=2, max_length=16 * 1024)]
    signature: Base64
    key_id: KeyId
    condition: StageCondition | None = None


class JobDocument(_OmitsAbsentAdditions):
    """One command for a device. `manifest` is the exact signed text; the agent checks it against the job.

    `mirrors` (additive) lists where to download from, in order (a gateway's cache, then the cloud);
    it is only sent to agents whose state lists the `artifact_mirrors` capability.

    A pipeline job (`format` "pipeline") names the pipeline in `model`/`model_id`, its version number in
    `version`, carries the pipeline's signed manifest and the ordered `stages`, and has no top-level artifact.
    """

    job_id: JobId
    kind: JobKind
    model: ModelName
    model_id: DbId
    version: ModelVersion
    version_id: DbId
    format: ShortText
    artifact_url: HttpUrl | None = None
    sha256: Sha256Hex | None = None
    size: Annotated[int, Field(ge=1, le=2**40)] | None = None
    manifest: Annotated[str, StringConstraints(min_length=2, max_length=16 * 1024)]
    signature: Base64
    key_id: KeyId
    timeout_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)]
    created_at: AwareDatetime
    mirrors: Annotated[list[ArtifactMirror], Field(min_length=1, max_length=8)] | None = None
    stages: Annotated[list[PipelineStageDocument], Field(min_length=1, max_length=8)] | None = None
    # the control plane's signature over kind, device, job id, version and expiry (protocol/job_envelope.py);
    # sent only to agents listing CAPABILITY_SIGNED_JOBS
    envelope: SignedEnvelope | None = None

    _ADDITIONS = ("mirrors", "stages", "envelope")

    @model_validator(mode="after")
    def _an_artifact_or_stages(self) -> JobDocument:
        artifact = (self.artifact_url, self.sha256, self.size)
        if self.stages is None and None in artifact:
            raise ValueError("a model job needs artifact_url, sha256 and size")
        if self.stages is not None and artifact != (None, None, None):
            raise ValueError("a pipeline job carries its artifacts in stages, not at the top level")
        if (self.stages is not None) != (self.format == "pipeline"):
            raise ValueError('stages go with format "pipeline" and only with it')
        if self.stages is not None and self.mirrors is not None:
            raise ValueError("a pipeline job's stages are fetched from their own URLs, without mirrors")
        return self

    @property
    def is_pipeline(self) -> bool:
        return self.stages is not None


class JobsNotify(_Message):
    """`P/jobs/notify`, control plane → device: new jobs and job ids to cancel."""

    jobs: Annotated[list[JobDocument], Field(max_length=64)] = []
    cancel: Annotated[list[JobId], Field(max_length=1024)] = []


class JobsGet(_Message):
    """`P/jobs/get`, device → control plane on every (re)connect."""

    request_id: RequestId


class JobsGetAccepted(_Message):
    """`P/jobs/get/accepted`: every job of the device that is not terminal yet."""

    request_id: RequestId
    jobs: Annotated[list[JobDocument], Field(max_length=64)]


class JobUpdate(_Message):
    """`P/jobs/{job_id}/update`: `seq` grows per job at the device, so stale updates can be dropped."""

    job_id: JobId
    seq: Count
    status: JobStatus
    step: JobStep | None = None
    progress: Annotated[float, Field(ge=0, le=1)] | None = None
    reason: Reason | None = None
    ts: AwareDatetime
    # additive: where the artifact came from (SUCCEEDED only) and which sources were refused and why
    artifact_source: ArtifactSource | None = None
    artifact_bytes: Count | None = None
    refused_sources: Annotated[list[RefusedSource], Field(max_length=8)] | None = None

    _ADDITIONS = ("artifact_source", "artifact_bytes", "refused_sources")

    @model_validator(mode="after")
    def _step_only_while_in_progress(self) -> JobUpdate:
        if self.step is not None and self.status != "IN_PROGRESS":
            raise ValueError(f"step {self.step!r} is only valid with status IN_PROGRESS")
        return self

    @model_validator(mode="after")
    def _source_with_its_byte_count_on_success(self) -> JobUpdate:
        if (self.artifact_source is None) != (self.artifact_bytes is None):
            raise ValueError("artifact_source and artifact_bytes come together")
        if self.artifact_source is not None and self.status != "SUCCEEDED":
            raise ValueError("artifact_source is only valid with status SUCCEEDED")
        return self


class LatencyHistogram(_Strict):
    """Successful requests counted in the fixed buckets of `protocol.latency_histogram` (trailing empty
    buckets may be left out). Additive: a device that sends none is judged on its p95 (docs/protocol.md)."""

    counts: Annotated[list[Count], Field(min_length=1, max_length=LATENCY_BUCKETS)]


UpdateRejection = Literal[
    "unknown_job",  # no such job (deleted, or never created)
    "foreign_job",  # the job belongs to another device
    "topic_mismatch",  # the payload named another job than its topic
    # the update did not parse (ProtocolError's reason codes)
    "invalid_message",
    "bad_json",
    "unsupported_version",
    "oversize",
]


class JobUpdateAccepted(_Message):
    """`P/jobs/{job_id}/update/accepted`, control plane → device, after the commit: the job as stored.

    Answers every update of the job with `seq` ≤ this `seq` (and, when `status` is terminal, every
    update of the job): whether it changed the job or was a duplicate, stale or late.
    """

    job_id: JobId
    status: JobStatus
    seq: Count


class JobUpdateRejected(_Message):
    """`P/jobs/{job_id}/update/rejected`: the update (`seq`, when it parsed) will never be applied."""

    job_id: JobId
    seq: Count | None = None
    reason_code: UpdateRejection


class LatencySummary(_OmitsAbsentAdditions):
    p50: NonNegative
    p95: NonNegative
    p99: NonNegative
    max: NonNegative
    hist: LatencyHistogram | None = None  # optional (added later, additive): older agents omit it

    _ADDITIONS = ("hist",)


MAX_HIST_EDGES = 64

# Bin edges an agent uses when nobody gave it others (see docs/protocol.md, "Input histograms"): a grid
# in standardized units, finer near 0. Reference profiles computed by the control plane default to the
# same edges, so device and reference histograms line up bin for bin.
DEFAULT_HIST_EDGES: tuple[float, ...] = (
    -10.0, -5.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.75, -0.5, -0.25,
    0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0,
)  # fmt: skip


def feature_key(name: str, column: int, columns: int) -> str:
    """A feature's name in `inputs`: the input's name, or `name[column]` for a multi-column input."""
    return (name if columns == 1 else f"{name}[{column}]")[:128]


class FeatureHistogram(_Strict):
    """Counts per bin: `counts[0]` below `edges[0]`, `counts[i]` in `[edges[i-1], edges[i])`, the last at or
    above `edges[-1]` — so `len(counts) == len(edges) + 1`."""

    edges: Annotated[list[Finite], Field(min_length=1, max_length=MAX_HIST_EDGES)]
    counts: Annotated[list[Count], Field(min_length=2, max_length=MAX_HIST_EDGES + 1)]

    @model_validator(mode="after")
    def _bins_fit_the_edges(self) -> FeatureHistogram:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("histogram edges must be strictly increasing")
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError("a histogram needs len(edges) + 1 counts")
        return self


class FeatureStats(_Strict):
    count: Count
    mean: Finite
    var: NonNegative
    min: Finite
    max: Finite
    hist: FeatureHistogram | None = None  # optional (added later, additive): older agents omit it

    @model_validator(mode="after")
    def _histogram_counts_every_value(self) -> FeatureStats:
        if self.hist is not None and sum(self.hist.counts) != self.count:
            raise ValueError("histogram counts must add up to count")
        return self


class StageLatency(_Strict):
    """One pipeline stage over the interval: how often it ran, was skipped or failed, and its latency."""

    name: ShortText
    model: ModelName
    version: ModelVersion
    requests: Count
    skipped: Count = 0
    errors: Count = 0
    latency_ms: LatencySummary | None = None  # None when the stage never ran in the interval


class TelemetrySample(_Strict):
    """Per (model or pipeline, version). A pipeline's sample is end to end, with `stages` per stage."""

    model: ModelName
    version: ModelVersion
    requests: Count
    errors: Count
    latency_ms: LatencySummary
    inputs: Annotated[dict[FeatureName, FeatureStats], Field(max_length=256)] = {}
    stages: Annotated[list[StageLatency], Field(max_length=8)] | None = None

    @model_serializer(mode="wrap")
    def _without_absent_stages(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_absent(handler(self), "stages")

    @model_validator(mode="after")
    def _errors_are_requests(self) -> TelemetrySample:
        if self.errors > self.requests:
            raise ValueError("errors cannot exceed requests")
        hist = self.latency_ms.hist
        if hist is not None and sum(hist.counts) > self.requests - self.errors:
            raise ValueError("the latency histogram counts more requests than succeeded")
        return self


class TelemetryMessage(_Message):
    """`P/telemetry`: inference metrics per (model, version) over the last `interval_s` seconds."""

    ts: AwareDatetime
    interval_s: Annotated[float, Field(gt=0, le=86400)]
    samples: Annotated[list[TelemetrySample], Field(max_length=256)]


Message = StatusMessage | StateMessage | JobsNotify | JobsGet | JobsGetAccepted | JobUpdate | TelemetryMessage

# --- parsing and encoding ----------------------------------------------------------------------

_M = TypeVar("_M", bound=_Message)
_DETAIL_MAX = 500
_LOC_UNSAFE = re.compile(r"[^\w.\[\]-]")


def _describe(exc: ValidationError) -> str:
    """Where and what, never the offending input (it may be large or hostile)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(_LOC_UNSAFE.sub("?", str(p))[:40] for p in error["loc"]) or "<root>"
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)[:_DETAIL_MAX]


Payload = bytes | bytearray
"""An MQTT payload as the clients hand it over (paho's `MQTTMessage.payload` may be either)."""


def parse_message(model: type[_M], payload: Payload) -> _M:
    """Validate `payload` as `model`; raises `ProtocolError` and nothing else."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError("bad_json", f"payload is {type(payload).__name__}, not bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_json", str(exc)[:_DETAIL_MAX]) from None
    try:
        # One parse for a valid message (the common case): pydantic's own, which accepts only what the
        # checks below would pass. A message it refuses is looked at again below, so each reason stays
        # exactly what it was (json.loads first cost a fifth of the bridge's telemetry parsing).
        return model.model_validate_json(text)
    except (ValueError, RecursionError):  # ValidationError is a ValueError
        pass
    try:
        data: Any = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", str(exc)[:_DETAIL_MAX]) from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if type(version) is int and version != SCHEMA_VERSION:
        raise ProtocolError("unsupported_version", f"schema_version {version} is not {SCHEMA_VERSION}")
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ProtocolError("invalid_message", f"{model.__name__}: {_describe(exc)}") from None
    except (ValueError, RecursionError) as exc:  # pydantic's own JSON parser has a depth limit too
        raise ProtocolError("bad_json", str(exc)[:_DETAIL_MAX]) from None


def parse_status(payload: Payload) -> StatusMessage:
    return parse_message(StatusMessage, payload)


def parse_state(payload: Payload) -> StateMessage:
    return parse_message(StateMessage, payload)


def parse_jobs_notify(payload: Payload) -> JobsNotify:
    return parse_message(JobsNotify, payload)


def parse_jobs_get(payload: Payload) -> JobsGet:
    return parse_message(JobsGet, payload)


def parse_jobs_get_accepted(payload: Payload) -> JobsGetAccepted:
    return parse_message(JobsGetAccepted, payload)


def parse_job_update(payload: Payload) -> JobUpdate:
    return parse_message(JobUpdate, payload)


def parse_job_update_accepted(payload: Payload) -> JobUpdateAccepted:
    return parse_message(JobUpdateAccepted, payload)


def parse_job_update_rejected(payload: Payload) -> JobUpdateRejected:
    return parse_message(JobUpdateRejected, payload)


def parse_telemetry(payload: Payload) -> TelemetryMessage:
    return parse_message(TelemetryMessage, payload)


def encode(message: _Message) -> bytes:
    """The wire form of a message (compact JSON, nulls kept, datetimes ISO 8601)."""
    return message.model_dump_json().encode("utf-8")
