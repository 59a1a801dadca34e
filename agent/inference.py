"""Loading an ONNX model, the smoke test before activation, and turning JSON inputs into tensors."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(bool)": np.bool_,
}


class BadInput(ValueError):
    """The request does not fit the model's input signature (HTTP 400)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: Any
    shape: tuple[int | None, ...]  # None for a dynamic dimension

    def zeros(self) -> np.ndarray:
        return np.zeros([1 if dim is None else dim for dim in self.shape], dtype=self.dtype)


def _dim(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


class LoadedModel:
    """One model version in an onnxruntime session, ready to serve."""

    def __init__(self, path: Path, *, model: str, version: int, sha256: str, threads: int = 1) -> None:
        options = ort.SessionOptions()
        # An edge device shares its few cores with everything else; one request, one core.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.model, self.version, self.sha256 = model, version, sha256
        self.inputs: list[InputSpec] = []
        for node in self.session.get_inputs():
            dtype = _DTYPES.get(node.type)
            if dtype is None:
                raise ValueError(f"input {node.name!r} has unsupported type {node.type}")
            self.inputs.append(InputSpec(node.name, dtype, tuple(_dim(d) for d in node.shape or ())))
        self.output_names = [node.name for node in self.session.get_outputs()]

    def smoke_test(self) -> float:
        """One inference on zeros (dynamic dims as 1); returns its latency in ms, raises on failure."""
        started = time.perf_counter()
        self.run({spec.name: spec.zeros() for spec in self.inputs})
        return (time.perf_counter() - started) * 1000

    def prepare(self, raw: object) -> dict[str, np.ndarray]:
        """`{"name": nested list}` → feeds of the model's dtypes and shapes; raises `BadInput`."""
        if not isinstance(raw, dict):
            raise BadInput('"inputs" must be an object of input name to nested list')
        expected = {spec.name for spec in self.inputs}
        missing, unknown = expected - raw.keys(), raw.keys() - expected
        if missing:
            raise BadInput(f"missing inputs: {', '.join(sorted(missing))}")
        if unknown:
            raise BadInput(f"unknown inputs: {', '.join(sorted(map(str, unknown)))[:200]}")
        feeds = {}
        for spec in self.inputs:
            value = raw[spec.name]
            if isinstance(value, bool) or not isinstance(value, list | int | float):
                raise BadInput(f"input {spec.name!r} must be a number or a nested list of numbers")
            try:
                array = np.asarray(value, dtype=spec.dtype)
            except (ValueError, TypeError, OverflowError):
                raise BadInput(f"input {spec.name!r} is not a rectangular array of numbers") from None
            if array.ndim != len(spec.shape) or any(
                want is not None and got != want for got, want in zip(array.shape, spec.shape, strict=True)
            ):
                shown = ["?" if d is None else d for d in spec.shape]
                raise BadInput(f"input {spec.name!r} has shape {list(array.shape)}, the model expects {shown}")
            feeds[spec.name] = array
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, (np.asarray(r) for r in results), strict=True))
