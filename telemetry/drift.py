"""Drift detection: reference profiles, drift scores per (version, site), and drift alerts.

Devices report, per input feature and telemetry interval, a histogram over fixed bin edges (protocol
`inputs.*.hist`). A published version may carry a `ReferenceProfile` from its training data: per feature
the proportions over the same kind of bins. `drift_evaluate` (Celery beat, or `manage.py evaluate_drift`)
adds up the histograms each (version, site) reported over the last `DRIFT_WINDOW_MINUTES`, scores every
feature against the reference — population stability index over the bins and a KS-style distance (the
largest difference of the two CDFs at the bin edges) — and opens, refreshes or resolves one `DriftAlert`
per (version, site) on the worst feature's PSI against `DRIFT_PSI_THRESHOLD`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record
from core.events import publish
from fleet.models import Device, Site
from protocol.messages import DEFAULT_HIST_EDGES, MAX_HIST_EDGES, feature_key

from .models import DriftAlert, ReferenceProfile, TelemetrySample

PROPORTION_FLOOR = 1e-4  # an empty bin counts as this share, so PSI stays finite (a common convention)
MAX_PROFILE_FEATURES = 256  # as many as a telemetry sample may carry
PROPORTION_TOLERANCE = 1e-3  # how far from 1 a profile's proportions may add up (rounding)

# --- the maths -------------------------------------------------------------------------------------


def proportions(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(counts, dtype=np.float64)
    total = values.sum()
    return values / total if total > 0 else values


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of `actual` against `expected` (both proportions over the same bins):
    Σ (a - e)·ln(a / e), with empty bins floored at `PROPORTION_FLOOR`. 0 is identical; > 0.2 is usually
    read as a significant shift, > 0.1 as a moderate one."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PROPORTION_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PROPORTION_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_distance(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """The largest difference between the two CDFs at the bin edges (a binned Kolmogorov-Smirnov statistic)."""
    e = np.cumsum(np.asarray(expected, dtype=np.float64))
    a = np.cumsum(np.asarray(actual, dtype=np.float64))
    return float(np.max(np.abs(a - e))) if len(e) else 0.0


def rebin(edges: Sequence[float], counts: Sequence[float], target_edges: Sequence[float]) -> np.ndarray:
    """Counts over `edges` moved onto the bins of `target_edges` (exact when the edges are the same).

    Otherwise the cumulative counts are interpolated linearly between edges (values spread evenly inside
    a bin), and the open-ended outer bins are taken to lie beyond any target edge outside the source range.
    """
    source = [float(e) for e in edges]
    target = [float(e) for e in target_edges]
    values = np.asarray(counts, dtype=np.float64)
    if source == target:
        return values
    cumulative = np.cumsum(values)[:-1]  # counts below each source edge
    below = np.interp(np.asarray(target), np.asarray(source), cumulative)
    return np.diff(np.concatenate(([0.0], below, [values.sum()])))


# --- reference profiles ----------------------------------------------------------------------------


class ProfileInvalid(ValueError):
    """A malformed reference profile; `field` is the path of the offending value (`features.x.edges`)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileInvalid(where, "must be a finite number")
    return float(value)


