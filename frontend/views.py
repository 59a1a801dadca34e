"""The operator UI: server-rendered pages. Views parse, check the role, call one service or read, render.

Every page needs the viewer role; every POST needs the role the API demands for the same change
(`core.permissions.required_role` on the API's view: one rule for both). The templates hide the controls
from roles that may not use them, and the server refuses them anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import plotly
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Max, Q
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from audit.api.filters import AuditEntryFilter
from audit.models import AuditEntry
from core.errors import flatten_errors
from core.permissions import required_role
from core.roles import ADMIN, VIEWER, has_role
from deployments.models import ROLLOUT_ACTIVE
from deployments.selectors import rollout_list_rows
from fleet.api.views import DeviceViewSet, GroupViewSet
from fleet.device_csv import device_csv_lines
from fleet.filters import DeviceFilter
from fleet.models import ConnectionStatus, Device, DeviceGroup, GroupKind, Site, Tier
from fleet.services import DynamicGroupMembership, devices_add_tag, group_add_members
from models_registry.api.serializers import VersionWriteSerializer
from models_registry.api.views import ModelVersionViewSet, RegisteredModelViewSet
from models_registry.exceptions import ArtifactTooLarge
from models_registry.models import ArtifactFormat, Framework, ModelVersion, RegisteredModel
from models_registry.selectors import version_compatibility, version_history
from models_registry.services import model_version_create
from models_registry.uploads import ArtifactUploadHandler
from telemetry.selectors import device_recent_points, fleet_latency, version_latency_series, version_profile_summary

from .forms import BulkDeviceForm
from .web import actor_of, paginate, request_filters, role_required

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


SAVE_GROUP_ROLE = required_role(GroupViewSet, action="create", method="POST")
# the model page's version buttons (frontend/model_actions.py), with the roles the API asks for them
VERSION_ACTION_ROLES = {
    "publish": required_role(ModelVersionViewSet, action="publish", method="POST"),
    "revoke": required_role(ModelVersionViewSet, action="revoke", method="POST"),
    "alias-set": required_role(RegisteredModelViewSet, action="alias_set", method="PUT"),
    "alias-delete": required_role(RegisteredModelViewSet, action="alias_delete", method="DELETE"),
}
# What each UI change is in the API, and so the role it needs (the API's rule, asked once at import).
BULK_ROLES = {
    "tag": required_role(DeviceViewSet, action="partial_update", method="PATCH"),
    "group": required_role(GroupViewSet, action="members", method="POST"),
}
UPLOAD_ROLE = required_role(ModelVersionViewSet, action="create", method="POST")


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
        "latency": fleet_latency(),
    }
    return render(request, "frontend/overview.html", context)


@role_required(VIEWER)
@require_GET
def overview_latency(request: HttpRequest) -> JsonResponse:
    """The overview's latency card as JSON, re-read by the page every few seconds."""
    response = JsonResponse(fleet_latency())
    response["Cache-Control"] = "no-store"
    return response


@role_required(VIEWER)
def device_list(request: HttpRequest) -> HttpResponse:
    """Devices filtered by `fleet.filters.DeviceFilter` (the API's filters, kept in the URL), paginated."""
    params = request_filters(request)
    filterset = DeviceFilter(params, queryset=Device.objects.with_inventory())
    queryset = filterset.qs if filterset.is_valid() else Device.objects.none()
    page, keep = paginate(request, queryset)
    context = {
        "filter": filterset,
        "page": page,
        "keep": keep,
        "export_query": params.urlencode(),
        "groups": DeviceGroup.objects.filter(kind=GroupKind.STATIC).order_by("name"),
        "can_tag": has_role(request.user, BULK_ROLES["tag"]),
        "can_group": has_role(request.user, BULK_ROLES["group"]),
        "can_save_group": has_role(request.user, SAVE_GROUP_ROLE),
        "filtered": bool(params),
    }
    return render(request, "frontend/device_list.html", context)


@require_POST
@role_required(VIEWER)
def device_bulk(request: HttpRequest) -> HttpResponse:
    """Tag the ticked devices, or every device the list's filters match (`scope=matching`: all pages), or add
    them to a static group, then back to the same filtered page."""
    if not has_role(request.user, BULK_ROLES.get(request.POST.get("action", ""), ADMIN)):
        raise PermissionDenied
    back = request.POST.get("next") or "/devices/"
    if not back.startswith("/devices/"):
        back = "/devices/"
    form = BulkDeviceForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect(back)
    if form.cleaned_data["scope"] == "matching":
        filterset = DeviceFilter(QueryDict(form.cleaned_data["query"].lstrip("?")), queryset=Device.objects.all())
        if not filterset.is_valid():
            messages.error(request, "The list's filters are not valid; nothing changed.")
            return redirect(back)
        devices = list(Device.objects.with_inventory().filter(pk__in=filterset.qs.values("pk")))
    else:
        devices = list(Device.objects.with_inventory().filter(pk__in=form.cleaned_data["devices"]))
    if not devices:
        messages.error(request, "Tick at least one device.")
        return redirect(back)
    if form.cleaned_data["action"] == "tag":
        tag = form.cleaned_data["tag"]
        changed = devices_add_tag(actor=actor_of(request), devices=devices, tag=tag)
        messages.success(
            request, f"Tagged {len(changed)} device(s) with “{tag}” ({len(devices) - len(changed)} had it)."
        )
    else:
        group = form.cleaned_data["group"]
        try:
            added = group_add_members(actor=actor_of(request), group=group, devices=devices)
        except DynamicGroupMembership:
            messages.error(request, f"{group.name} is a dynamic group: its filter decides its members.")
            return redirect(back)
        messages.success(request, f"Added {len(added)} device(s) to {group.name}.")
    return redirect(back)


