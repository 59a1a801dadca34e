"""Who did something: a person, a device, or a system component (Celery, the bridge, a gate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ActorKind = Literal["user", "device", "system"]


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    name: str
    user_id: int | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def for_user(cls, user: Any) -> Actor:
        return cls(kind="user", name=user.get_username(), user_id=user.pk)

    @classmethod
    def system(cls, component: str) -> Actor:
        return cls(kind="system", name=component)

    @classmethod
    def device(cls, uid: str) -> Actor:
        return cls(kind="device", name=uid)
