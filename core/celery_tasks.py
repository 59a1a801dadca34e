"""A typed `shared_task`. Celery ships no types, so its decorator would leave every task untyped for mypy
(`disallow_untyped_decorators`) and every `.delay(...)` unchecked.

`shared_task(**options)` applies Celery's own `shared_task` with the same options and says what it
returns: the function, still callable with its own signature, and the task methods our code uses, whose
arguments are the function's. This module's `cast` is the one place that takes Celery's word for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast

import celery
from celery.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Task(Protocol[P, R_co]):
    """What a Celery task is to its callers (celery.app.task.Task)."""

    name: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult: ...


def shared_task(**options: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
    """`celery.shared_task(**options)` as a typed decorator (options are Celery's: `acks_late=True`, …)."""

    def decorate(function: Callable[P, R]) -> Task[P, R]:
        return cast("Task[P, R]", celery.shared_task(**options)(function))

    return decorate
