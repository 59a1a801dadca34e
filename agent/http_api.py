"""The local inference API: `POST /infer` on the active model, `GET /healthz`."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np

from agent.http_json import JsonRequestHandler
from agent.inference import BadInput, LoadedModel
from agent.pipeline import LoadedPipeline, StageRun
from agent.telemetry import TelemetryRecorder

logger = logging.getLogger("fogdeck.agent.http")

MAX_BODY_BYTES = 32 * 1024 * 1024


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
    ) -> None:
        server = self

        class Handler(_Handler):
            owner = server

        self.current_model = current_model
        self.telemetry = telemetry
        self.health = health
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
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
        if self.path.split("?")[0] != "/healthz":
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        model = self.owner.current_model()
        body = {"status": "ok", "model": model.model if model else None, "version": model.version if model else None}
        self._json(HTTPStatus.OK, body | self.owner.health())

    def do_POST(self) -> None:
        if self.path.split("?")[0] != "/infer":
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(length)
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
        body: dict[str, Any] = {
            "outputs": {name: _jsonable(value) for name, value in outputs.items()},
            "model": model.model,
            "version": model.version,
        }
        if runs is not None:
            recorder.record_stages(model.model, model.version, runs)
            body["stages"] = [run.as_json() for run in runs]
        self._json(HTTPStatus.OK, body)


def _jsonable(value: np.ndarray) -> Any:
    if value.dtype.kind == "f":
        # JSON has no NaN/Infinity; null marks them.
        return np.where(np.isfinite(value), value, None).tolist() if not np.isfinite(value).all() else value.tolist()
    return value.tolist()