def profile_validate(features: object) -> dict[str, dict[str, Any]]:
    """The profile's features in their stored form; raises `ProfileInvalid` naming the first bad field."""
    if not isinstance(features, dict) or not features:
        raise ProfileInvalid("features", "must be a non-empty object of feature name to its profile")
    if len(features) > MAX_PROFILE_FEATURES:
        raise ProfileInvalid("features", f"at most {MAX_PROFILE_FEATURES} features")
    clean: dict[str, dict[str, Any]] = {}
    for name, spec in features.items():
        where = f"features.{name}"
        if not name or len(name) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ProfileInvalid(where, "a feature name is 1 to 128 characters without control characters")
        if not isinstance(spec, dict):
            raise ProfileInvalid(where, "must be an object with mean, var, edges and proportions")
        unknown = set(spec) - {"mean", "var", "edges", "proportions"}
        if unknown:
            raise ProfileInvalid(f"{where}.{sorted(unknown)[0]}", "unknown field")
        for key in ("mean", "var", "edges", "proportions"):
            if key not in spec:
                raise ProfileInvalid(f"{where}.{key}", "this field is required")
        mean = _number(spec["mean"], f"{where}.mean")
        var = _number(spec["var"], f"{where}.var")
        if var < 0:
            raise ProfileInvalid(f"{where}.var", "must not be negative")
        edges, shares = spec["edges"], spec["proportions"]
        if not isinstance(edges, list) or not 1 <= len(edges) <= MAX_HIST_EDGES:
            raise ProfileInvalid(f"{where}.edges", f"must be a list of 1 to {MAX_HIST_EDGES} numbers")
        edge_values = [_number(e, f"{where}.edges.{i}") for i, e in enumerate(edges)]
        if any(b <= a for a, b in pairwise(edge_values)):
            raise ProfileInvalid(f"{where}.edges", "must be strictly increasing")
        if not isinstance(shares, list) or len(shares) != len(edges) + 1:
            raise ProfileInvalid(
                f"{where}.proportions", "must be a list of len(edges) + 1 numbers (below, between, above the edges)"
            )
        share_values = [_number(p, f"{where}.proportions.{i}") for i, p in enumerate(shares)]
        if any(p < 0 for p in share_values):
            raise ProfileInvalid(f"{where}.proportions", "must not be negative")
        if abs(sum(share_values) - 1.0) > PROPORTION_TOLERANCE:
            raise ProfileInvalid(f"{where}.proportions", f"must add up to 1 (they add up to {sum(share_values):.6g})")
        clean[name] = {"mean": mean, "var": var, "edges": edge_values, "proportions": share_values}
    return clean


def profile_from_samples(
    inputs: Mapping[str, np.ndarray], *, edges: Sequence[float] = DEFAULT_HIST_EDGES
) -> dict[str, dict[str, Any]]:
    """A reference profile computed from training inputs (`{input name: array}`), feature names as the
    agent reports them (`input[0]` for column 0 of a multi-column input), over `edges`."""
    edge_array = np.asarray(edges, dtype=np.float64)
    features: dict[str, dict[str, Any]] = {}
    for name, array in inputs.items():
        values = np.asarray(array, dtype=np.float64)
        rows = values.reshape(1, 1) if values.ndim == 0 else values.reshape(-1, values.shape[-1])
        rows = rows[np.isfinite(rows).all(axis=1)]
        if not len(rows):
            raise ValueError(f"input {name!r} has no finite rows")
        columns = rows.shape[1]
        for column in range(columns):
            data = rows[:, column]
            counts = np.bincount(np.searchsorted(edge_array, data, side="right"), minlength=len(edge_array) + 1)
            features[feature_key(name, column, columns)] = {
                "mean": float(data.mean()),
                "var": float(data.var()),
                "edges": [float(e) for e in edge_array],
                "proportions": [float(p) for p in proportions(counts)],
            }
    return features


def reference_profile_set(
    *, actor: Actor, version: Any, features: object, sample_count: int = 0, source: str = ""
) -> ReferenceProfile:
    """Store (or replace) a version's reference profile after validating it (`ProfileInvalid` otherwise).

    Audited with the feature names and the previous profile's; re-setting the same profile changes
    nothing and writes no entry.
    """
    clean = profile_validate(features)
    with transaction.atomic():
        existing = ReferenceProfile.objects.select_for_update().filter(version=version).first()
        if existing and existing.features == clean and existing.source == source:
            return existing
        before = sorted(existing.features) if existing else None
        profile, _ = ReferenceProfile.objects.update_or_create(
            version=version,
            defaults={
                "features": clean,
                "sample_count": sample_count,
                "source": source[:256],
                "updated_at": timezone.now(),
            },
        )
        audit_record(
            actor=actor,
            action="telemetry.reference_profile_set",
            object_type="model_version",
            object_id=version.pk,
            object_repr=str(version),
            changes={"features": {"before": before, "after": sorted(clean)}, "source": source[:256]},
        )
    return profile


