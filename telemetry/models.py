from __future__ import annotations

from django.db import models

from fleet.models import Device


class TelemetrySample(models.Model):
    """One device's inference metrics for one model version over one interval (raw; rollups come later)."""

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
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # a version's figures over time (gates, charts)
            models.Index(fields=["model_name", "version_number", "ts"], name="telemetry_version_ts_idx"),
            # a device's latency chart
            models.Index(fields=["device", "ts"], name="telemetry_device_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.model_name} v{self.version_number} @ {self.ts:%H:%M:%S}"
