"""The pipeline pages: `/pipelines/` (list) and `/pipelines/{id}/` (the chain and per-stage p95 latency)."""

from __future__ import annotations

import datetime as dt

from django.db.models import Count, Max, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from core.roles import VIEWER
from models_registry.models import Pipeline, PipelineVersion
from telemetry.selectors import pipeline_stage_latency

from .web import paginate, role_required

LATENCY_WINDOW = dt.timedelta(hours=1)


@role_required(VIEWER)
def pipeline_list(request: HttpRequest) -> HttpResponse:
    pipelines = Pipeline.objects.annotate(
        version_count=Count("versions"),
        published_count=Count("versions", filter=Q(versions__status="published")),
        latest=Max("versions__number"),
    ).order_by("name")
    page, keep = paginate(request, pipelines)
    return render(request, "frontend/pipeline_list.html", {"page": page, "keep": keep})


@role_required(VIEWER)
def pipeline_detail(request: HttpRequest, pipeline_id: int) -> HttpResponse:
    pipeline = get_object_or_404(Pipeline, pk=pipeline_id)
    versions = list(PipelineVersion.objects.with_stages().filter(pipeline=pipeline).order_by("-number"))
    chosen = versions[0] if versions else None
    if request.GET.get("version", "").isdigit():
        chosen = next((v for v in versions if v.number == int(request.GET["version"])), chosen)
    stages, end_to_end = [], None
    if chosen is not None:
        latency = pipeline_stage_latency(chosen, since=timezone.now() - LATENCY_WINDOW)
        end_to_end = latency.get("end_to_end")
        stages = [{"stage": stage, "latency": latency.get(stage.name)} for stage in chosen.ordered_stages()]
    context = {
        "pipeline": pipeline,
        "versions": versions,
        "chosen": chosen,
        "stages": stages,
        "end_to_end": end_to_end,
        "window_minutes": int(LATENCY_WINDOW.total_seconds() // 60),
    }
    return render(request, "frontend/pipeline_detail.html", context)
