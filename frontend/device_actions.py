"""Device list actions that are not per-row: save the list's filters as a dynamic group.

The API's rules decide: the role is GroupViewSet's for creating a group, the body is checked by
GroupSerializer, the write is `group_create` (audited there)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from core.roles import VIEWER, has_role
from fleet.api.serializers import GroupSerializer
from fleet.models import GroupKind
from fleet.services import group_create

from .views import SAVE_GROUP_ROLE
from .web import actor_of, role_required


def stored_filter(query: str) -> dict[str, object]:
    """The list's query string as a dynamic group's filter: one value as it is, several as a list."""
    params = QueryDict(query.lstrip("?"))
    return {
        key: (kept if len(kept) > 1 else kept[0])
        for key, values in params.lists()
        if key != "page" and (kept := [v for v in values if v.strip()])
    }


@require_POST
@role_required(VIEWER)
def device_save_group(request: HttpRequest) -> HttpResponse:
    """Save the device list's current filters as a dynamic group, then show its members."""
    if not has_role(request.user, SAVE_GROUP_ROLE):
        raise PermissionDenied
    query = request.POST.get("query", "")[:4000]
    body = {"name": request.POST.get("name", "").strip(), "kind": GroupKind.DYNAMIC, "filter": stored_filter(query)}
    serializer = GroupSerializer(data=body)
    if not serializer.is_valid():
        reasons = "; ".join(f"{field}: {' '.join(map(str, errors))}" for field, errors in serializer.errors.items())
        messages.error(request, f"Group not saved: {reasons}")
        return redirect(f"/devices/?{QueryDict(query.lstrip('?')).urlencode()}")
    group = group_create(actor=actor_of(request), **serializer.validated_data)
    messages.success(request, f"Saved dynamic group “{group.name}”: its members follow these filters.")
    return redirect(f"/devices/?group={group.pk}")