@role_required(VIEWER)
def device_export(request: HttpRequest) -> StreamingHttpResponse:
    """Every device matching the list's filters, as CSV in the importer's format (fleet/device_csv.py)."""
    filterset = DeviceFilter(request_filters(request), queryset=Device.objects.with_inventory())
    queryset = filterset.qs if filterset.is_valid() else Device.objects.none()

    response = StreamingHttpResponse(device_csv_lines(queryset), content_type="text/csv; charset=utf-8")
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
    page, keep = paginate(request, models_qs)
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
        "can_upload": has_role(request.user, UPLOAD_ROLE),
        "formats": ArtifactFormat.choices,
        "frameworks": Framework.choices,
    }
    if selected is not None:
        context |= {
            "aliases_of_selected": [a.name for a in model.aliases.all() if a.version_id == selected.pk],
            "can": {
                verb.replace("-", "_"): has_role(request.user, role) for verb, role in VERSION_ACTION_ROLES.items()
            },
            "compatibility": version_compatibility(selected, Device.objects.active()),
            "history": version_history(selected),
            "series": version_latency_series(model.name, selected.number),
            "profiles": version_profile_summary(model.name, selected.number),
        }
    return render(request, "frontend/model_detail.html", context)


@csrf_exempt  # checked below, once the upload handler is in place (reading the token reads the body)
@require_POST
@role_required(UPLOAD_ROLE)
def model_version_upload(request: HttpRequest, model_id: int) -> HttpResponse:
    """Upload an artifact as the model's next draft version: the API's path (streamed, hashed and size-limited
    by ArtifactUploadHandler as it arrives, validated by VersionWriteSerializer, stored and audited by
    `model_version_create`). The role is checked before a byte of the body is read."""
    model = get_object_or_404(RegisteredModel, pk=model_id)
    request.upload_handlers = [ArtifactUploadHandler(request)]
    try:
        return _version_upload(request, model)
    except ArtifactTooLarge as exc:  # raised by the handler mid-body: nothing was stored
        messages.error(request, f"Upload refused: {exc}")
        return redirect(f"/models/{model.pk}/")


@csrf_protect
def _version_upload(request: HttpRequest, model: RegisteredModel) -> HttpResponse:
    post = request.POST
    requirements = {
        key: value
        for key in ("runtime", "min_runtime_version", "min_memory_mb")
        if (value := post.get(key, "").strip())
    }
    data = {
        "artifact": request.FILES.get("artifact"),
        "format": post.get("format", ""),
        "framework": post.get("framework", ""),
        "label": post.get("label", "").strip(),
        "requirements": requirements,
    }
    payload = VersionWriteSerializer(data=data, model=model)
    if not payload.is_valid():
        reasons = "; ".join(f"{e['field']}: {e['reason']}" for e in flatten_errors(payload.errors))
        messages.error(request, f"Upload refused: {reasons}")
        return redirect(f"/models/{model.pk}/")
    try:
        version = model_version_create(
            actor=actor_of(request), model=model, created_by=request.user, **payload.to_service_kwargs()
        )
    except ValidationError as exc:
        messages.error(request, f"Upload refused: {'; '.join(exc.messages)}")
        return redirect(f"/models/{model.pk}/")
    messages.success(request, f"Uploaded {version} as a draft.")
    return redirect(f"/models/{model.pk}/?version={version.number}")


# --- audit ----------------------------------------------------------------------------------------
@role_required(VIEWER)
def audit_list(request: HttpRequest) -> HttpResponse:
    """The audit trail with the API's filters; the CSV link exports every match through the API."""
    params = request_filters(request)
    filterset = AuditEntryFilter(params, queryset=AuditEntry.objects.order_by("-id"))
    queryset = filterset.qs if filterset.is_valid() else AuditEntry.objects.none()
    page, keep = paginate(request, queryset)
    csv_query = urlencode([("format", "csv"), *params.items()])
    return render(
        request,
        "frontend/audit_list.html",
        {"filter": filterset, "page": page, "keep": keep, "csv_url": f"/api/v1/audit/?{csv_query}"},
    )
