from __future__ import annotations


class InvalidTransition(Exception):
    """The version's current status does not allow the requested change; the message says why."""


class VersionImmutable(InvalidTransition):
    """Only drafts may be edited: a published (or later) version's artifact and metadata are fixed."""


class ArtifactTooLarge(Exception):
    """The artifact passed MAX_ARTIFACT_SIZE_MB."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(f"the artifact is larger than the limit of {limit_bytes // (1024 * 1024)} MB")


class SigningKeyError(Exception):
    """No usable signing key (bad SIGNING_KEY, unreadable key directory)."""
