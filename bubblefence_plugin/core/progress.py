"""Progress of long steps: one event type and one way to drive them.

A long step (a split round, an audit, a curation pick) is a generator that yields
`Progress` events and returns its result. Every front end drives it the same way: the
CLI with a progress bar, an operator by relaying each event to the App
(``ctx.ops.set_progress``), a Python caller with a callback or nothing. A step made of
sub-steps hands each one a span of its own fraction with `within`.

Example usage::

    def count(n):
        for i in range(n):
            yield Progress(i / n, f"item {i}")
        return n

    drive(count(3), lambda fraction, label: print(f"{fraction:.0%} {label}"))  # -> 3
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

Result = TypeVar("Result")


@dataclass(frozen=True)
class Progress:
    """How far a step is (0 to 1) and what it is doing, in words for the user."""

    fraction: float
    label: str


ProgressCallback = Callable[[float, str], Any]
Steps = Generator[Progress, None, Result]


def drive(steps: Steps[Result], progress: ProgressCallback | None = None) -> Result:
    """Runs ``steps`` to its result, reporting each event to ``progress``.

    Args:
        steps: a generator of `Progress` events that returns a result
        progress: called as ``progress(fraction, label)`` for each event, or None
    """
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event.fraction, event.label)


def relay(steps: Steps[Result], event: Callable[[Progress], Any]) -> Generator[Any, None, Result]:
    """``yield from`` ``steps``, passing each event through ``event`` first (an operator
    turns it into ``ctx.ops.set_progress``); returns the result of ``steps``.

    Args:
        steps: a generator of `Progress` events that returns a result
        event: maps each event to what the caller yields
    """
    while True:
        try:
            item = next(steps)
        except StopIteration as stop:
            return stop.value
        yield event(item)


def within(steps: Steps[Result], start: float, end: float) -> Steps[Result]:
    """``steps`` as a sub-step that covers ``[start, end]`` of its caller's progress.

    Args:
        steps: a generator of `Progress` events that returns a result
        start: the caller's fraction when ``steps`` begins
        end: the caller's fraction when ``steps`` is done
    """
    return relay(steps, lambda e: Progress(start + (end - start) * e.fraction, e.label))
