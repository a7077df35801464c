"""Handlers by message kind, shared by the master and the worker.

A handler may return a value, a Deferred or a coroutine. For a request, what it returns (or
``None`` as ``{}``) is the reply body; if it raises, the requester gets a
:class:`~wiremsg.errors.RemoteError` with code ``handler_error`` (or the ``code`` of a raised
:class:`~wiremsg.errors.RemoteError`) and the exception's text. A request of a kind nobody
handles is answered with ``no_handler``. Failures of one-way handlers are logged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from wiremsg import wire
from wiremsg.driver import SessionDriver
from wiremsg.errors import LinkLost, RemoteError, WindowFull
from wiremsg.message import Message, validate_kind

log = Logger()

Handler = Callable[..., Any]


_PLAIN = frozenset({dict, list, str, int, float, bool, type(None)})
"""Result types that are a reply body as they are (never a Deferred or an awaitable)."""


class Handlers:
    """A registry of handlers by kind, and the dispatch of received messages to them."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._by_kind: dict[str, Handler] = {}

    def on(self, kind: str, handler: Handler) -> Handler:
        """Register ``handler`` for ``kind``, replacing any earlier one; returns it.

        :raises MessageError: if ``kind`` is not a valid kind.
        :raises TypeError: if ``handler`` is not callable.
        """
        validate_kind(kind)
        if not callable(handler):
            raise TypeError(f"handler for {kind!r} is not callable")
        self._by_kind[kind] = handler
        return handler

    def dispatch(
        self, driver: SessionDriver, message: Message, request: bool, args: tuple[Any, ...]
    ) -> None:
        """Run the handler for ``message`` with ``args``; answer it if it is a request.

        The handler is called directly (no Deferred) and a plain return value answers at once:
        this is the hot path of every received message.
        """
        handler = self._by_kind.get(message.kind)
        if handler is None:
            if request:
                self._answer_error(
                    driver,
                    message,
                    wire.NO_HANDLER,
                    f"{self._owner} has no handler for {message.kind!r}",
                )
            else:
                log.warn(
                    "{owner}: no handler for {kind!r}; message dropped",
                    owner=self._owner,
                    kind=message.kind,
                )
            return
        try:
            result = handler(*args)
        except Exception:
            if request:
                self._answer_failure(driver, message, Failure())  # type: ignore[no-untyped-call]
            else:
                log.failure(
                    "{owner}: handler for {kind!r} failed", owner=self._owner, kind=message.kind
                )
            return
        if type(result) in _PLAIN:  # the usual answer: a body (or None), not a Deferred
            if request:
                self._answer(driver, message, result)
            return
        if not isinstance(result, Deferred) and inspect.isawaitable(result):
            result = ensureDeferred(result)  # type: ignore[arg-type]
        if isinstance(result, Deferred):
            if request:
                result.addCallbacks(
                    lambda body: self._answer(driver, message, body),
                    lambda f: self._answer_failure(driver, message, f),
                )
            else:
                result.addErrback(
                    lambda f: log.failure(
                        "{owner}: handler for {kind!r} failed",
                        f,
                        owner=self._owner,
                        kind=message.kind,
                    )
                )
        elif request:
            self._answer(driver, message, result)

    def _answer(self, driver: SessionDriver, request: Message, body: Any) -> None:
        try:
            driver.session.reply(request, body)
        except (LinkLost, WindowFull) as exc:
            log.warn(
                "{owner}: could not reply to {id}: {exc}", owner=self._owner, id=request.id, exc=exc
            )
            return
        except Exception as exc:  # an invalid reply body is the handler's bug
            self._answer_error(driver, request, wire.HANDLER_ERROR, f"bad reply: {exc}")
            return
        driver.write(push=True)

    def _answer_failure(self, driver: SessionDriver, request: Message, failure: Failure) -> None:
        exc = failure.value
        if isinstance(exc, RemoteError):
            code, reason = exc.code, exc.reason
        else:
            code, reason = wire.HANDLER_ERROR, f"{type(exc).__name__}: {exc}"
            log.failure(
                "{owner}: handler for {kind!r} failed",
                failure,
                owner=self._owner,
                kind=request.kind,
            )
        self._answer_error(driver, request, code, reason)

    def _answer_error(
        self, driver: SessionDriver, request: Message, code: str, reason: str
    ) -> None:
        try:
            driver.session.reply_error(request, code, reason)
        except (LinkLost, WindowFull):
            return
        driver.write(push=True)
