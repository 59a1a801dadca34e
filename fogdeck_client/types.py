"""The shapes the client returns: the fields of the API's schema (`manage.py spectacular`) that callers use.
`tests/fogdeck_client/test_schema.py` checks each key against the OpenAPI schema, so a rename breaks a test."""

from __future__ import annotations

from typing import Any, Generic, TypedDict, TypeVar

T = TypeVar("T")


class Page(TypedDict, Generic[T]):
    count: int
    next: str | None
    previous: str | None
    results: list[T]


class Device(TypedDict, total=False):
    id: int
    uid: str
    name: str
    site: int | None
    tier: str
    status: str
    tags: list[str]
    last_seen: str | None


class RegisteredModel(TypedDict, total=False):
    id: int
    name: str
    task: str


class ModelVersion(TypedDict, total=False):
    id: int
    model: int
    model_name: str
    number: int
    status: str
    size: int
    sha256: str


class Wave(TypedDict, total=False):
    index: int
    size: int
    status: str
    jobs: dict[str, int]
    rollbacks: dict[str, int]


class Rollout(TypedDict, total=False):
    id: int
    name: str
    model_name: str | None
    version_number: int | None
    status: str
    status_reason: str
    current_wave: int | None


class RolloutDetail(Rollout, total=False):
    """One rollout (GET /rollouts/{id}/ and every action's answer): the list leaves waves and plan out."""

    waves: list[Wave]
    plan: dict[str, Any]


class RolloutPreview(TypedDict):
    eligible: int
    excluded_count: int
    wave_sizes: list[int]
    excluded_reasons: dict[str, int]
    excluded: list[dict[str, Any]]


class AuditEntry(TypedDict, total=False):
    id: int
    created_at: str
    actor: str
    action: str
    object_type: str
    object_id: str
    object_repr: str
    request_id: str
