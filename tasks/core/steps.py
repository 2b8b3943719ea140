"""How flows turn plain functions into Prefect tasks: `step(fn)`, or `step(fn, io_retries=2)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tasks.core.reporting import retry_on_io


def step(
    fn: Callable | None = None, *, name: str | None = None, io_retries: int = 0, retry_delay_seconds: float = 5
) -> Any:
    """A Prefect task around a plain function, never cached (its inputs are models and open handles).

    `io_retries`: how often a network or disk failure is retried; a config or data error never is
    (it would fail the same way again).
    """

    def wrap(function: Callable) -> Any:
        options: dict[str, Any] = {"name": name or function.__name__, "cache_policy": NONE}
        if io_retries:
            options.update(retries=io_retries, retry_delay_seconds=retry_delay_seconds, retry_condition_fn=retry_on_io)
        return task(**options)(function)

    return wrap(fn) if fn is not None else wrap
