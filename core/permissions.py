from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission

from . import roles


class RolePermission(BasePermission):
    """Reads need the viewer role; writes need the view's `write_role` (admin unless it says otherwise).

    A view can narrow it per action with `action_roles = {"start": "operator"}`.
    """

    message = "Your role does not allow this action."

    def has_permission(self, request: Any, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        action = getattr(view, "action", None)
        action_roles: dict[str, str] = getattr(view, "action_roles", {})
        if action in action_roles:
            required = action_roles[action]
        elif request.method in SAFE_METHODS:
            required = roles.VIEWER
        else:
            required = getattr(view, "write_role", roles.ADMIN)
        return roles.has_role(request.user, required)
