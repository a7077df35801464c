"""What may cross the PB wire, and calling a remote method without surprises.

Buildbot's protocol carries plain data (dicts, lists, tuples, strings, bytes, numbers, None,
booleans), remote references and, from a worker, a failure. :data:`PB_SECURITY` allows exactly
those when unjellying: any other class or module a peer names is refused (``InsecureJelly``)
and that peer is dropped. Twisted's default, ``globalSecurity``, allows every class any
imported module registered; Buildbot uses it.

Banana refuses a string over 640 KiB (``SIZE_LIMIT``) in either direction, and the sender's
error is raised *synchronously* from ``callRemote`` (PITFALLS: PB/banana). Everything the bridge
sends is cut below :data:`MAX_STRING` (texts by :func:`wiremsg.compat.translate.split_text`,
blocks by :data:`wiremsg.vocabulary.MAX_BLOCKSIZE`), and :func:`call` turns any synchronous
error into a failed Deferred.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.spread import banana
from twisted.spread.jelly import SecurityOptions
from twisted.spread.pb import CopyableFailure

__all__ = ["MAX_STRING", "PB_SECURITY", "call", "describe"]

MAX_STRING: int = banana.SIZE_LIMIT
"""Banana's limit on one string (640 KiB); larger ones drop the connection."""

PB_SECURITY = SecurityOptions()
"""The jelly policy of both bridges: plain data, remote references and copied failures."""
PB_SECURITY.allowBasicTypes()
PB_SECURITY.allowTypes("remote", CopyableFailure)


def call(
    ref: Any, method: str, *args: Any, timeout: float | None = None, reactor: Any = None, **kw: Any
) -> Deferred[Any]:
    """``ref.callRemote(method, ...)``, failing (never raising) on any error, and failing with
    ``TimeoutError`` after ``timeout`` seconds when given (with ``reactor``)."""
    try:
        d: Deferred[Any] = ref.callRemote(method, *args, **kw)
    except Exception as exc:
        return fail(exc)
    if timeout is not None and reactor is not None:
        d.addTimeout(timeout, reactor)
    return d


def describe(failure: Any) -> str:
    """One line about a failure from PB (a CopiedFailure, a Failure, an exception)."""
    value = getattr(failure, "value", failure)
    if hasattr(failure, "getErrorMessage"):
        text = str(failure.getErrorMessage())
    else:
        text = str(value)
    kind = getattr(failure, "type", None) or type(value)
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    return f"{name}: {text}".strip().splitlines()[0] if text else str(name)
