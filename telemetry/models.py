from __future__ import annotations

from django.db import models

from fleet.models import Device, Site


class TelemetrySample(models.Model):
    """One device's inference metrics for one model version over one interval (raw, kept for hours)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="telemetry")
    model_name = models.CharField(max_length=128)
    version_number = models.PositiveIntegerField()
    ts = models.DateTimeField(help_text="end of the interval, as reported by the device")
    interval_s = models.FloatField()
    requests = models.PositiveIntegerField()
    errors = models.PositiveIntegerField()
    p50_ms = models.FloatField()
    p95_ms = models.FloatField()
    p99_ms = models.FloatField()
    max_ms = models.FloatField()
    inputs = models.JSONField(default=dict, blank=True)
    stages = models.JSONField(
        default=list,
        blank=True,
        help_text="a pipeline's per-stage figures: name, model, version, requests, "
        "skipped, errors, latency_ms {p50, p95, p99, max}; empty for a single model",
    )
    latency_hist = models.JSONField(
        null=True, blank=True,
        help_text="successful requests per fixed latency bucket (protocol.latency_histogram), trailing "
        "empty buckets left out; null from devices that send none",
    )  # fmt: skip
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # a version's figures over time (gates, charts)
            models.Index(fields=["model_name", "version_number", "ts"], name="telemetry_version_ts_idx"),
            # a device's latency chart
            models.Index(fields=["device", "ts"], name="telemetry_device_ts_idx"),
            # the retention sweep deletes by server receive time (device clocks may be wrong)
            models.Index(fields=["received_at"], name="telemetry_received_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.model_name} v{self.version_number} @ {self.ts:%H:%M:%S}"


class TelemetryRollupQuerySet(models.QuerySet["TelemetryRollup"]):
    def for_version(self, model_name: str, version_number: int) -> TelemetryRollupQuerySet:
        return self.filter(model_name=model_name, version_number=version_number)


class TelemetryRollup(models.Model):
    """Telemetry of one minute for one (model, version, site, hardware profile), kept up to date at ingest.

    Counts add up exactly. Latency percentiles cannot be merged exactly from per-device summaries:
    `p*_wsum` hold request-weighted sums (so `p95_mean = p95_wsum / requests` is the request-weighted
    mean of the devices' p95s) and `p*_max` the worst device's value. Both are approximations of the
    true p95 of all requests: the mean under-states a tail that only some devices have, the max
    over-states it. Gates and charts should say which one they use.
    """

    minute = models.DateTimeField(help_text="start of the minute (device time, truncated)")
    model_name = models.CharField(max_length=128)
    version_number = models.PositiveIntegerField()
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="+")
    arch = models.CharField(max_length=16)
    cpu = models.CharField(max_length=120)
    accelerator = models.CharField(max_length=8)
    samples = models.PositiveIntegerField(default=0, help_text="raw samples folded in")
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    p50_wsum = models.FloatField(default=0.0)
    p95_wsum = models.FloatField(default=0.0)
    p99_wsum = models.FloatField(default=0.0)
    p95_max = models.FloatField(default=0.0)
    p99_max = models.FloatField(default=0.0)
    max_ms = models.FloatField(default=0.0)

    objects = TelemetryRollupQuerySet.as_manager()

    class Meta:
        constraints = [
            # the ingest upsert's conflict target; its leading columns also serve a version's chart
            # (model_name, version_number, minute range)
            models.UniqueConstraint(
                fields=["model_name", "version_number", "minute", "site", "arch", "cpu", "accelerator"],
                name="telemetry_rollup_key",
            )
        ]
        indexes = [
            # the retention sweep
            models.Index(fields=["minute"], name="telemetry_rollup_minute_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} v{self.version_number} {self.minute:%Y-%m-%d %H:%M} site {self.site_id}"

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95_mean(self) -> float:
        return self.p95_wsum / self.requests if self.requests else 0.0


# --- drift detection (issue 8) -------------------------------------------------------------------


class ReferenceProfile(models.Model):
    """The input distribution a model version was trained on, per feature: mean, variance, histogram.

    `features` is `{name: {"mean", "var", "edges", "proportions"}}` with `len(proportions) ==
    len(edges) + 1` (below the first edge, between edges, at or above the last), as in the protocol's
    input histograms. Written only through `telemetry.drift.reference_profile_set`, which validates it.
    """

    version = models.OneToOneField(
        "models_registry.ModelVersion", on_delete=models.CASCADE, related_name="reference_profile"
    )
    features = models.JSONField()
    sample_count = models.PositiveBigIntegerField(default=0, help_text="training rows it was computed from")
    source = models.CharField(max_length=256, blank=True, help_text="where the training data came from")
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"reference profile of version {self.version_id} ({len(self.features)} features)"


class DriftAlertQuerySet(models.QuerySet["DriftAlert"]):
    def open(self) -> DriftAlertQuerySet:
        return self.filter(status=DriftAlert.Status.OPEN)


class DriftAlert(models.Model):
    """A version's inputs at one site moved away from its reference profile ("retraining needed").

    Opened when the worst feature's PSI crosses `DRIFT_PSI_THRESHOLD`, kept up to date (score, features,
    last evaluation) while it stays over, resolved when a later evaluation finds it back under.
    """

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    TRANSITIONS: dict[str, frozenset[str]] = {Status.OPEN: frozenset({Status.RESOLVED}), Status.RESOLVED: frozenset()}
    TERMINAL: frozenset[str] = frozenset({Status.RESOLVED})

    version = models.ForeignKey("models_registry.ModelVersion", on_delete=models.CASCADE, related_name="drift_alerts")
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="drift_alerts")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    psi = models.FloatField(help_text="the worst feature's population stability index at the last evaluation")
    ks = models.FloatField(help_text="the worst feature's max CDF difference over the bins at the last evaluation")
    peak_psi = models.FloatField(help_text="the highest PSI seen while open")
    features = models.JSONField(default=list, help_text="the features that moved most, with their scores")
    sample_count = models.PositiveBigIntegerField(default=0, help_text="input rows in the last evaluated window")
    opened_at = models.DateTimeField()
    last_evaluated_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    objects = DriftAlertQuerySet.as_manager()

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            # one open alert per (version, site): the evaluator's idempotency
            models.UniqueConstraint(
                fields=["version", "site"], condition=models.Q(status="open"), name="drift_one_open_alert"
            )
        ]
        indexes = [
            # the API's and the dashboard's list: open alerts, newest first
            models.Index(fields=["status", "-opened_at"], name="drift_alert_status_idx"),
        ]

    def __str__(self) -> str:
        return f"drift on version {self.version_id} at site {self.site_id} ({self.status})"
