"""FogdeckClient: one method per API operation the CLI and automation need; plain dicts typed as TypedDicts."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from .transport import ApiError, ProgressFn, Transport
from .types import AuditEntry, Device, ModelVersion, Page, RegisteredModel, Rollout, RolloutDetail, RolloutPreview

API = "/api/v1"


class RolloutOutcome(enum.IntEnum):
    """How a watched rollout ended; the values are the CLI's exit codes."""

    COMPLETED = 0
    ABORTED = 3
    ROLLED_BACK = 4
    PAUSED = 5  # waits for a person (a pause, or on_install_failure=pause): a script must not hang on it
    TIMED_OUT = 6  # the watch gave up; the rollout goes on


FINAL_STATUSES: dict[str, RolloutOutcome] = {
    "completed": RolloutOutcome.COMPLETED,
    "aborted": RolloutOutcome.ABORTED,
    "rolled_back": RolloutOutcome.ROLLED_BACK,
}


class FogdeckClient:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.http = Transport(url, token, timeout=timeout)

    # --- generic ---------------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        return self.http.request("GET", f"{API}{path}", params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.http.request("POST", f"{API}{path}", json_body=body if body is not None else {})

    def iterate(self, path: str, *, limit: int | None = None, **params: Any) -> Iterator[Any]:
        """Every item of a paginated list, following `next` (at most `limit`)."""
        page: Page[Any] = self.get(path, **params)
        seen = 0
        while True:
            for item in page["results"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            if not page.get("next"):
                return
            page = self.http.request("GET", cast(str, page["next"]))

    def whoami_check(self) -> None:
        """Raise ApiError (401) when the token is not accepted."""
        self.get("/devices/", page_size=1)

    # --- inventory -------------------------------------------------------------------------------
    def devices(self, *, limit: int | None = None, **filters: Any) -> list[Device]:
        """Devices matching the device-list filters (site, tier, status, tag, runtime, group, search …)."""
        return list(self.iterate("/devices/", limit=limit, **filters))

    # --- registry --------------------------------------------------------------------------------
    def model_by_name(self, name: str) -> RegisteredModel | None:
        results = self.get("/models/", name=name)["results"]
        return cast(RegisteredModel, results[0]) if results else None

    def model_create(self, name: str, *, task: str = "classification", description: str = "") -> RegisteredModel:
        return cast(RegisteredModel, self.post("/models/", {"name": name, "task": task, "description": description}))

    def upload_version(
        self,
        model: str,
        artifact: str | Path,
        *,
        format: str,
        framework: str = "other",
        requirements: Mapping[str, Any] | None = None,
        label: str = "",
        create_model: bool = False,
        task: str = "classification",
        progress: ProgressFn | None = None,
    ) -> ModelVersion:
        """Upload a draft version of `model` (by name; created first with `create_model`), streaming the file."""
        found = self.model_by_name(model)
        if found is None:
            if not create_model:
                raise ApiError(404, {"code": "not_found", "detail": f"no model named {model!r}"})
            found = self.model_create(model, task=task)
        fields = {"format": format, "framework": framework}
        if requirements:
            fields["requirements"] = json.dumps(dict(requirements))
        if label:
            fields["label"] = label
        return cast(ModelVersion, self.http.upload(
            f"{API}/models/{found['id']}/versions/", fields=fields, file_field="artifact",
            file_path=Path(artifact), progress=progress,
        ))  # fmt: skip

    def version(self, model: str, number: int) -> ModelVersion:
        found = self.model_by_name(model)
        if found is None:
            raise ApiError(404, {"code": "not_found", "detail": f"no model named {model!r}"})
        return cast(ModelVersion, self.get(f"/models/{found['id']}/versions/{number}/"))

    def publish_version(self, model_id: int, number: int) -> ModelVersion:
        return cast(ModelVersion, self.post(f"/models/{model_id}/versions/{number}/publish/"))

    # --- rollouts --------------------------------------------------------------------------------
    def rollout_preview(self, plan: Mapping[str, Any]) -> RolloutPreview:
        return cast(RolloutPreview, self.post("/rollouts/preview/", dict(plan)))

    def rollout_create(self, plan: Mapping[str, Any]) -> RolloutDetail:
        return cast(RolloutDetail, self.post("/rollouts/", dict(plan)))

    def rollout(self, rollout_id: int) -> RolloutDetail:
        return cast(RolloutDetail, self.get(f"/rollouts/{rollout_id}/"))

    def rollouts(self, *, limit: int | None = 50, **filters: Any) -> list[Rollout]:
        return list(self.iterate("/rollouts/", limit=limit, **filters))

    def rollout_act(self, rollout_id: int, verb: str, *, reason: str = "") -> RolloutDetail:
        """start, pause, resume, abort, rollback or approve (the API's verbs)."""
        if verb not in {"start", "pause", "resume", "abort", "rollback", "approve"}:
            raise ValueError(f"unknown rollout action {verb!r}")
        body = {} if verb == "start" else {"reason": reason}
        return cast(RolloutDetail, self.post(f"/rollouts/{rollout_id}/{verb}/", body))

    def rollout_watch(
        self,
        rollout_id: int,
        *,
        interval: float = 2.0,
        timeout: float | None = None,
        on_update: Callable[[RolloutDetail], None] | None = None,
        stop_on_pause: bool = True,
    ) -> tuple[RolloutOutcome, RolloutDetail]:
        """Poll until the rollout ends (or pauses, or `timeout` passes); `on_update` sees every reading."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rollout = self.rollout(rollout_id)
            if on_update:
                on_update(rollout)
            if (outcome := FINAL_STATUSES.get(rollout["status"])) is not None:
                return outcome, rollout
            if stop_on_pause and rollout["status"] == "paused":
                return RolloutOutcome.PAUSED, rollout
            if deadline is not None and time.monotonic() >= deadline:
                return RolloutOutcome.TIMED_OUT, rollout
            time.sleep(interval)

    # --- audit -----------------------------------------------------------------------------------
    def audit(self, *, limit: int | None = 20, **filters: Any) -> list[AuditEntry]:
        """The newest entries first (filters: actor, action, object_type, object_id, since, until, request_id)."""
        return list(self.iterate("/audit/", limit=limit, **filters))
