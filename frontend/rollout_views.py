"""The rollout pages: list, the create wizard (plan → preview → create and start) and the live detail page.

Plans are validated by the API's `RolloutPlanSerializer` and previewed by `rollout_preview`, so the
wizard and the API accept and refuse exactly the same plans. Actions go through the rollout services
(audited there). Viewers read; operators act (the templates hide the controls, the server refuses them).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from core.csv_export import csv_lines
from core.roles import OPERATOR, VIEWER, has_role
from deployments.api.serializers import RolloutPlanSerializer
from deployments.cohorts import gate_check_series
from deployments.exceptions import DeploymentRefused, InvalidTransition, PlanInvalid
from deployments.models import DEPLOYABLE_RELATED, ROLLOUT_TRANSITIONS, Rollout, RolloutStatus
from deployments.plan import (
    DEFAULT_BAKE_SECONDS,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_OFFLINE_DEVICES,
    DEFAULT_QUEUED_TIMEOUT_SECONDS,
    SUGGESTED_HEALTH_GATE,
    InstallGate,
)
from deployments.selectors import (
    FAILED_DEVICE_COLUMNS,
    artifact_transfer_summary,
    failed_device_row,
    gate_evaluation_row,
    rollout_cohort_series,
    rollout_excluded,
    rollout_failed_jobs,
    rollout_gate_timeline,
    rollout_list_rows,
    rollout_progress,
)
from deployments.services.rollout_drafts import rollout_preview
from deployments.services.rollouts import (
    rollout_abort,
    rollout_approve,
    rollout_can_approve,
    rollout_create_and_start,
    rollout_pause,
    rollout_resume,
    rollout_rollback,
)
from fleet.models import Device, DeviceGroup, Site, Tier
from models_registry.models import ModelVersion, PipelineVersion

from .web import actor_of, paginate, role_required

WAVE_ROWS = 5
PIPELINE_PREFIX = "pipeline:"
# what each button asks the rollout services to do; shown only when the rollout's status allows it
ACTIONS: dict[str, tuple[Callable[..., Rollout], str, str]] = {
    "pause": (rollout_pause, RolloutStatus.PAUSED, "Pause: no more jobs are sent and no wave is promoted."),
    "resume": (rollout_resume, RolloutStatus.RUNNING, "Resume the rollout?"),
    "abort": (rollout_abort, RolloutStatus.ABORTED, "Abort: stop for good; devices keep what they have."),
    "rollback": (rollout_rollback, RolloutStatus.ROLLING_BACK, "Roll back every device to its baseline version?"),
}


# --- list -----------------------------------------------------------------------------------------
@role_required(VIEWER)
def rollout_list(request: HttpRequest) -> HttpResponse:
    """Rollouts newest first, filtered by status (kept in the URL), with their install progress."""
    chosen = [s for s in request.GET.getlist("status") if s in RolloutStatus.values]
    page, keep = paginate(request, rollout_list_rows(chosen))
    return render(
        request,
        "frontend/rollout_list.html",
        {
            "page": page,
            "keep": keep,
            "statuses": RolloutStatus.choices,
            "chosen": chosen,
            "can_operate": has_role(request.user, OPERATOR),
        },
    )


# --- the wizard -----------------------------------------------------------------------------------
def _number(value: str) -> float | int | None:
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return float(value)


def plan_payload(post: QueryDict) -> tuple[dict[str, Any], dict[str, str]]:
    """The wizard's fields as the API's rollout body, and the errors found while reading them (field → reason).

    Only shapes are read here; every rule is the serializer's or the planner's.
    """
    errors: dict[str, str] = {}
    body: dict[str, Any] = {"name": post.get("name", "").strip()}
    # one select for both: a model version's id, or "pipeline:<id>" for a pipeline version
    chosen = post.get("version", "")
    if chosen.startswith(PIPELINE_PREFIX):
        body["pipeline_version"] = chosen.removeprefix(PIPELINE_PREFIX) or None
    else:
        body["version"] = chosen or None
    kind = post.get("target_kind", "filter")
    if kind == "group":
        body["target"] = {"group": post.get("target_group") or None}
    elif kind == "devices":
        uids = [u for u in post.get("target_devices", "").replace(",", " ").split() if u]
        found = dict(Device.objects.filter(uid__in=uids).values_list("uid", "pk"))
        unknown = [u for u in uids if u not in found]
        if unknown:
            errors["target.devices"] = f"unknown devices: {', '.join(unknown[:10])}"
        body["target"] = {"devices": [found[u] for u in uids if u in found]}
    else:
        query = QueryDict(post.get("target_filter", "").strip().lstrip("?"))
        body["target"] = {"filter": {k: (v if len(v) > 1 else v[0]) for k, v in query.lists() if any(v)}}
    waves: list[dict[str, Any]] = []
    approval_before = post.get("approval_before_wave", "")
    for i in range(WAVE_ROWS):
        raw = post.get(f"wave{i}_amount", "").strip()
        if not raw:
            continue
        try:
            amount = _number(raw)
        except ValueError:
            errors[f"waves.{len(waves)}"] = f"{raw!r} is not a number"
            continue
        wave: dict[str, Any] = {"count" if post.get(f"wave{i}_unit") == "count" else "percent": amount}
        for pin in ("site", "tier", "group"):
            if post.get(f"wave{i}_{pin}"):
                wave[pin] = post[f"wave{i}_{pin}"]
        if approval_before == str(i):
            wave["approval"] = True
        waves.append(wave)
    body["waves"] = waves
    body["install_gate"] = {
        k: v
        for k in ("min_success_pct", "max_failure_pct", "min_finished")
        if (v := post.get(f"install_{k}", "").strip())
    }
    if post.get("health_enabled"):
        keys = ("max_p95_latency_ratio", "max_error_rate", "max_p95_ms", "max_p99_ms", "min_samples", "bake_seconds")
        body["health_gate"] = {k: v for k in keys if (v := post.get(f"health_{k}", "").strip())}
    for key in ("rate_per_minute", "queued_timeout_seconds", "offline_devices"):
        if post.get(key, "").strip():
            body[key] = post[key].strip()
    body["seed"] = post.get("seed") or None
    if body["seed"] is None:
        body.pop("seed")
    return body, errors


def _flatten(errors: Any, prefix: str = "") -> dict[str, str]:
    """DRF's nested errors as {"health_gate.max_error_rate": "reason"}."""
    out: dict[str, str] = {}
    if isinstance(errors, dict):
        for key, value in errors.items():
            name = prefix if key == "non_field_errors" and prefix else f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
    elif isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors):
        out[prefix or "plan"] = " ".join(str(e) for e in errors)
    elif isinstance(errors, list):
        for index, value in enumerate(errors):
            out.update(_flatten(value, f"{prefix}.{index}" if prefix else str(index)))
    else:
        out[prefix or "plan"] = str(errors)
    return out


