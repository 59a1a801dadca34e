"""Telemetry ingest and retention.

Ingest writes a batch of device messages in one transaction: the raw samples (PostgreSQL `COPY`, or
one multi-row insert elsewhere) and the per-minute rollups (one multi-row upsert), then, on commit,
offers each device's latest figures to the websocket coalescer. Never one insert per message.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from pydantic import TypeAdapter

from audit.actors import Actor
from audit.services import audit_record
from core.stream_watchers import stream_watched_groups
from fleet.models import Device
from protocol.messages import FeatureStats, StageLatency, TelemetryMessage
from protocol.streams import TelemetryPoint, device_group

from .models import TelemetryRollup, TelemetrySample
from .streaming import committed_batch_offer, stream_offer

# the JSON of a sample's input statistics and stage latencies, serialized by pydantic (not json.dumps
# over model_dump: a fifth of the telemetry writer's time)
_INPUTS_JSON: TypeAdapter[dict[str, FeatureStats]] = TypeAdapter(dict[str, FeatureStats])
_STAGES_JSON: TypeAdapter[list[StageLatency]] = TypeAdapter(list[StageLatency])

UPSERT_CHUNK = 500  # rollup rows per INSERT statement (16 parameters each)


@dataclass(frozen=True)
class TelemetryEnvelope:
    uid: str
    message: TelemetryMessage


@dataclass(frozen=True)
class DeviceProfile:
    """What a telemetry sample's rollup key needs of its device."""

    device_id: int
    site_id: int
    arch: str
    cpu: str
    accelerator: str


# (device_id, model, version, ts, interval_s, requests, errors, p50, p95, p99, max, inputs-json, stages-json,
#  latency-histogram-json or None)
_Row = tuple[int, str, int, dt.datetime, float, int, int, float, float, float, float, str, str, str | None]
_RAW_COLUMNS = (
    "device_id",
    "model_name",
    "version_number",
    "ts",
    "interval_s",
    "requests",
    "errors",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "inputs",
    "stages",
    "latency_hist",
)
_ROLLUP_KEY = ("model_name", "version_number", "minute", "site_id", "arch", "cpu", "accelerator")
_ROLLUP_SUMS = ("samples", "requests", "errors", "p50_wsum", "p95_wsum", "p99_wsum")
_ROLLUP_MAXES = ("p95_max", "p99_max", "max_ms")


