from __future__ import annotations

# one class for every state machine (core/transitions.py)
from core.transitions import InvalidTransition

__all__ = ["ArtifactTooLarge", "InvalidTransition", "SigningKeyError", "VersionImmutable"]


class VersionImmutable(InvalidTransition):
    """Only drafts may be edited: a published (or later) version's artifact and metadata are fixed."""


class ArtifactTooLarge(Exception):
    """The artifact passed MAX_ARTIFACT_SIZE_MB."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(f"the artifact is larger than the limit of {limit_bytes // (1024 * 1024)} MB")


class SigningKeyError(Exception):
    """No usable signing key (bad SIGNING_KEY, unreadable key directory)."""
