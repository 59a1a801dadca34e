from __future__ import annotations

# one class for every state machine (core/transitions.py): the API answers it with 409 wherever it comes from
from core.transitions import InvalidTransition

__all__ = ["DeploymentRefused", "InvalidTransition", "PlanInvalid"]


class DeploymentRefused(Exception):
    """A deployment cannot be created; the message says why (version state, compatibility, conflict)."""

    def __init__(self, reason: str, *, field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class PlanInvalid(Exception):
    """A rollout plan cannot be accepted (400): `field` names the part of the request that is wrong."""

    def __init__(self, reason: str, *, field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