# --- aggregation over the window -------------------------------------------------------------------


@dataclass
class _FeatureWindow:
    """One feature's reported histograms at one (version, site), grouped by the edges they used."""

    by_edges: dict[tuple[float, ...], np.ndarray] = field(default_factory=dict)
    count: float = 0.0
    mean_sum: float = 0.0

    def add(self, edges: tuple[float, ...], counts: Sequence[float], mean_sum: float) -> None:
        values = np.asarray(counts, dtype=np.float64)
        known = self.by_edges.get(edges)
        self.by_edges[edges] = values if known is None or len(known) != len(values) else known + values
        self.count += float(values.sum())
        self.mean_sum += mean_sum


_Key = tuple[str, int, int]  # (model name, version number, site id)

# Per (version, site, feature, edges, bin): the summed count, and on the first bin the summed count * mean.
# `jsonb_to_record` extracts each feature's fields once (not once per bin) and hands the edges over as
# text, which hashes cheaply as a group key.
_WINDOW_SQL = """
SELECT s.model_name, s.version_number, d.site_id, f.key, hh.edges, h.idx,
       SUM(h.val::float8), SUM(CASE WHEN h.idx = 1 THEN r.count * r.mean END)
FROM {sample} s
JOIN {device} d ON d.id = s.device_id
CROSS JOIN LATERAL jsonb_each(s.inputs) AS f(key, value)
CROSS JOIN LATERAL jsonb_to_record(f.value) AS r(count float8, mean float8, hist jsonb)
CROSS JOIN LATERAL jsonb_to_record(r.hist) AS hh(edges text, counts jsonb)
CROSS JOIN LATERAL jsonb_array_elements_text(hh.counts) WITH ORDINALITY AS h(val, idx)
WHERE s.received_at >= %s AND s.received_at < %s AND jsonb_typeof(f.value -> 'hist') = 'object'
  AND ({versions})
GROUP BY 1, 2, 3, 4, 5, 6
"""


def _window(
    versions: Iterable[tuple[str, int]], since: dt.datetime, until: dt.datetime
) -> dict[_Key, dict[str, _FeatureWindow]]:
    """Histograms added up per (version, site, feature) over raw samples received in [since, until)."""
    versions = list(versions)
    if not versions:
        return {}
    if connection.vendor == "postgresql":
        return _window_sql(versions, since, until)
    return _window_python(versions, since, until)


def _window_sql(
    versions: list[tuple[str, int]], since: dt.datetime, until: dt.datetime
) -> dict[_Key, dict[str, _FeatureWindow]]:
    """One aggregate in PostgreSQL (the `received_at` index finds the window); rows come back per bin."""
    sql = _WINDOW_SQL.format(
        sample=connection.ops.quote_name(TelemetrySample._meta.db_table),
        device=connection.ops.quote_name(Device._meta.db_table),
        versions=" OR ".join(["(s.model_name = %s AND s.version_number = %s)"] * len(versions)),
    )
    params: list[object] = [since, until, *(v for pair in versions for v in pair)]
    bins: dict[tuple[_Key, str, str], dict[int, float]] = {}
    mean_sums: dict[tuple[_Key, str, str], float] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for model, number, site_id, name, edges, idx, total, mean_sum in cursor.fetchall():
            key = ((model, number, site_id), name, edges)
            bins.setdefault(key, {})[idx] = float(total)
            mean_sums[key] = mean_sums.get(key, 0.0) + float(mean_sum or 0.0)
    out: dict[_Key, dict[str, _FeatureWindow]] = {}
    for group, by_index in bins.items():
        pair, name, edges = group
        edge_values = tuple(float(e) for e in json.loads(edges))
        counts = [by_index.get(i, 0.0) for i in range(1, len(edge_values) + 2)]
        out.setdefault(pair, {}).setdefault(name, _FeatureWindow()).add(edge_values, counts, mean_sums[group])
    return out


