"""Can a device run a model version? One pure function, also used in bulk (and by rollouts to pick targets).

It returns every reason a device cannot run the version, not just the first, so the UI can show a
fleet-wide breakdown ("needs 2048 MB, device has 1024 MB": 312 devices).

Which runtimes execute which artifact format (a version's `runtime` requirement, when set, narrows it):

=============  ======================================
format         runtimes that can execute it
=============  ======================================
onnx           onnxruntime, openvino, tensorrt
tflite         tflite
torchscript    torchscript
tensorrt       tensorrt (engines are built per GPU)
openvino       openvino
=============  ======================================

The first runtime listed is the format's native one: `min_runtime_version` is a version of the required
`runtime`, or of that native runtime when none is required (another runtime that can execute the format,
e.g. TensorRT running ONNX, is then not version-constrained: versions of different runtimes don't compare).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

FORMAT_RUNTIMES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "openvino", "tensorrt"),
    "tflite": ("tflite",),
    "torchscript": ("torchscript",),
    "tensorrt": ("tensorrt",),
    "openvino": ("openvino",),
}
NO_ACCELERATOR = "none"


@dataclass(frozen=True)
class DeviceProfile:
    """What compatibility needs to know about a device (built from a Device and its runtime rows)."""

    arch: str
    memory_mb: int
    accelerator: str
    runtimes: tuple[tuple[str, str], ...]  # (name, version), sorted by name


@dataclass(frozen=True)
class VersionRequirements:
    format: str
    runtime: str = ""
    min_runtime_version: str = ""
    archs: tuple[str, ...] = ()
    min_memory_mb: int | None = None
    accelerator: str = ""


class _RuntimeRow(Protocol):
    name: str
    version: str


class _DeviceLike(Protocol):
    arch: str
    memory_mb: int
    accelerator: str


class _VersionLike(Protocol):
    format: str
    runtime: str
    min_runtime_version: str
    archs: list[str]
    min_memory_mb: int | None
    accelerator: str


def version_key(version: str) -> tuple[int, ...]:
    """Numeric comparison key: "1.18" > "1.9"; a suffix like "-rc1" or "+cuda" is ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", re.split(r"[-+ ]", version.strip(), maxsplit=1)[0]))


def requirements_of(version: _VersionLike) -> VersionRequirements:
    return VersionRequirements(
        format=version.format,
        runtime=version.runtime,
        min_runtime_version=version.min_runtime_version,
        archs=tuple(version.archs or ()),
        min_memory_mb=version.min_memory_mb,
        accelerator=version.accelerator,
    )


class _StageLike(Protocol):
    position: int
    name: str

    @property  # read-only, so a stage whose `version` is a ModelVersion (a subtype) fits
    def version(self) -> _VersionLike: ...


def pipeline_requirements_of(stages: Iterable[_StageLike]) -> PipelineRequirements:
    """Pass a pipeline version's stages with their versions (and models) loaded."""
    return PipelineRequirements(
        tuple(
            (f"stage {stage.position + 1} ({stage.name}: {stage.version})", requirements_of(stage.version))
            for stage in sorted(stages, key=lambda stage: stage.position)
        )
    )


def profile_of(device: _DeviceLike, runtimes: Iterable[_RuntimeRow]) -> DeviceProfile:
    """Pass `device.runtimes.all()` on a prefetched queryset: no query per device."""
    return DeviceProfile(
        arch=device.arch,
        memory_mb=device.memory_mb,
        accelerator=device.accelerator or NO_ACCELERATOR,
        runtimes=tuple(sorted((r.name, r.version) for r in runtimes)),
    )


def _runtime_list(runtimes: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {version}" for name, version in runtimes) or "none"


def incompatibility_reasons(req: VersionRequirements, device: DeviceProfile) -> list[str]:
    """Every reason `device` cannot run a version with these requirements; empty means it can."""
    reasons: list[str] = []
    candidates = FORMAT_RUNTIMES.get(req.format, ())
    if req.runtime:
        candidates = tuple(name for name in candidates if name == req.runtime)
    usable = [(name, version) for name, version in device.runtimes if name in candidates]
    if not candidates:
        reasons.append(f"runtime {req.runtime} cannot execute format {req.format}")
    elif not usable:
        if req.runtime and req.runtime in FORMAT_RUNTIMES.get(req.format, ()):
            reasons.append(f"needs runtime {req.runtime}, device has runtimes [{_runtime_list(device.runtimes)}]")
        else:
            reasons.append(f"format {req.format} not supported by runtimes [{_runtime_list(device.runtimes)}]")
    elif req.min_runtime_version:
        # the minimum is in the version space of one runtime: the required one, else the format's native one
        constrained = req.runtime or candidates[0]
        minimum = version_key(req.min_runtime_version)
        if not any(name != constrained or version_key(version) >= minimum for name, version in usable):
            reasons.append(f"needs {constrained} >= {req.min_runtime_version}, device has {_runtime_list(usable)}")
    if req.min_memory_mb is not None and device.memory_mb < req.min_memory_mb:
        reasons.append(f"needs {req.min_memory_mb} MB, device has {device.memory_mb} MB")
    if req.accelerator and req.accelerator != NO_ACCELERATOR and device.accelerator != req.accelerator:
        has = "none" if device.accelerator == NO_ACCELERATOR else device.accelerator
        reasons.append(f"requires {req.accelerator} accelerator, device has {has}")
    if req.archs and device.arch not in req.archs:
        reasons.append(f"architecture {device.arch} not in [{', '.join(req.archs)}]")
    return reasons


@dataclass(frozen=True)
class PipelineRequirements:
    """A pipeline version's needs: every stage's, labelled `"stage 2 (classify: sample v1)"`."""

    stages: tuple[tuple[str, VersionRequirements], ...]


Requirements = VersionRequirements | PipelineRequirements


def reasons_for(req: Requirements, device: DeviceProfile) -> list[str]:
    """The one decision: every reason `device` cannot run a version or a pipeline version; empty means it can.

    A pipeline needs every stage: each stage's reasons are prefixed with the stage's label, so the
    summary says which stage a device fails on ("stage 2 (classify: sample v1): needs 2048 MB …").
    """
    if isinstance(req, VersionRequirements):
        return incompatibility_reasons(req, device)
    return [f"{label}: {reason}" for label, stage in req.stages for reason in incompatibility_reasons(stage, device)]


@dataclass(frozen=True)
class CompatibilitySummary:
    compatible: int
    incompatible: int
    reasons: dict[str, int]

    @property
    def total(self) -> int:
        return self.compatible + self.incompatible


def summarize(req: Requirements, devices: Iterable[DeviceProfile]) -> CompatibilitySummary:
    """Count compatible devices and how often each reason occurs (a device may have several)."""
    compatible = incompatible = 0
    counts: Counter[str] = Counter()
    cache: dict[DeviceProfile, list[str]] = {}  # fleets repeat a few hardware profiles many times
    for profile in devices:
        reasons = cache.get(profile)
        if reasons is None:
            reasons = cache[profile] = reasons_for(req, profile)
        if reasons:
            incompatible += 1
            counts.update(reasons)
        else:
            compatible += 1
    return CompatibilitySummary(compatible, incompatible, dict(counts.most_common()))
