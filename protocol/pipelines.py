"""Model pipelines, shared by the registry, the agent and the simulator: stage conditions and the manifest.

A pipeline version is an ordered chain of model versions. Stage `i > 0` may carry a condition on the
previous stage's output, `{"output": "score", "op": ">=", "value": 0.5}`: the stage runs only when the
largest element of that output tensor satisfies it (for a batch of one frame, its score). A false
condition skips that stage and every later one: the chain stops there.

The pipeline manifest is signed like a model version's (protocol/signing.py) and names every stage's
model, version and sha256, so a device can check each downloaded stage against one signature.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, Literal, TypedDict

PIPELINE_MANIFEST_SCHEMA_VERSION = 1
PIPELINE_FORMAT = "pipeline"  # the JobDocument `format` of a pipeline job
MAX_STAGES = 8

ConditionOp = Literal[">=", ">", "<=", "<", "==", "!="]
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


class Condition(TypedDict):
    output: str
    op: ConditionOp
    value: float


class StageManifest(TypedDict):
    name: str
    model: str
    model_id: int
    version: int
    format: str
    sha256: str
    size: int
    condition: Condition | None


class PipelineManifest(TypedDict):
    schema_version: int
    kind: Literal["pipeline"]
    pipeline: str
    pipeline_id: int
    version: int
    stages: list[StageManifest]
    published_at: str


def condition_errors(condition: Any) -> list[str]:
    """Why `condition` is not a valid stage condition; empty when it is (None means "always")."""
    if condition is None:
        return []
    if not isinstance(condition, dict):
        return ['must be an object {"output", "op", "value"}']
    errors = []
    extra = set(condition) - {"output", "op", "value"}
    if extra:
        errors.append(f"unknown keys: {', '.join(sorted(map(str, extra)))}")
    output = condition.get("output")
    if not isinstance(output, str) or not output or len(output) > 128:
        errors.append("output must be the name of the previous stage's output (1-128 characters)")
    if condition.get("op") not in OPS:
        errors.append(f"op must be one of {', '.join(OPS)}")
    value = condition.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        errors.append("value must be a finite number")
    return errors


def condition_holds(condition: Condition | None, outputs: dict[str, Any]) -> tuple[bool, float | None]:
    """(does the stage run, the value compared). `outputs` maps names to numpy arrays or numbers.

    Raises KeyError when the previous stage has no such output (the registry checks the names it can).
    """
    if condition is None:
        return True, None
    observed = outputs[condition["output"]]
    largest = float(observed.max()) if hasattr(observed, "max") else float(observed)
    return OPS[condition["op"]](largest, float(condition["value"])), largest
