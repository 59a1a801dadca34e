"""Field rules shared by the model (full_clean in services) and the API serializers."""

from __future__ import annotations

import math
import re
from typing import Any

from django.core.exceptions import ValidationError

from fleet.models import RUNTIME_NAMES, Arch

_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.@/-]{0,63}$")
_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")
MAX_METRICS = 100


def validate_metrics(value: Any) -> None:
    """An object of metric name -> finite number (no NaN, no infinity, no strings, no booleans)."""
    if not isinstance(value, dict):
        raise ValidationError("metrics must be an object of name -> number")
    if len(value) > MAX_METRICS:
        raise ValidationError(f"at most {MAX_METRICS} metrics")
    for name, number in value.items():
        if not _METRIC_NAME.match(str(name)):
            raise ValidationError(f"metric name {name!r}: letters, digits and _.@/- only, starting with a letter")
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValidationError(f"metric {name!r} must be a number, got {type(number).__name__}")
        if not math.isfinite(number):
            raise ValidationError(f"metric {name!r} must be a finite number, got {number}")


def validate_archs(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ValidationError("archs must be a list of architecture names")
    unknown = sorted(set(value) - set(Arch.values))
    if unknown:
        raise ValidationError(f"unknown architecture {', '.join(unknown)}; use {', '.join(Arch.values)}")


def validate_runtime_name(value: str) -> None:
    if value and value not in RUNTIME_NAMES:
        raise ValidationError(f"unknown runtime {value!r}; use {', '.join(RUNTIME_NAMES)}")


def validate_runtime_version(value: str) -> None:
    if value and not _VERSION.match(value):
        raise ValidationError("use a dotted version such as 1.17 or 2024.1")


def validate_code_commit(value: str) -> None:
    if value and not _COMMIT.match(value):
        raise ValidationError("a git commit: 7-64 lower-case hex characters")


def validate_io_signature(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError('the signature must be an object, e.g. {"inputs": [...], "outputs": [...]}')