def _plan_defaults() -> dict[str, str]:
    """The wizard's pre-filled numbers: RolloutPlan's defaults, so the wizard and the API plan alike."""
    gate = InstallGate()
    return {
        "install_min_success_pct": f"{gate.min_success_pct:g}",
        "install_max_failure_pct": f"{gate.max_failure_pct:g}",
        "install_min_finished": str(gate.min_finished),
        "health_min_samples": str(DEFAULT_MIN_SAMPLES),
        "health_bake_seconds": str(DEFAULT_BAKE_SECONDS),
        "rate_per_minute": str(settings.ROLLOUT_DEFAULT_RATE_PER_MINUTE),
        "queued_timeout_seconds": str(DEFAULT_QUEUED_TIMEOUT_SECONDS),
        "offline_devices": DEFAULT_OFFLINE_DEVICES,
    }


def _wizard_context(post: QueryDict | None) -> dict[str, Any]:
    values = post or QueryDict(mutable=True)
    if post is None:
        values = QueryDict(mutable=True)
        values.update({"target_kind": "filter", "wave0_amount": "5", "wave1_amount": "25", "wave2_amount": "100"})
        values.update(_plan_defaults())
        # the health gate is on, with the thresholds plan.py suggests (the API has no default threshold)
        values.update({f"health_{k}": f"{v:g}" for k, v in SUGGESTED_HEALTH_GATE.items()})
        values["health_enabled"] = "1"
    seed = values.get("seed") or str(random.SystemRandom().randrange(2**31))
    return {
        "v": values,
        "seed": seed,
        "versions": ModelVersion.objects.filter(status="published")
        .select_related("model")
        .order_by("model__name", "-number"),
        "pipeline_versions": [
            {"value": f"{PIPELINE_PREFIX}{pv.pk}", "label": f"{pv.pipeline.name} v{pv.number}"}
            for pv in PipelineVersion.objects.filter(status="published")
            .select_related("pipeline")
            .order_by("pipeline__name", "-number")
        ],
        "groups": DeviceGroup.objects.order_by("name"),
        "sites": Site.objects.order_by("name"),
        "tiers": Tier.choices,
        "wave_rows": [
            {
                "i": i,
                "amount": values.get(f"wave{i}_amount", ""),
                "unit": values.get(f"wave{i}_unit", "percent"),
                "site": values.get(f"wave{i}_site", ""),
                "tier": values.get(f"wave{i}_tier", ""),
                "group": values.get(f"wave{i}_group", ""),
            }
            for i in range(WAVE_ROWS)
        ],
    }


