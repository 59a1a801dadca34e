"""The one transition rule: every status change of a stateful model is a guarded update.

A stateful model declares `Status` (TextChoices), `TRANSITIONS` (from-state -> the states it may move to)
and `TERMINAL` on its class in its app's models.py. `transition()` moves one row from the state the
caller read to `to` with `filter(pk=…, status=current).update(status=to, …)`, so of two workers that read
the same state only one wins. It has one meaning for each outcome:

* moved: the row was in `current` and `TRANSITIONS[current]` allows `to`; `Moved.changed` is True and the
  caller writes the transition's event row and audit entry in the same transaction.
* already there: the row is in `to` (the caller read it so, or another writer got there first); an
  idempotent no-op, `Moved.changed` is False, and the caller writes no event and no audit entry.
* conflict: anything else (the map forbids the move, or another writer took the row elsewhere first);
  `InvalidTransition` says which state the row is in.

TERMINAL means the same everywhere: the object is finished (`finished_at` is stamped on entering it when
the model has that column) and no worker moves it on by itself; a model's TRANSITIONS may still let a
person undo a finished object (a completed rollout can be rolled back).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.utils import timezone


class InvalidTransition(Exception):
    """The object's current state does not allow the requested change; the message says why (HTTP 409)."""


@dataclass(frozen=True)
class Moved:
    """What `transition` did: `changed` False means the object already was in `after` (nothing written)."""

    changed: bool
    before: str
    after: str
    at: dt.datetime
    fields: Mapping[str, Any]


def allowed_from(transitions: Mapping[str, frozenset[str]], target: str) -> frozenset[str]:
    """The states an object may move to `target` from (the map read the other way)."""
    return frozenset(state for state, targets in transitions.items() if target in targets)


def terminal_of(transitions: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The states with no way out."""
    return frozenset(state for state, targets in transitions.items() if not targets)


def _has_field(model: type[models.Model], name: str) -> bool:
    return any(f.name == name for f in model._meta.concrete_fields)


def transition(
    model: type[models.Model],
    *,
    pk: Any,
    current: str,
    to: str,
    label: str = "",
    where: Mapping[str, Any] | None = None,
    **fields: Any,
) -> Moved:
    """Move row `pk` of `model` from `current` (the state the caller read) to `to` along `model.TRANSITIONS`.

    `fields` are written in the same UPDATE; `updated_at` and, on entering `model.TERMINAL`, `finished_at`
    are stamped when the model has them and the caller gave none. `where` adds conditions to the guard
    (a failed one is a conflict). Returns `Moved` (changed or already there); raises InvalidTransition.
    """
    transitions: Mapping[str, frozenset[str]] = model.TRANSITIONS  # type: ignore[attr-defined]
    terminal: frozenset[str] = model.TERMINAL  # type: ignore[attr-defined]
    label = label or f"{model._meta.verbose_name} {pk}"
    now = timezone.now()
    if current == to:
        return Moved(False, current, to, now, {})
    if to not in transitions.get(current, frozenset()):
        raise InvalidTransition(f"{label} is {current}; it cannot become {to}")
    values: dict[str, Any] = {"status": to, **fields}
    if _has_field(model, "updated_at"):
        values.setdefault("updated_at", now)
    if to in terminal and _has_field(model, "finished_at"):
        values.setdefault("finished_at", now)
    manager = model._default_manager
    if manager.filter(pk=pk, status=current, **(where or {})).update(**values):
        return Moved(True, current, to, now, values)
    now_in = manager.filter(pk=pk).values_list("status", flat=True).first()
    if now_in == to:
        return Moved(False, to, to, now, {})
    raise InvalidTransition(f"{label} changed meanwhile: it is {now_in}, not {current}; it cannot become {to}")
