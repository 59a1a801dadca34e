"""The operator UI: server-rendered pages. Views parse, check the role, call one service or read, render.

Every page needs the viewer role; every POST needs operator (the templates hide the controls from
viewers, and the server refuses them anyway).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import plotly
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import Count, Max, Q
from django.http import FileResponse, HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.actors import Actor
from audit.api.filters import AuditEntryFilter
from audit.models import AuditEntry
from core.roles import OPERATOR, VIEWER, has_role
from deployments.models import ROLLOUT_ACTIVE
from deployments.selectors import rollout_list_rows
from fleet.filters import DeviceFilter
from fleet.models import ConnectionStatus, Device, DeviceGroup, GroupKind, Site, Tier
from fleet.services import DynamicGroupMembership
from models_registry.exceptions import ArtifactTooLarge
from models_registry.models import ModelVersion, RegisteredModel
from models_registry.selectors import version_compatibility, version_history
from models_registry.services import model_version_create
from telemetry.selectors import device_recent_points, version_latency_series, version_profile_summary

from .forms import BulkDeviceForm, VersionUploadForm
from .services import devices_add_tag, devices_add_to_group

PAGE_SIZE = 50
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
DEVICE_CSV_COLUMNS = (
    "uid",
    "name",
    "site",
    "tier",
    "arch",
    "cpu",
    "memory_mb",
    "accelerator",
    "status",
    "last_seen",
    "agent_version",
    "runtimes",
    "tags",
)

View = Callable[..., HttpResponse]


def role_required(role: str) -> Callable[[View], View]:
    """Signed in (else the login page) and at least `role` (else 403)."""

    def decorate(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not has_role(request.user, role):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def _page(request: HttpRequest, queryset: Any) -> tuple[Page, str]:
    """The requested page and the query string of the other parameters (filters stay in the URL)."""
    page = Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    keep = _filters(request).urlencode()
    return page, keep


def _filters(request: HttpRequest) -> QueryDict:
    """The query string without empty values (an empty multiple-choice value is not "any" to django-filter)."""
    params = QueryDict(mutable=True)
    for key, values in request.GET.lists():
        kept = [v for v in values if v.strip()]
        if kept and key != "page":
            params.setlist(key, kept)
    return params


def _actor(request: HttpRequest) -> Actor:
    return Actor.for_user(request.user)


# --- assets ---------------------------------------------------------------------------------------
@require_GET
def plotly_js(request: HttpRequest) -> FileResponse:
    """plotly.js from the installed plotly package: no CDN, works offline. The URL carries its version."""
    response = FileResponse(PLOTLY_JS.open("rb"), content_type="text/javascript")
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


# --- fleet ----------------------------------------------------------------------------------------
@role_required(VIEWER)
def overview(request: HttpRequest) -> HttpResponse:
    """Fleet overview: devices by tier, site and online state, a map of sites, stale heartbeats."""
    online = Q(status=ConnectionStatus.ONLINE)
    by_tier = {
        row["tier"]: row
        for row in Device.objects.values("tier").annotate(total=Count("id"), online=Count("id", filter=online))
    }
    tiers = [
        {
            "value": value,
            "label": label,
            "total": by_tier.get(value, {}).get("total", 0),
            "online": by_tier.get(value, {}).get("online", 0),
        }
        for value, label in Tier.choices
    ]
    sites = list(
        Site.objects.annotate(
            total=Count("devices"), online=Count("devices", filter=Q(devices__status=ConnectionStatus.ONLINE))
        ).order_by("name")
    )
    site_map = [
        {"id": s.pk, "name": s.name, "lat": s.latitude, "lon": s.longitude, "total": s.total, "online": s.online}
        for s in sites
    ]
    total = sum(t["total"] for t in tiers)
    online_count = sum(t["online"] for t in tiers)
    context = {
        "tiers": tiers,
        "sites": sites,
        "site_map": site_map,
        "total": total,
        "online": online_count,
        "offline": total - online_count,
        "stale": Device.objects.stale().select_related("site").order_by("last_seen")[:20],
        "stale_count": Device.objects.stale().count(),
        "active_rollouts": rollout_list_rows(ROLLOUT_ACTIVE)[:10],
    }
    return render(request, "frontend/overview.html", context)


@role_required(VIEWER)
def device_list(request: HttpRequest) -> HttpResponse:
    """Devices filtered by `fleet.filters.DeviceFilter` (the API's filters, kept in the URL), paginated."""
    params = _filters(request)
    filterset = DeviceFilter(params, queryset=Device.objects.with_inventory())
    queryset = filterset.qs if filterset.is_valid() else Device.objects.none()
    page, keep = _page(request, queryset)
    context = {
        "filter": filterset,
        "page": page,
        "keep": keep,
        "export_query": params.urlencode(),
        "groups": DeviceGroup.objects.filter(kind=GroupKind.STATIC).order_by("name"),
        "can_operate": has_role(request.user, OPERATOR),
        "filtered": bool(params),
    }
    return render(request, "frontend/device_list.html", context)


@require_POST
@role_required(OPERATOR)
def device_bulk(request: HttpRequest) -> HttpResponse:
    """Tag the ticked devices or add them to a static group, then back to the same filtered page."""
    back = request.POST.get("next") or "/devices/"
    if not back.startswith("/devices/"):
        back = "/devices/"
    form = BulkDeviceForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect(back)
    devices = list(Device.objects.with_inventory().filter(pk__in=form.cleaned_data["devices"]))
    if not devices:
        messages.error(request, "Tick at least one device.")
        return redirect(back)
    if form.cleaned_data["action"] == "tag":
        tag = form.cleaned_data["tag"]
        changed = devices_add_tag(actor=_actor(request), devices=devices, tag=tag)
        messages.success(
            request, f"Tagged {len(changed)} device(s) with “{tag}” ({len(devices) - len(changed)} had it)."
        )
    else:
        group = form.cleaned_data["group"]
        try:
            added = devices_add_to_group(actor=_actor(request), devices=devices, group=group)
        except DynamicGroupMembership:
            messages.error(request, f"{group.name} is a dynamic group: its filter decides its members.")
            return redirect(back)
        messages.success(request, f"Added {len(added)} device(s) to {group.name}.")
    return redirect(back)


@role_required(VIEWER)
def device_export(request: HttpRequest) -> StreamingHttpResponse:
    """Every device matching the list's filters, as CSV."""
    filterset = DeviceFilter(_filters(request), queryset=Device.objects.with_inventory())
    queryset = filterset.qs if filterset.is_valid() else Device.objects.none()

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(DEVICE_CSV_COLUMNS)
        for d in queryset.iterator(chunk_size=1000):
            runtimes = " ".join(f"{r['name']}={r['version']}" for r in d.runtime_list)
            writer.writerow(
                [
                    d.uid,
                    d.name,
                    d.site.name,
                    d.tier,
                    d.arch,
                    d.cpu,
                    d.memory_mb,
                    d.accelerator,
                    d.status,
                    d.last_seen.isoformat() if d.last_seen else "",
                    d.agent_version,
                    runtimes,
                    " ".join(d.tag_list),
                ]
            )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate(0)

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="fogdeck-devices.csv"'
    return response


@role_required(VIEWER)
def device_detail(request: HttpRequest, device_id: int) -> HttpResponse:
    device = get_object_or_404(Device.objects.with_inventory(), pk=device_id)
    state = device.reported_state or {}
    installed = [
        {"model": name, "version": entry.get("version"), "slot": entry.get("slot")}
        for name, entry in sorted((state.get("active") or {}).items())
        if isinstance(entry, dict)
    ]
    context = {
        "device": device,
        "installed": installed,
        "slots": state.get("slots") or {},
        "hardware": state.get("hardware") or {},
        "points": device_recent_points(device),
        "groups": device.static_groups.order_by("name"),
        "history": AuditEntry.objects.for_object("device", device.pk).order_by("-id")[:20],
    }
    return render(request, "frontend/device_detail.html", context)


# --- models ---------------------------------------------------------------------------------------
@role_required(VIEWER)
def model_list(request: HttpRequest) -> HttpResponse:
    models_qs = RegisteredModel.objects.annotate(
        version_count=Count("versions"),
        published_count=Count("versions", filter=Q(versions__status="published")),
        latest=Max("versions__number"),
    ).order_by("name")
    if request.GET.get("task"):
        models_qs = models_qs.filter(task=request.GET["task"])
    page, keep = _page(request, models_qs)
    tasks = RegisteredModel.objects.exclude(task="").order_by("task").values_list("task", flat=True).distinct()
    return render(request, "frontend/model_list.html", {"page": page, "keep": keep, "tasks": tasks})


@role_required(VIEWER)
def model_detail(request: HttpRequest, model_id: int) -> HttpResponse:
    """A model, its versions, and one selected version in depth (?version=N, default: the newest)."""
    model = get_object_or_404(RegisteredModel.objects.prefetch_related("aliases__version"), pk=model_id)
    versions = list(model.versions.with_related().order_by("-number"))
    selected: ModelVersion | None = None
    if versions:
        wanted = request.GET.get("version")
        selected = next((v for v in versions if str(v.number) == wanted), versions[0])
    context: dict[str, Any] = {
        "model": model,
        "versions": versions,
        "selected": selected,
        "aliases": model.aliases.all(),
        "can_operate": has_role(request.user, OPERATOR),
        "upload_form": VersionUploadForm(),
    }
    if selected is not None:
        context |= {
            "aliases_of_selected": [a.name for a in model.aliases.all() if a.version_id == selected.pk],
            "compatibility": version_compatibility(selected, Device.objects.active()),
            "history": version_history(selected),
            "series": version_latency_series(model.name, selected.number),
            "profiles": version_profile_summary(model.name, selected.number),
        }
    return render(request, "frontend/model_detail.html", context)


@require_POST
@role_required(OPERATOR)
def model_version_upload(request: HttpRequest, model_id: int) -> HttpResponse:
    """Upload an artifact as the model's next draft version (audited by `model_version_create`)."""
    model = get_object_or_404(RegisteredModel, pk=model_id)
    form = VersionUploadForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        try:
            version = model_version_create(
                actor=_actor(request),
                model=model,
                artifact=data["artifact"],
                format=data["format"],
                framework=data["framework"],
                label=data["label"],
                requirements={
                    "runtime": data["runtime"],
                    "min_runtime_version": data["min_runtime_version"],
                    "min_memory_mb": data["min_memory_mb"],
                },
                created_by=request.user,
            )
        except (ValidationError, ArtifactTooLarge) as exc:
            messages.error(request, f"Upload refused: {'; '.join(getattr(exc, 'messages', [str(exc)]))}")
        else:
            messages.success(request, f"Uploaded {version} as a draft.")
            return redirect(f"/models/{model.pk}/?version={version.number}")
    else:
        messages.error(request, "Upload refused: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    return redirect(f"/models/{model.pk}/")


# --- audit ----------------------------------------------------------------------------------------
@role_required(VIEWER)
def audit_list(request: HttpRequest) -> HttpResponse:
    """The audit trail with the API's filters; the CSV link exports every match through the API."""
    params = _filters(request)
    filterset = AuditEntryFilter(params, queryset=AuditEntry.objects.order_by("-id"))
    queryset = filterset.qs if filterset.is_valid() else AuditEntry.objects.none()
    page, keep = _page(request, queryset)
    csv_query = urlencode([("format", "csv"), *params.items()])
    return render(
        request,
        "frontend/audit_list.html",
        {"filter": filterset, "page": page, "keep": keep, "csv_url": f"/api/v1/audit/?{csv_query}"},
    )
