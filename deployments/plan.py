"""`RolloutPlan`: what a rollout was asked to do, typed, frozen, with every default in one place.

The API serializer (and through it the UI wizard) validates a request into a RolloutPlan; `rollout_create`
stores it in `Rollout.plan` (a JSON column written from the model) and the engine (services/,
gates.py) reads only its attributes. The defaults an operator gets when a request leaves a field out are
the ones below, and the two that come from settings (`ROLLOUT_DEFAULT_RATE_PER_MINUTE`,
`JOB_TIMEOUT_SECONDS`) are read once, when the plan is built: a stored plan carries the number it ran
with. Plans stored before this type existed are read with the same defaults (`RolloutPlan.from_stored`).

Not to be confused with `rollout_plan.Plan`, the planner's result (which device is in which wave).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# the documented defaults (docs/architecture.md, "Rollouts"); the API schema shows them too
DEFAULT_MIN_SUCCESS_PCT = 95.0
DEFAULT_MAX_FAILURE_PCT = 10.0
DEFAULT_MIN_FINISHED = 5
DEFAULT_BAKE_SECONDS = 300
DEFAULT_MIN_SAMPLES = 100
DEFAULT_TOLERATED_FAILURES = 0
DEFAULT_ON_INSTALL_FAILURE: Literal["abort", "rollback"] = "abort"
# A job the device never started (still QUEUED) is given up after this long, whatever the in-progress
# timeout (AWS IoT Jobs separates the two the same way): an offline device can't hold a wave for an hour.
DEFAULT_QUEUED_TIMEOUT_SECONDS = 600
# What happens to a device that is not reachable (offline, or online but silent for longer than
# DEVICE_STALE_AFTER_SECONDS) when its wave starts dispatching: "replace" swaps it with a reachable device
# of the same hardware profile from a later wave (falling back to "defer" when there is none), "defer"
# moves it to the next wave, "dispatch" sends it the job anyway. In the last wave every device is sent its
# job and an offline one is bounded by `queued_timeout_seconds`.
OfflineDevices = Literal["replace", "defer", "dispatch"]
DEFAULT_OFFLINE_DEVICES: OfflineDevices = "replace"
# A health gate has no default threshold in the API (a plan without one has no health gate); the wizard
# proposes this one, on by default: a ratio to the baseline, and absolute limits for hardware with no
# baseline (first installs), where a ratio can't be computed.
SUGGESTED_HEALTH_GATE: dict[str, float] = {"max_p95_latency_ratio": 1.3, "max_error_rate": 0.02, "max_p95_ms": 500.0}
MAX_JOB_TIMEOUT_SECONDS = 7 * 24 * 3600
HEALTH_THRESHOLDS = ("max_p95_latency_ratio", "max_error_rate", "max_p95_ms", "max_p99_ms")


def _default_rate() -> int:
    return int(settings.ROLLOUT_DEFAULT_RATE_PER_MINUTE)


def _default_timeout() -> int:
    return int(settings.JOB_TIMEOUT_SECONDS)


class _Part(BaseModel):
    # frozen: a started rollout's plan never changes; forbid: a misspelt key is an error, not a default
    model_config = ConfigDict(frozen=True, extra="forbid")


class TargetSpec(_Part):
    """Which devices: exactly one of a device-list filter, a group or device ids."""

    filter: dict[str, Any] | None = None
    group: int | None = Field(default=None, ge=1)
    devices: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetSpec:
        if sum(x is not None for x in (self.filter, self.group, self.devices)) != 1:
            raise ValueError("give exactly one of filter, group or devices")
        return self


class WaveSpec(_Part):
    """One wave: a cumulative percent of the eligible devices or a cumulative count, optional pins."""

    percent: float | None = Field(default=None, gt=0, le=100)
    count: int | None = Field(default=None, ge=1)
    site: int | None = None
    tier: str | None = None
    group: int | None = None
    approval: bool = False

    @model_validator(mode="after")
    def _percent_or_count(self) -> WaveSpec:
        if (self.percent is None) == (self.count is None):
            raise ValueError("give either percent or count")
        return self

    def stored(self) -> dict[str, Any]:
        """As kept on the Wave row (`Wave.spec`): only what was given."""
        return self.model_dump(mode="json", exclude_defaults=True)


class InstallGate(_Part):
    """AWS IoT Jobs' abort config: early abort past `max_failure_pct` of at least `min_finished` finished
    jobs; the wave passes when `min_success_pct` of its devices succeeded."""

    min_success_pct: float = Field(default=DEFAULT_MIN_SUCCESS_PCT, ge=0, le=100)
    max_failure_pct: float = Field(default=DEFAULT_MAX_FAILURE_PCT, ge=0, le=100)
    min_finished: int = Field(default=DEFAULT_MIN_FINISHED, ge=1)


class HealthGate(_Part):
    """Flagger's analysis over the bake time; at least one threshold is given."""

    max_p95_latency_ratio: float | None = Field(default=None, gt=0)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_p95_ms: float | None = Field(default=None, gt=0)
    max_p99_ms: float | None = Field(default=None, gt=0)
    bake_seconds: int = Field(default=DEFAULT_BAKE_SECONDS, ge=1)
    min_samples: int = Field(default=DEFAULT_MIN_SAMPLES, ge=1)
    min_baseline_samples: int | None = Field(default=None, ge=1)
    tolerated_failures: int = Field(default=DEFAULT_TOLERATED_FAILURES, ge=0)
    check_interval_seconds: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _a_threshold(self) -> HealthGate:
        thresholds = (self.max_p95_latency_ratio, self.max_error_rate, self.max_p95_ms, self.max_p99_ms)
        if all(x is None for x in thresholds):
            raise ValueError(f"give at least one threshold: {', '.join(HEALTH_THRESHOLDS)}")
        return self

    @property
    def baseline_samples(self) -> int:
        """Baseline requests a profile needs before its ratio counts (a quarter of `min_samples` unless given)."""
        return self.min_baseline_samples or max(1, self.min_samples // 4)

    @property
    def interval_seconds(self) -> float:
        """Seconds between intermediate checks while baking (five checks per bake unless given)."""
        return float(self.check_interval_seconds or max(1.0, self.bake_seconds / 5))


class RetryPolicy(_Part):
    """Extra attempts per failure type."""

    FAILED: int = Field(default=0, ge=0, le=10)
    TIMED_OUT: int = Field(default=0, ge=0, le=10)

    def extra_attempts(self, status: str) -> int:
        return {"FAILED": self.FAILED, "TIMED_OUT": self.TIMED_OUT}.get(status, 0)

    @property
    def retryable(self) -> tuple[str, ...]:
        return tuple(s for s in ("FAILED", "TIMED_OUT") if self.extra_attempts(s) > 0)


class ExponentialRate(_Part):
    """AWS IoT Jobs' exponentialRate: start at `base_per_minute`, times `factor` per `every_succeeded`."""

    base_per_minute: int = Field(ge=1)
    factor: float = Field(default=2.0, ge=1, le=5)
    every_succeeded: int = Field(default=10, ge=1)


class MaintenanceWindow(_Part):
    """A site's devices get jobs only between `start` and `end` (UTC HH:MM; end before start wraps)."""

    site: int
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")


class RolloutPlan(_Part):
    """A rollout's plan. Every field has its default here; build one with `RolloutPlan.model_validate`."""

    target: TargetSpec
    waves: tuple[WaveSpec, ...] = Field(min_length=1, max_length=20)
    install_gate: InstallGate = Field(default_factory=InstallGate)
    health_gate: HealthGate | None = None
    rate_per_minute: int = Field(default_factory=_default_rate, ge=1, le=1_000_000)
    exponential_rate: ExponentialRate | None = None
    job_timeout_seconds: int = Field(default_factory=_default_timeout, ge=5, le=MAX_JOB_TIMEOUT_SECONDS)
    queued_timeout_seconds: int = Field(default=DEFAULT_QUEUED_TIMEOUT_SECONDS, ge=5, le=MAX_JOB_TIMEOUT_SECONDS)
    offline_devices: OfflineDevices = DEFAULT_OFFLINE_DEVICES
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    start_at: dt.datetime | None = None
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()
    tier_aware: bool = False
    seed: int | None = Field(default=None, ge=0)
    on_install_failure: Literal["abort", "rollback"] = DEFAULT_ON_INSTALL_FAILURE

    @field_validator("start_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        # a time without a zone is UTC, as the API's are after DRF parsed them
        return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> RolloutPlan:
        """A plan as stored in `Rollout.plan`. Plans stored before this type carried an emergency flag
        (now the `force_rollback` column) and took the then-defaults from the engine: both are dropped
        here, so an old rollout reads with today's defaults."""
        return cls.model_validate({k: v for k, v in stored.items() if k in cls.model_fields})

    @property
    def queued_timeout(self) -> int:
        """Seconds a job may stay QUEUED: the plan's `queued_timeout_seconds`, never past the job's own timeout."""
        return min(self.queued_timeout_seconds, self.job_timeout_seconds)

    def stored(self) -> dict[str, Any]:
        """What `Rollout.plan` keeps: every field, defaults filled in (JSON types)."""
        return self.model_dump(mode="json")
