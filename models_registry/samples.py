"""Tiny, real ONNX models for the demo and the tests, built with the `onnx` package (no hub weights).

A 3-class classifier of 4 features: input "input" float32 [N, 4] -> MatMul + Add + Softmax ->
"probabilities" float32 [N, 3]. It is a nearest-centroid classifier over three fixed centroids, so the
weights are exact and deterministic, and `evaluation_set` draws labelled points around those centroids
from the samples' input distribution (`protocol/sample_inputs.py`), the one the fleet simulator feeds them.

* v1 — the reference.
* v2 — deliberately slower, same outputs: the input is padded to a wide hidden layer and multiplied by
  an identity matrix many times before the classifier (exact in float32: x·1 + 0·… adds only zeros).
* v3 — less accurate: its centroid for class 1 drifted towards class 2.

The same arguments always give the same bytes (fixed producer, opset and initializer order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from protocol.sample_inputs import SAMPLE_CENTROIDS, SAMPLE_FEATURES, sample_inputs, sample_labels

OPSET = 13  # runs on onnxruntime >= 1.8, i.e. on older edge devices too
IR_VERSION = 8
FEATURES = SAMPLE_FEATURES
CLASSES = 3
CENTROIDS = SAMPLE_CENTROIDS


@dataclass(frozen=True)
class SampleVersion:
    number: int
    label: str
    description: str
    onnx_bytes: bytes
    accuracy: float


def _linear_weights(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax(x·W + b) is the nearest centroid: W = Cᵀ, b = -|c|²/2."""
    weights = centroids.T.astype(np.float32)
    bias = (-0.5 * (centroids**2).sum(axis=1)).astype(np.float32)
    return weights, bias


def _less_accurate_centroids() -> np.ndarray:
    centroids = CENTROIDS.copy()
    centroids[1] = 0.35 * CENTROIDS[1] + 0.65 * CENTROIDS[2]  # class 1 drifts into class 2's region
    return centroids


def build_classifier(
    *,
    centroids: np.ndarray = CENTROIDS,
    slow_layers: int = 0,
    hidden: int = 256,
    name: str = "fogdeck-sample-classifier",
) -> bytes:
    """The serialized ONNX model. `slow_layers` identity MatMuls of `hidden` x `hidden` add cost, not change."""
    weights, bias = _linear_weights(centroids)
    initializers = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")]
    nodes = []
    features = "input"
    if slow_layers:
        widen = np.zeros((FEATURES, hidden), dtype=np.float32)
        widen[:, :FEATURES] = np.eye(FEATURES, dtype=np.float32)
        initializers += [
            numpy_helper.from_array(widen, "widen"),
            numpy_helper.from_array(np.eye(hidden, dtype=np.float32), "identity"),
            numpy_helper.from_array(np.ascontiguousarray(widen.T), "narrow"),
        ]
        nodes.append(helper.make_node("MatMul", ["input", "widen"], ["hidden_0"], name="widen"))
        for layer in range(slow_layers):
            step = helper.make_node("MatMul", [f"hidden_{layer}", "identity"], [f"hidden_{layer + 1}"])
            step.name = f"slow_{layer}"
            nodes.append(step)
        nodes.append(helper.make_node("MatMul", [f"hidden_{slow_layers}", "narrow"], ["features"], name="narrow"))
        features = "features"
    nodes += [
        helper.make_node("MatMul", [features, "W"], ["logits_raw"], name="dense"),
        helper.make_node("Add", ["logits_raw", "B"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, producer_name="fogdeck-samples", producer_version="1", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def evaluation_set(samples: int = 600, *, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Labelled points around the centroids, from the samples' input distribution (deterministic for a seed)."""
    labels = sample_labels(samples)
    points = sample_inputs(np.random.default_rng(seed), samples, labels=labels)
    return points.astype(np.float32), labels


def training_inputs(samples: int = 3000, *, seed: int = 11) -> dict[str, np.ndarray]:
    """The inputs the classifier's centroids stand for (its "training data"), for its reference profile:
    the distribution calm simulated devices draw from too."""
    points, _ = evaluation_set(samples, seed=seed)
    return {"input": points}


def reference_predict(centroids: np.ndarray, points: np.ndarray) -> np.ndarray:
    weights, bias = _linear_weights(centroids)
    return np.argmax(points @ weights + bias, axis=1)


def accuracy_of(centroids: np.ndarray) -> float:
    points, labels = evaluation_set()
    return round(float((reference_predict(centroids, points) == labels).mean()), 4)


IO_SIGNATURE = {
    "inputs": [{"name": "input", "dtype": "float32", "shape": ["N", FEATURES]}],
    "outputs": [{"name": "probabilities", "dtype": "float32", "shape": ["N", CLASSES]}],
}


def sample_versions(*, slow_layers: int = 24, hidden: int = 256) -> list[SampleVersion]:
    worse = _less_accurate_centroids()
    return [
        SampleVersion(1, "1.0.0", "reference classifier", build_classifier(), accuracy_of(CENTROIDS)),
        SampleVersion(
            2,
            "1.1.0",
            "same outputs, deliberately slower (identity MatMul chain)",
            build_classifier(slow_layers=slow_layers, hidden=hidden),
            accuracy_of(CENTROIDS),
        ),
        SampleVersion(3, "1.2.0", "less accurate centroids", build_classifier(centroids=worse), accuracy_of(worse)),
    ]


# --- a two-stage pipeline: a motion detector gates the classifier --------------------------------------

DETECTOR_IO_SIGNATURE = {
    "inputs": [{"name": "input", "dtype": "float32", "shape": ["N", FEATURES]}],
    "outputs": [{"name": "score", "dtype": "float32", "shape": ["N", 1]}],
}
# the classifier runs only on frames the detector flags
PIPELINE_CONDITION = {"output": "score", "op": ">=", "value": 0.5}


def build_motion_detector(*, gain: float = 2.0, threshold: float = 0.5) -> bytes:
    """A "motion" score of 4 features: sigmoid(gain * (|x|^2 - threshold)), float32 [N, 1] named "score".

    All-zero input scores sigmoid(-1) = 0.27 (no motion); every class centroid scores above 0.5.
    """
    ones = np.full((FEATURES, 1), gain, dtype=np.float32)
    bias = np.array([-gain * threshold], dtype=np.float32)
    nodes = [
        helper.make_node("Mul", ["input", "input"], ["squares"], name="square"),
        helper.make_node("MatMul", ["squares", "gain"], ["energy"], name="energy"),
        helper.make_node("Add", ["energy", "offset"], ["logit"], name="offset"),
        helper.make_node("Sigmoid", ["logit"], ["score"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "fogdeck-sample-motion-detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(ones, "gain"), numpy_helper.from_array(bias, "offset")],
    )
    model = helper.make_model(
        graph, producer_name="fogdeck-samples", producer_version="1", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()
