"""The local inference API: `POST /infer` on the active model, `GET /healthz`.

Bound to 127.0.0.1 unless `--host` says otherwise; bounded and timed out like every agent server
(agent/http_json.py). With `--api-token` (or $FOGDECK_INFERENCE_TOKEN) `/infer` needs
`Authorization: Bearer <token>`; `/healthz` stays open (status only).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import numpy as np

from agent.http_json import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_IO_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    BoundedHTTPServer,
    JsonRequestHandler,
)
from agent.inference import BadInput, LoadedModel
from agent.pipeline import LoadedPipeline, StageRun
from agent.telemetry import TelemetryRecorder

logger = logging.getLogger("fogdeck.agent.http")

# default for --max-body-mb: a JSON tensor of a few hundred thousand numbers; the cap bounds memory at
# max_connections x this
MAX_BODY_BYTES = 8 * 1024 * 1024


class InferenceServer:
    """Serves whatever `current_model()` returns at the time of each request (swaps are atomic)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        current_model: Callable[[], LoadedModel | LoadedPipeline | None],
        telemetry: TelemetryRecorder,
        health: Callable[[], dict[str, Any]],
        token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        io_timeout_s: float = DEFAULT_IO_TIMEOUT_S,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    ) -> None:
        server = self

        class Handler(_Handler):
            owner = server

        self.current_model = current_model
        self.telemetry = telemetry
        self.health = health
        self.token = token or None
        self.max_body_bytes = max_body_bytes
        self._httpd = BoundedHTTPServer(
            (host, port),
            Handler,
            max_connections=max_connections,
            io_timeout_s=io_timeout_s,
            body_timeout_s=body_timeout_s,
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fogdeck-agent-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(JsonRequestHandler):
    owner: InferenceServer
    access_logger = logger

    def _error(self, status: HTTPStatus, reason: str) -> None:
        self._json(status, {"error": reason})

    def do_GET(self) -> None:
        if self._refuse_body():
            return
        if self.path.split("?")[0] != "/healthz":
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        model = self.owner.current_model()
        body = {"status": "ok", "model": model.model if model else None, "version": model.version if model else None}
        self._json(HTTPStatus.OK, body | self.owner.health())

    def do_POST(self) -> None:
        if self.path.split("?")[0] != "/infer":
            self.close_connection = True  # its body, if any, is not read
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        if self.owner.token is not None and self._refuse_unauthorized(self.owner.token):
            self.close_connection = True
            return
        body = self._read_body(self.owner.max_body_bytes)
        if body is None:
            return
        model = self.owner.current_model()
        if model is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no model is active")
            return
        recorder = self.owner.telemetry
        try:
            request = json.loads(body)
            if not isinstance(request, dict) or "inputs" not in request:
                raise BadInput('the body must be a JSON object with "inputs"')
            feeds = model.prepare(request["inputs"])
        except (ValueError, RecursionError) as exc:  # BadInput is a ValueError, and so is bad JSON
            recorder.record_error(model.model, model.version)
            reason = str(exc) if isinstance(exc, BadInput) else f"body is not valid JSON: {exc}"
            self._error(HTTPStatus.BAD_REQUEST, reason[:500])
            return
        started = time.perf_counter()
        runs: list[StageRun] | None = None
        try:
            if isinstance(model, LoadedPipeline):
                outputs, runs = model.infer(feeds)
            else:
                outputs = model.run(feeds)
        except BadInput as exc:
            recorder.record_error(model.model, model.version)
            self._error(HTTPStatus.BAD_REQUEST, str(exc)[:500])
            return
        except Exception as exc:
            # onnxruntime reports shape/type problems it found in the graph as its own errors.
            recorder.record_error(model.model, model.version)
            invalid = type(exc).__name__ in {"InvalidArgument", "InvalidGraph", "Fail"}
            status = HTTPStatus.BAD_REQUEST if invalid else HTTPStatus.INTERNAL_SERVER_ERROR
            self._error(status, f"inference failed: {exc}"[:500])
            return
        latency_ms = (time.perf_counter() - started) * 1000
        recorder.record_success(model.model, model.version, latency_ms, feeds)
        reply: dict[str, Any] = {
            "outputs": {name: _jsonable(value) for name, value in outputs.items()},
            "model": model.model,
            "version": model.version,
        }
        if runs is not None:
            recorder.record_stages(model.model, model.version, runs)
            reply["stages"] = [run.as_json() for run in runs]
        self._json(HTTPStatus.OK, reply)


def _jsonable(value: np.ndarray) -> Any:
    if value.dtype.kind == "f":
        # JSON has no NaN/Infinity; null marks them.
        finite = np.isfinite(value)
        if finite.all():
            return value.tolist()
        with_nulls = value.astype(object)
        with_nulls[~finite] = None
        return with_nulls.tolist()
    return value.tolist()
