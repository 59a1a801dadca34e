from __future__ import annotations


class ResolveRefused(ValueError):
    """The request names something that does not exist (unknown model, alias or site)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
