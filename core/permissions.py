from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission

from . import roles


def required_role(view: Any, *, action: str | None, method: str) -> str:
    """The role `RolePermission` demands for `action` (a viewset action name) and HTTP `method` on `view` (a
    view or its class). The UI asks this too, so a page never lets a role do what the API refuses it."""
    action_roles: dict[str, str] = getattr(view, "action_roles", {})
    if action in action_roles:
        return action_roles[action]
    if method.upper() in SAFE_METHODS:
        return roles.VIEWER
    return getattr(view, "write_role", roles.ADMIN)


class RolePermission(BasePermission):
    """Reads need the viewer role; writes need the view's `write_role` (admin unless it says otherwise).

    A view can narrow it per action with `action_roles = {"start": "operator"}`.
    """

    message = "Your role does not allow this action."

    def has_permission(self, request: Any, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            # DRF checks throttles after permissions: without this an anonymous caller would never meet
            # the anonymous rate (every one of its requests is refused here first)
            view.check_throttles(request)
            return False
        required = required_role(view, action=getattr(view, "action", None), method=request.method)
        return roles.has_role(request.user, required)