def telemetry_ingest_batch(
    envelopes: Sequence[TelemetryEnvelope], *, profiles: Mapping[str, DeviceProfile] | None = None
) -> int:
    """Store the samples of many telemetry messages and fold them into the minute rollups.

    Guarantees: raw rows and rollups commit or roll back together (the caller may wrap more work in
    the same transaction, as the bridge does); unknown and revoked devices are skipped; the websocket
    update is sent only after commit. Returns the number of raw samples stored.
    `profiles` (uid → DeviceProfile of the admitted devices) saves the device lookup when the caller
    already knows them (the bridge's device directory does); a uid missing from it is skipped.
    Telemetry is measurement, not an action, so it is not audited.
    """
    if not envelopes:
        return 0
    if profiles is None:
        profiles = {
            uid: DeviceProfile(pk, site_id, arch, cpu, accelerator)
            for uid, pk, site_id, arch, cpu, accelerator in Device.objects.filter(
                uid__in={e.uid for e in envelopes}, revoked_at__isnull=True
            ).values_list("uid", "pk", "site_id", "arch", "cpu", "accelerator")
        }
    rows: list[_Row] = []
    hists: list[list[int] | None] = []  # each row's latency histogram, for the live rollout cohorts
    rollups: dict[tuple[object, ...], list[float]] = {}
    latest: dict[str, dict[str, dict[str, object]]] = {}
    watched = stream_watched_groups()  # only open device pages get the latest figures
    for envelope in envelopes:
        profile = profiles.get(envelope.uid)
        if profile is None:
            continue
        message = envelope.message
        minute = message.ts.astimezone(dt.UTC).replace(second=0, microsecond=0)
        for s in message.samples:
            lat = s.latency_ms
            hists.append(lat.hist.counts if lat.hist is not None else None)
            rows.append(
                (
                    profile.device_id,
                    s.model,
                    s.version,
                    message.ts,
                    message.interval_s,
                    s.requests,
                    s.errors,
                    lat.p50,
                    lat.p95,
                    lat.p99,
                    lat.max,
                    _INPUTS_JSON.dump_json(s.inputs).decode(),
                    _STAGES_JSON.dump_json(s.stages).decode() if s.stages else "[]",
                    json.dumps(lat.hist.counts, separators=(",", ":")) if lat.hist is not None else None,
                )
            )
            key = (s.model, s.version, minute, profile.site_id, profile.arch, profile.cpu, profile.accelerator)
            acc = rollups.setdefault(key, [0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += s.requests
            acc[2] += s.errors
            acc[3] += lat.p50 * s.requests
            acc[4] += lat.p95 * s.requests
            acc[5] += lat.p99 * s.requests
            acc[6] = max(acc[6], lat.p95)
            acc[7] = max(acc[7], lat.p99)
            acc[8] = max(acc[8], lat.max)
            group = device_group(profile.device_id)
            if group not in watched:
                continue
            point: TelemetryPoint = {
                "model": s.model,
                "version": s.version,
                "ts": message.ts.isoformat(),
                "requests": s.requests,
                "errors": s.errors,
                "p50_ms": lat.p50,
                "p95_ms": lat.p95,
                "p99_ms": lat.p99,
            }
            items = latest.setdefault(group, {})
            previous = items.get(f"{s.model}:{s.version}")
            if previous is None or str(previous["ts"]) <= point["ts"]:
                items[f"{s.model}:{s.version}"] = dict(point)
    if not rows:
        return 0
    with transaction.atomic():
        _store_raw(rows)
        _upsert_rollups(rollups)
        committed = [(r[0], r[1], r[2], r[3], r[5], r[6], r[8], h) for r, h in zip(rows, hists, strict=True)]

        def offer() -> None:
            stream_offer(latest)
            committed_batch_offer(committed)  # e.g. the pages of active rollouts these devices are in

        # Live pages are best effort: once the batch is committed, a failure here (e.g. the database
        # connection dropped before the rollout lookup) must not fail the batch, or the bridge would not
        # ack it and the broker's redelivery would store it twice.
        transaction.on_commit(offer, robust=True)
    return len(rows)


def _store_raw(rows: list[_Row]) -> None:
    received_at = timezone.now()
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(TelemetrySample._meta.db_table)
        columns = ", ".join([*_RAW_COLUMNS, "received_at"])
        with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((*row, received_at))
        return

    def decoded(row: _Row) -> tuple[object, ...]:
        inputs, stages, hist = row[-3:]
        return (*row[:-3], json.loads(inputs), json.loads(stages), None if hist is None else json.loads(hist))

    TelemetrySample.objects.bulk_create(
        [TelemetrySample(**dict(zip(_RAW_COLUMNS, decoded(row), strict=True))) for row in rows],
        batch_size=1000,
    )


def _upsert_rollups(rollups: dict[tuple[object, ...], list[float]]) -> None:
    """One `INSERT … ON CONFLICT DO UPDATE` per chunk; sums add up, maxima keep the larger value.

    Keys are sorted so concurrent bridges lock conflicting rows in the same order (no deadlock).
    """
    if not rollups:
        return
    table = connection.ops.quote_name(TelemetryRollup._meta.db_table)
    greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    columns = [*_ROLLUP_KEY, *_ROLLUP_SUMS, *_ROLLUP_MAXES]
    updates = [f"{c} = {table}.{c} + excluded.{c}" for c in _ROLLUP_SUMS]
    updates += [f"{c} = {greatest}({table}.{c}, excluded.{c})" for c in _ROLLUP_MAXES]
    placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
    items = sorted(rollups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3], kv[0][4:]))
    with connection.cursor() as cursor:
        for start in range(0, len(items), UPSERT_CHUNK):
            chunk = items[start : start + UPSERT_CHUNK]
            params: list[object] = []
            for key, acc in chunk:
                model, version, minute, *rest = key
                params += [model, version, connection.ops.adapt_datetimefield_value(minute), *rest, *acc]
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([placeholder] * len(chunk))} "  # noqa: S608 - identifiers are ours
                f"ON CONFLICT ({', '.join(_ROLLUP_KEY)}) DO UPDATE SET {', '.join(updates)}",
                params,
            )


@dataclass(frozen=True)
class RetentionResult:
    raw_deleted: int
    rollups_deleted: int


def telemetry_enforce_retention(*, actor: Actor, now: dt.datetime | None = None) -> RetentionResult:
    """Delete raw samples older than TELEMETRY_RAW_RETENTION_HOURS (by receive time) and rollups older
    than TELEMETRY_ROLLUP_RETENTION_DAYS. Idempotent; audited (with counts) only when it deleted something.
    """
    now = now or timezone.now()
    raw_cutoff = now - dt.timedelta(hours=settings.TELEMETRY_RAW_RETENTION_HOURS)
    rollup_cutoff = now - dt.timedelta(days=settings.TELEMETRY_ROLLUP_RETENTION_DAYS)
    with transaction.atomic():
        # neither table has dependants or signals, so these are single fast DELETE statements
        raw_deleted = TelemetrySample.objects.filter(received_at__lt=raw_cutoff).delete()[0]
        rollups_deleted = TelemetryRollup.objects.filter(minute__lt=rollup_cutoff).delete()[0]
        if raw_deleted or rollups_deleted:
            audit_record(
                actor=actor,
                action="telemetry.retention",
                object_type="telemetry",
                object_repr=f"{raw_deleted} samples, {rollups_deleted} rollups",
                changes={
                    "raw_deleted": raw_deleted,
                    "raw_before": raw_cutoff.isoformat(),
                    "rollups_deleted": rollups_deleted,
                    "rollups_before": rollup_cutoff.isoformat(),
                },
            )
    return RetentionResult(raw_deleted, rollups_deleted)
