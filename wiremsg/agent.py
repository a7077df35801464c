"""The worker process: a :class:`~wiremsg.worker.Worker` wired to a command runner.

``wiremsg worker`` builds one with :func:`build_agent`. The runner answers ``worker_info``,
``start_command`` and ``interrupt`` (see :mod:`wiremsg.runner`); the agent adds ``print``
(logged) and ``shutdown`` (stops everything, then calls ``on_shutdown``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wiremsg.message import Message
from wiremsg.runner import CommandRunner
from wiremsg.vocabulary import PRINT, SHUTDOWN
from wiremsg.worker import Worker

log = Logger()

STOP_COMMANDS_TIMEOUT = 10.0
"""Seconds :meth:`Agent.stop` waits for killed commands to report their end."""


class Agent:
    """A worker and its runner. :meth:`stop` stops both."""

    def __init__(
        self, worker: Worker, runner: CommandRunner, on_shutdown: Callable[[], Any] | None = None
    ) -> None:
        self.worker = worker
        self.runner = runner
        self.on_shutdown = on_shutdown
        runner.serve(worker, info={"python": platform.python_version(), "tags": list(worker.tags)})
        worker.on(PRINT, self._print)
        worker.on(SHUTDOWN, self._shutdown)

    def _print(self, msg: Message) -> None:
        body = msg.body
        log.info("master says: {m}", m=body.get("message") if isinstance(body, dict) else body)

    def _shutdown(self, msg: Message) -> dict[str, Any]:
        log.info("the master asked this worker to shut down")

        def later() -> None:
            d = Deferred.fromCoroutine(self.stop())
            then = self.on_shutdown
            if then is not None:
                d.addBoth(lambda _: then())

        self.worker.reactor.callLater(0.1, later)  # answer first, then go
        return {}

    async def stop(self) -> None:
        """Kill running commands and wait (bounded) for their last updates, then stop the
        worker cleanly: drain, goodbye."""
        ended = self.runner.stop_all("worker stopping")
        ended.addTimeout(STOP_COMMANDS_TIMEOUT, self.worker.reactor)
        try:
            await ended
        except Exception:
            log.warn("some commands did not end within {t}s", t=STOP_COMMANDS_TIMEOUT)
        await self.worker.stop()


def build_agent(
    reactor: Any,
    name: str,
    secret: str,
    masters: Sequence[str],
    *,
    tags: Iterable[str] = (),
    basedir: str = ".",
    on_shutdown: Callable[[], Any] | None = None,
    **worker_options: Any,
) -> Agent:
    """A worker named ``name`` for ``masters``, running commands under ``basedir``."""
    basedir = os.path.abspath(basedir)
    os.makedirs(basedir, exist_ok=True)
    worker = Worker(
        name,
        secret,
        masters,
        tags=tags,
        reactor=reactor,
        info={"basedir": basedir, "os": platform.system().lower()},
        **worker_options,
    )
    runner = CommandRunner(reactor, basedir, worker.send, worker, request=worker.request)
    return Agent(worker, runner, on_shutdown)