def _window_python(
    versions: list[tuple[str, int]], since: dt.datetime, until: dt.datetime
) -> dict[_Key, dict[str, _FeatureWindow]]:
    """The same sums, row by row in Python (databases without jsonb; the benchmark's baseline)."""
    wanted = set(versions)
    out: dict[_Key, dict[str, _FeatureWindow]] = {}
    rows = TelemetrySample.objects.filter(received_at__gte=since, received_at__lt=until).values_list(
        "model_name", "version_number", "device__site_id", "inputs"
    )
    for model, number, site_id, inputs in rows.iterator(chunk_size=2000):
        if (model, number) not in wanted:
            continue
        for name, stats in (inputs or {}).items():
            hist = stats.get("hist") if isinstance(stats, dict) else None
            if not isinstance(hist, dict):
                continue
            out.setdefault((model, number, site_id), {}).setdefault(name, _FeatureWindow()).add(
                tuple(float(e) for e in hist["edges"]), hist["counts"], stats["count"] * stats["mean"]
            )
    return out


# --- scoring and alerts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    ks: float
    count: int
    mean: float
    reference_mean: float

    def as_dict(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "psi": round(self.psi, 4),
            "ks": round(self.ks, 4),
            "count": self.count,
            "mean": round(self.mean, 4),
            "reference_mean": round(self.reference_mean, 4),
        }


def score_features(
    profile: Mapping[str, Mapping[str, Any]], window: Mapping[str, _FeatureWindow], *, min_count: int
) -> list[FeatureDrift]:
    """PSI and KS per feature the profile and the window share, worst PSI first; features with fewer
    than `min_count` reported values are left out (too few to tell)."""
    scores = []
    for name, reference in profile.items():
        observed = window.get(name)
        if observed is None or observed.count < min_count:
            continue
        edges = reference["edges"]
        counts = sum(
            (rebin(source_edges, source_counts, edges) for source_edges, source_counts in observed.by_edges.items()),
            start=np.zeros(len(edges) + 1),
        )
        actual, expected = proportions(counts), np.asarray(reference["proportions"], dtype=np.float64)
        scores.append(
            FeatureDrift(
                feature=name,
                psi=psi(expected, actual),
                ks=ks_distance(expected, actual),
                count=int(observed.count),
                mean=observed.mean_sum / observed.count,
                reference_mean=float(reference["mean"]),
            )
        )
    return sorted(scores, key=lambda s: (-s.psi, s.feature))


Outcome = Literal["opened", "still_open", "resolved", "ok", "inconclusive"]


@dataclass(frozen=True)
class DriftEvaluation:
    model: str
    version: int
    site: str
    outcome: Outcome
    psi: float | None
    ks: float | None
    features: list[FeatureDrift]
    alert_id: int | None


