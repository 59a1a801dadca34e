"""The three roles. Each is a Django group created by a migration; higher roles include lower ones."""

from __future__ import annotations

from typing import Any

VIEWER = "viewer"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
_RANK = {VIEWER: 1, OPERATOR: 2, ADMIN: 3}


def role_rank(user: Any) -> int:
    """0 for anonymous or role-less users, then viewer < operator < admin (superusers are admins)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return 0
    if user.is_superuser:
        return _RANK[ADMIN]
    names = getattr(user, "_fogdeck_role_names", None)
    if names is None:
        names = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        user._fogdeck_role_names = names  # cached for the request: permission checks run often
    return max((_RANK[name] for name in names), default=0)


def has_role(user: Any, role: str) -> bool:
    return role_rank(user) >= _RANK[role]
