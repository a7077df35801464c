"""Deterministic plumbing for tests: the memory backend, masters and workers on a task.Clock.

Everything in wiremsg takes its reactor as an argument, so a ``Clock`` (which provides
``callLater`` and ``seconds``) runs a whole master↔worker conversation with no sockets and no
wall-clock time. :func:`settle` runs every call that falls due, stepping the clock.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

T = TypeVar("T")


def settle(clock: Clock, seconds: float = 0.0, max_steps: int = 1_000_000) -> None:
    """Run every delayed call due within ``seconds`` from now, in time order."""
    end = clock.seconds() + seconds
    for _ in range(max_steps):
        due = [c.getTime() for c in clock.getDelayedCalls() if c.active()]
        nxt = min(due) if due else None
        if nxt is None or nxt > end:
            break
        clock.advance(max(0.0, nxt - clock.seconds()))
    else:  # pragma: no cover - a livelock in the code under test
        raise AssertionError("calls kept falling due: livelock?")
    if end > clock.seconds():
        clock.advance(end - clock.seconds())


def result(d: Deferred[T]) -> T:
    """The result of a Deferred that must have fired successfully by now."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]  # type: ignore[no-any-return]


def failure(d: Deferred[Any]) -> Failure:
    """The Failure of a Deferred that must have failed by now."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    assert isinstance(box[0], Failure), f"expected a failure, got {box[0]!r}"
    return box[0]


def pending(d: Deferred[Any]) -> bool:
    """True if ``d`` has not fired yet."""
    return not d.called