def _event(alert: DriftAlert) -> dict[str, object]:
    version = alert.version
    return {
        "alert_id": alert.pk,
        "status": alert.status,
        "model": version.model.name,
        "version": version.number,
        "version_id": version.pk,
        "site": alert.site.name,
        "site_id": alert.site_id,
        "psi": alert.psi,
        "ks": alert.ks,
        "features": alert.features,
        "opened_at": alert.opened_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


def drift_alert_apply(
    *, actor: Actor, version: Any, site: Site, scores: list[FeatureDrift], sample_count: int, now: dt.datetime
) -> tuple[Outcome, DriftAlert | None]:
    """Open, refresh or resolve the (version, site) alert from one evaluation's scores.

    Guarantees: at most one open alert per (version, site) (a partial unique constraint, so two
    evaluators racing open one); opening and resolving are audited and announced as `drift.alert`
    after commit; refreshing an open alert's figures is measurement and is not audited.
    """
    threshold = settings.DRIFT_PSI_THRESHOLD
    top = [s.as_dict() for s in scores[: settings.DRIFT_TOP_FEATURES]]
    worst_psi, worst_ks = scores[0].psi, max(s.ks for s in scores)
    with transaction.atomic():
        alert = DriftAlert.objects.select_for_update().open().filter(version=version, site=site).first()
        if worst_psi >= threshold:
            if alert is not None:
                alert.psi, alert.ks, alert.features = worst_psi, worst_ks, top
                alert.peak_psi = max(alert.peak_psi, worst_psi)
                alert.sample_count, alert.last_evaluated_at = sample_count, now
                alert.save(update_fields=["psi", "ks", "features", "peak_psi", "sample_count", "last_evaluated_at"])
                return "still_open", alert
            try:
                with transaction.atomic():
                    alert = DriftAlert.objects.create(
                        version=version, site=site, psi=worst_psi, ks=worst_ks, peak_psi=worst_psi, features=top,
                        sample_count=sample_count, opened_at=now, last_evaluated_at=now,
                    )  # fmt: skip
            except IntegrityError:  # another evaluator opened it a moment ago
                return "still_open", DriftAlert.objects.open().filter(version=version, site=site).first()
            audit_record(
                actor=actor,
                action="drift.alert_opened",
                object_type="drift_alert",
                object_id=alert.pk,
                object_repr=str(alert),
                changes={"psi": round(worst_psi, 4), "ks": round(worst_ks, 4), "features": top,
                         "threshold": threshold},
            )  # fmt: skip
            publish("drift.alert", **_event(alert))
            return "opened", alert
        if alert is None:
            return "ok", None
        allowed_from = [s for s, targets in DriftAlert.TRANSITIONS.items() if DriftAlert.Status.RESOLVED in targets]
        updated = DriftAlert.objects.filter(pk=alert.pk, status__in=allowed_from).update(
            status=DriftAlert.Status.RESOLVED, resolved_at=now, last_evaluated_at=now, psi=worst_psi, ks=worst_ks,
            features=top, sample_count=sample_count,
        )  # fmt: skip
        if not updated:
            return "ok", None
        alert.refresh_from_db()
        audit_record(
            actor=actor,
            action="drift.alert_resolved",
            object_type="drift_alert",
            object_id=alert.pk,
            object_repr=str(alert),
            changes={"status": {"before": "open", "after": "resolved"}, "psi": round(worst_psi, 4),
                     "threshold": threshold},
        )  # fmt: skip
        publish("drift.alert", **_event(alert))
        return "resolved", alert


def drift_evaluate(
    *,
    actor: Actor,
    now: dt.datetime | None = None,
    window: dt.timedelta | None = None,
    progress: Callable[[DriftEvaluation], None] | None = None,
) -> list[DriftEvaluation]:
    """Score every (version with a reference profile, site that reported its inputs) over the window
    ending `now`, and open/refresh/resolve its alert. Idempotent for the same data; a (version, site)
    with too few reported values is inconclusive and its alert, if any, stays as it is."""
    now = now or timezone.now()
    window = window or dt.timedelta(minutes=settings.DRIFT_WINDOW_MINUTES)
    profiles = {
        (p.version.model.name, p.version.number): p for p in ReferenceProfile.objects.select_related("version__model")
    }
    windows = _window(profiles, now - window, now)
    sites = Site.objects.in_bulk({site_id for _, _, site_id in windows})
    results = []
    for (model, number, site_id), features in sorted(windows.items(), key=lambda kv: kv[0]):
        profile = profiles[(model, number)]
        site = sites[site_id]
        scores = score_features(profile.features, features, min_count=settings.DRIFT_MIN_COUNT)
        if not scores:
            outcome: Outcome = "inconclusive"
            alert = DriftAlert.objects.open().filter(version=profile.version, site=site).first()
        else:
            count = max(s.count for s in scores)
            outcome, alert = drift_alert_apply(
                actor=actor, version=profile.version, site=site, scores=scores, sample_count=count, now=now
            )
        result = DriftEvaluation(
            model=model,
            version=number,
            site=site.name,
            outcome=outcome,
            psi=scores[0].psi if scores else None,
            ks=max(s.ks for s in scores) if scores else None,
            features=scores,
            alert_id=alert.pk if alert else None,
        )
        results.append(result)
        if progress is not None:
            progress(result)
    return results