@role_required(OPERATOR)
def rollout_new(request: HttpRequest) -> HttpResponse:
    """GET: the empty plan. POST `step=preview`: validate and show wave sizes and excluded devices (writes
    nothing). POST `step=start`: validate again, create and start in one transaction, go to its page."""
    if request.method != "POST":
        return render(request, "frontend/rollout_new.html", _wizard_context(None))
    context = _wizard_context(request.POST)
    body, errors = plan_payload(request.POST)
    body.setdefault("seed", context["seed"])
    serializer = RolloutPlanSerializer(data=body)
    if not serializer.is_valid():
        errors = {**_flatten(serializer.errors), **errors}
    if errors:
        context["errors"] = errors
        return render(request, "frontend/rollout_new.html", context, status=400)
    version, name, plan = serializer.to_plan()
    try:
        if request.POST.get("step") == "start":
            rollout = rollout_create_and_start(actor=actor_of(request), version=version, plan=plan, name=name)
            messages.success(request, f"Rollout {rollout.pk} of {version} started.")
            return redirect("rollout-page", rollout_id=rollout.pk)
        preview = context["preview"] = rollout_preview(version=version, plan=plan).summary()
        context["preview_waves"] = [
            {"size": size, "online": online}
            for size, online in zip(preview["wave_sizes"], preview["wave_online"], strict=True)
        ]
        context["version"] = version
    except (PlanInvalid, DeploymentRefused) as exc:
        context["errors"] = {exc.field or "plan": exc.reason}
        return render(request, "frontend/rollout_new.html", context, status=400)
    return render(request, "frontend/rollout_new.html", context)


# --- detail ---------------------------------------------------------------------------------------
@role_required(VIEWER)
def rollout_detail(request: HttpRequest, rollout_id: int) -> HttpResponse:
    """The live page: the first state is rendered here; `/ws/rollouts/{id}/` keeps it current."""
    rollout = get_object_or_404(Rollout.objects.select_related("model", "pipeline", *DEPLOYABLE_RELATED), pk=rollout_id)
    progress = rollout_progress(rollout.pk) or {}
    can_operate = has_role(request.user, OPERATOR)
    current = next((w for w in progress.get("waves", []) if w["index"] == rollout.current_wave), None)
    actions = []
    if can_operate:
        actions = [
            {"verb": verb, "confirm": text}
            for verb, (_service, to, text) in ACTIONS.items()
            if to in ROLLOUT_TRANSITIONS[rollout.status]
        ]
        if rollout_can_approve(rollout.status, current["status"] if current else None):
            actions.insert(0, {"verb": "approve", "confirm": f"Approve wave {current['index'] + 1}?"})
    failed_page, failed_keep = paginate(request, rollout_failed_jobs(rollout))
    context = {
        "rollout": rollout,
        "progress": progress,
        "series": rollout_cohort_series(rollout),
        "gate_series": gate_check_series(rollout),
        "gates": [gate_evaluation_row(g) for g in rollout_gate_timeline(rollout.pk)],
        "excluded": rollout_excluded(rollout, limit=50),
        "artifact_transfer": artifact_transfer_summary(rollout),
        "can_operate": can_operate,
        "failed": failed_page,
        "failed_keep": failed_keep,
        "actions": actions,
    }
    return render(request, "frontend/rollout_detail.html", context)


@role_required(VIEWER)
def rollout_failed_export(request: HttpRequest, rollout_id: int) -> StreamingHttpResponse:
    """Every failed, timed-out or rejected device of the rollout (the page's table, all pages) as CSV."""
    rollout = get_object_or_404(Rollout, pk=rollout_id)
    rows = (failed_device_row(job) for job in rollout_failed_jobs(rollout).iterator(chunk_size=500))
    response = StreamingHttpResponse(csv_lines(FAILED_DEVICE_COLUMNS, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="fogdeck-rollout-{rollout.pk}-failed-devices.csv"'
    return response


@require_POST
@role_required(OPERATOR)
def rollout_action(request: HttpRequest, rollout_id: int, verb: str) -> HttpResponse:
    """Pause, resume, abort, roll back or approve, through the same services as the API (audited there)."""
    rollout = get_object_or_404(Rollout, pk=rollout_id)
    service = rollout_approve if verb == "approve" else ACTIONS[verb][0] if verb in ACTIONS else None
    if service is None:
        return HttpResponse(f"unknown action {verb!r}", status=404)
    reason = request.POST.get("reason", "").strip()[:500]
    try:
        service(actor=actor_of(request), rollout=rollout, reason=reason)
    except (InvalidTransition, DeploymentRefused, PlanInvalid) as exc:
        messages.error(request, f"Could not {verb}: {exc}")
    else:
        messages.success(request, f"Rollout {rollout.pk}: {verb} done.")
    return redirect("rollout-page", rollout_id=rollout.pk)
