"""Reads that depend on who is asking."""

from __future__ import annotations

from core.roles import OPERATOR, has_role


def shows_delivery_errors(user: object) -> bool:
    """Delivery error text (what a receiver's address did: refused, timed out, reset…) is for operators and
    admins; viewers see each delivery's status and response code. The API and the /webhooks/ page both ask."""
    return has_role(user, OPERATOR)
