"""The model page's version actions: publish, revoke and point an alias at the version (or remove one).

The same services as the API (audited there), the same roles (asked of the API's viewsets: publish and
revoke are admin, aliases operator), POST with the CSRF token; errors come back as messages on the page."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from core.roles import VIEWER, has_role
from models_registry.exceptions import InvalidTransition, SigningKeyError
from models_registry.models import ModelVersion
from models_registry.services import alias_delete, alias_set, model_version_publish, model_version_revoke

from .views import VERSION_ACTION_ROLES
from .web import actor_of, role_required


@require_POST
@role_required(VIEWER)
def model_version_action(request: HttpRequest, model_id: int, number: int, verb: str) -> HttpResponse:
    """Publish, revoke (a reason is required), `alias-set` (`alias` name → this version) or `alias-delete`."""
    if verb not in VERSION_ACTION_ROLES:
        return HttpResponse(f"unknown action {verb!r}", status=404)
    if not has_role(request.user, VERSION_ACTION_ROLES[verb]):
        raise PermissionDenied
    version = get_object_or_404(ModelVersion.objects.select_related("model"), model_id=model_id, number=number)
    model, actor = version.model, actor_of(request)
    try:
        if verb == "publish":
            model_version_publish(actor=actor, version=version)
            done = f"Published v{number}: signed, immutable and deployable."
        elif verb == "revoke":
            reason = request.POST.get("reason", "").strip()[:500]
            if not reason:
                raise ValueError("a revocation needs a reason")
            model_version_revoke(actor=actor, version=version, reason=reason)
            done = f"Revoked v{number}: never deployable again; its aliases are removed."
        elif verb == "alias-set":
            name = request.POST.get("alias", "").strip()
            alias_set(actor=actor, model=model, name=name, version=version)
            done = f"{model.name}@{name} now points at v{number}."
        else:
            name = request.POST.get("alias", "").strip()
            done = f"Removed {model.name}@{name}." if alias_delete(actor=actor, model=model, name=name) else ""
            if not done:
                raise ValueError(f"no alias {name!r}")
    except ValidationError as exc:
        messages.error(request, f"Could not {verb.replace('-', ' ')}: {'; '.join(exc.messages)}")
    except (InvalidTransition, SigningKeyError, ValueError) as exc:
        messages.error(request, f"Could not {verb.replace('-', ' ')}: {exc}")
    else:
        messages.success(request, done)
    return redirect(f"/models/{model.pk}/?version={number}")
