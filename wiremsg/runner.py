"""Runs a worker's commands and streams what they print as ``update`` messages.

``shell`` runs here; Buildbot's file commands and transfers run in :mod:`wiremsg.fileops`.

A :class:`CommandRunner` turns ``start_command`` / ``interrupt`` (see :mod:`wiremsg.vocabulary`)
into processes. It needs a reactor (for ``spawnProcess`` and ``callLater``), a basedir, a
``send(kind, body)`` callable and a flow object with ``writable`` and ``when_writable()``; a
:class:`~wiremsg.worker.Worker` is both the sender and the flow. Nothing here depends on the
link: a command keeps running while the link is down, and its messages queue in the session.
Wiring it to a worker::

    runner = CommandRunner(reactor, basedir, worker.send, worker)
    runner.serve(worker, info={"admin": "..."})  # start_command, interrupt, worker_info
    ...
    await runner.stop_all("worker stopping")      # before worker.stop(), so completes drain

Theory of operation:

- **Process group.** Each command runs in a session (and process group) of its own, so that
  killing it kills everything it started. Twisted's ``spawnProcess`` has no ``preexec_fn``, so
  the runner spawns a tiny trampoline, ``python -I -S -c``, which calls ``os.setsid()``,
  restores the signals Python ignores (SIGPIPE, SIGXFSZ) and ``execvp``\\s the command. It is
  portable (no ``setsid`` binary needed, which is missing on macOS and may fork instead of
  exec) and costs one Python start-up (~20 ms). The trampoline reports an ``exec`` failure on
  a close-on-exec status pipe (fd 3), like :mod:`subprocess` does: ``start()`` fires only once
  the ``exec`` succeeded, or fails with :data:`~wiremsg.vocabulary.SPAWN_FAILED` saying why.
  Killing is ``os.killpg(pid, SIGTERM)``, then SIGKILL after a grace period
  (``sigterm_time``, default :data:`KILL_GRACE`); when the command ends after a kill, what is
  left of its group gets SIGKILL at once.
- **Output.** stdout and stderr are read as they come and decoded with one incremental UTF-8
  decoder per stream (a character split across reads is never split in the text), with
  ``errors="backslashreplace"``: invalid bytes arrive as ``\\xNN`` escapes and never crash
  anything. Complete lines are sent at once; a partial line waits at most
  :data:`FLUSH_DELAY` for its newline; no update carries more than :data:`MAX_CHUNK` bytes of
  UTF-8 (long lines are split, at a newline where there is one in reach). Order is kept per
  stream.
- **Messages** for a command, in order: an ``update`` with a ``header`` (the command line, its
  directory and limits); ``stdout``/``stderr`` updates; a ``header`` when it is killed (and
  why); at the end ``header`` "process killed by signal N" if a signal ended it,
  ``failure_reason`` if a timeout killed it, ``rc`` (``-N`` for signal N), ``elapsed``, and
  then ``complete`` (with ``failure`` after a timeout). A command that fails to start sends
  nothing: ``start()`` fails instead (the ``start_command`` reply carries the error).
- **Back-pressure.** After each send, if the flow is not writable the runner stops reading the
  command's pipes (``pauseProducing``) until ``when_writable()`` fires: the process blocks on a
  full pipe and memory stays bounded. The no-output ``timeout`` does not run while paused (the
  command is not silent, the link is slow); ``max_time`` does.
"""

from __future__ import annotations

import codecs
import os
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from wiremsg.errors import RemoteError
from wiremsg.fileops import FileCommand
from wiremsg.message import JSON, Message
from wiremsg.vocabulary import (
    BAD_BODY,
    COMMAND_VERSION,
    COMMANDS,
    COMPLETE,
    DUPLICATE_COMMAND,
    FILE_COMMANDS,
    INTERRUPT,
    SHELL,
    SPAWN_FAILED,
    START_COMMAND,
    TIMEOUT,
    TIMEOUT_WITHOUT_OUTPUT,
    UNKNOWN_COMMAND,
    UPDATE,
    WORKER_INFO,
    BodyError,
    CommandFailure,
    Complete,
    Interrupt,
    InterruptReply,
    ShellArgs,
    StartCommand,
    Update,
    WorkerInfo,
    canonical_command,
    file_args,
)

__all__ = [
    "FLUSH_DELAY",
    "KILL_GRACE",
    "MAX_CHUNK",
    "CommandError",
    "CommandRunner",
    "Flow",
]

log = Logger()

FLUSH_DELAY = 0.05
"""Seconds a partial line (no newline yet) may wait before it is sent anyway."""
MAX_CHUNK = 64 * 1024
"""The most UTF-8 bytes of stdout or stderr one ``update`` carries."""
KILL_GRACE = 5.0
"""Default seconds between SIGTERM and SIGKILL when a command is killed."""
MAX_SPAWN_ERROR = 4096
"""The most bytes of an ``exec`` error kept from the trampoline."""

_STATUS_FD = 3

# Runs as `python -I -S -c _TRAMPOLINE argv...`: -I ignores PYTHON* variables (the command's
# environment may set them), -S skips site; both keep start-up quick and predictable.
_TRAMPOLINE = """\
import os, signal, sys
try:
    os.setsid()
except OSError:
    pass
for name in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
os.set_inheritable(3, False)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as exc:
    os.write(3, ("%s: %s" % (sys.argv[1], exc.strerror or exc)).encode("utf-8", "replace"))
    os._exit(127)
"""


class Flow(Protocol):
    """What the runner needs to apply back-pressure (a :class:`~wiremsg.worker.Worker` is one)."""

    @property
    def writable(self) -> bool:
        """False while sends are queueing: the runner stops reading output."""

    def when_writable(self) -> Deferred[None]:
        """Fires once sends may go on."""


class _Registry(Protocol):
    def on(self, kind: str, handler: Callable[..., Any]) -> Any: ...


class CommandError(RemoteError):
    """A command could not be started (or a request about one was malformed).

    A :class:`~wiremsg.errors.RemoteError`, so a request handler that raises it answers with
    its ``code``: :data:`~wiremsg.vocabulary.BAD_BODY`,
    :data:`~wiremsg.vocabulary.UNKNOWN_COMMAND`, :data:`~wiremsg.vocabulary.DUPLICATE_COMMAND`
    or :data:`~wiremsg.vocabulary.SPAWN_FAILED`.
    """


def _chunks(data: bytes, limit: int, final: bool) -> tuple[list[str], bytes]:
    """Split UTF-8 ``data`` into texts of at most ``limit`` bytes, preferring to end each at a
    newline and never cutting a character; return them and the rest (a partial line, unless
    ``final``)."""
    out: list[str] = []
    start = 0
    while len(data) - start > limit:
        end = start + limit
        nl = data.rfind(b"\n", start, end)
        if nl >= 0:
            end = nl + 1
        else:
            while data[end] & 0xC0 == 0x80:  # a continuation byte: back up to the char start
                end -= 1
        out.append(data[start:end].decode())
        start = end
    cut = len(data) if final else data.rfind(b"\n", start) + 1
    if cut > start:
        out.append(data[start:cut].decode())
        start = cut
    return out, data[start:]


class _Stream:
    """One of a command's output streams: decode, buffer a partial line, send in chunks."""

    def __init__(self, command: _Command, key: str, wanted: bool) -> None:
        self._command = command
        self.key = key
        self._wanted = wanted
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._pending = b""  # valid UTF-8 not sent yet (re-encoded after decoding)
        self._timer: Any = None
        self.closed = False

    def feed(self, data: bytes) -> None:
        if self._wanted:
            self._pending += self._decoder.decode(data).encode()
            self.pump()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._wanted:
            self._pending += self._decoder.decode(b"", final=True).encode()
        self.pump()

    def pump(self, final: bool = False) -> None:
        """Send what is due: whole lines and full chunks; everything if ``final`` or closed."""
        command = self._command
        if not command.announced:
            return  # held until the header is out
        texts, self._pending = _chunks(
            self._pending, command.runner.max_chunk, final or self.closed
        )
        for text in texts:
            if self.key == "stdout":
                command.send_update(Update(command.command_id, stdout=text))
            else:
                command.send_update(Update(command.command_id, stderr=text))
        if self._pending and self._timer is None:
            self._timer = command.runner.reactor.callLater(
                command.runner.flush_delay, self._flush_partial
            )
        elif not self._pending and self._timer is not None:
            self.cancel()

    def _flush_partial(self) -> None:
        self._timer = None
        self.pump(final=True)

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _Command(ProcessProtocol):
    """One running command: its process, streams, timers and messages."""

    def __init__(self, runner: CommandRunner, command_id: str, args: ShellArgs, workdir: str):
        self.runner = runner
        self.command_id = command_id
        self.args = args
        self.workdir = workdir
        self.started: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.announced = False
        self.process: Any = None
        self.pid: int | None = None
        self._streams = {
            1: _Stream(self, "stdout", args.want_stdout),
            2: _Stream(self, "stderr", args.want_stderr),
        }
        self._spawn_error = b""
        self._held: list[Update] = []
        self._start_time = runner.reactor.seconds()
        self._silence: Any = None
        self._deadline: Any = None
        self._kill_timer: Any = None
        self._killing = False
        self._failure: CommandFailure | None = None
        self._paused = False
        self._flow_wait: Deferred[None] | None = None
        self._send_failed = False
        self._ended = False

    # -- messages ---------------------------------------------------------------------------------

    def send_update(self, update: Update) -> None:
        if not self.announced:
            self._held.append(update)
            return
        self._send(UPDATE, update.to_body())

    def _send(self, kind: str, body: dict[str, JSON]) -> None:
        try:
            self.runner.send(kind, body)
        except Exception:
            if not self._send_failed:  # once per command: the next ones fail alike
                self._send_failed = True
                log.failure("command {id}: cannot send {kind}", id=self.command_id, kind=kind)
        self._check_flow()

    def _header(self) -> str:
        cmd = self.args.command
        lines = [cmd if isinstance(cmd, str) else shlex.join(cmd), f" in dir {self.workdir}"]
        if self.args.timeout is not None:
            lines.append(f" timeout: {self.args.timeout:g} seconds without output")
        if self.args.max_time is not None:
            lines.append(f" max_time: {self.args.max_time:g} seconds")
        if self.args.env:
            lines.append(" env: " + " ".join(sorted(self.args.env)))
        return "\n".join(lines) + "\n"

    def _announce(self) -> None:
        self.announced = True
        self._send(UPDATE, Update(self.command_id, header=self._header()).to_body())
        held, self._held = self._held, []
        for update in held:
            self._send(UPDATE, update.to_body())
        for stream in self._streams.values():
            stream.pump()
        self.started.callback(None)

    # -- the process ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.process = transport
        self.pid = transport.pid
        if self.args.initial_stdin:
            transport.write(self.args.initial_stdin.encode())
        transport.closeStdin()
        reactor = self.runner.reactor
        if self.args.max_time is not None:
            self._deadline = reactor.callLater(self.args.max_time, self._max_time_reached)
        self._arm_silence()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == _STATUS_FD:
            self._spawn_error = (self._spawn_error + data)[:MAX_SPAWN_ERROR]
            return
        stream = self._streams.get(childFD)
        if stream is None:
            return
        if self._silence is not None and self._silence.active():
            self._silence.reset(self.args.timeout)
        stream.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == _STATUS_FD:
            if not self._spawn_error:
                self._announce()
        elif childFD in self._streams:
            self._streams[childFD].close()

    def processEnded(self, reason: Failure) -> None:
        self._ended = True
        exc = reason.value
        code: int | None = getattr(exc, "exitCode", None)
        sig: int | None = getattr(exc, "signal", None)
        rc = code if code is not None else -sig if sig else -1
        self._stop_timers()
        if self._killing:
            self._signal(signal.SIGKILL)  # whatever is left of the group
        self._cancel_flow_wait()
        self.runner._forget(self)
        if not self.announced:
            why = self._spawn_error.decode("utf-8", "replace")
            if not why:
                why = "killed" if self._killing else f"ended (rc {rc})"
                why = f"the process was {why} before its command started"

            for stream in self._streams.values():
                stream.cancel()
            self.started.errback(CommandError(SPAWN_FAILED, why))
            self.ended.callback(None)
            return
        for stream in self._streams.values():
            stream.close()
        if sig:
            self.send_update(Update(self.command_id, header=f"process killed by signal {sig}\n"))
        if self._failure is not None:
            self.send_update(Update(self.command_id, failure_reason=self._failure.code))
        elapsed = self.runner.reactor.seconds() - self._start_time
        self.send_update(Update(self.command_id, rc=rc))
        self.send_update(Update(self.command_id, elapsed=elapsed))
        self._send(COMPLETE, Complete(self.command_id, self._failure).to_body())
        self.ended.callback(None)

    # -- timers and killing -----------------------------------------------------------------------

    def _arm_silence(self) -> None:
        if self.args.timeout is not None and not self._killing:
            self._silence = self.runner.reactor.callLater(self.args.timeout, self._silent)

    def _silent(self) -> None:
        self._silence = None
        seconds = f"{self.args.timeout:g}"
        self.kill(
            f"command timed out: {seconds} seconds without output, killing it\n",
            CommandFailure(TIMEOUT_WITHOUT_OUTPUT, f"no output for {seconds} seconds"),
        )

    def _max_time_reached(self) -> None:
        self._deadline = None
        seconds = f"{self.args.max_time:g}"
        self.kill(
            f"command timed out: {seconds} seconds elapsed (max_time), killing it\n",
            CommandFailure(TIMEOUT, f"ran longer than max_time ({seconds} seconds)"),
        )

    def _stop_timers(self) -> None:
        for timer in (self._silence, self._deadline, self._kill_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._silence = self._deadline = self._kill_timer = None

    def kill(self, header: str, failure: CommandFailure | None = None) -> None:
        """SIGTERM the process group, SIGKILL after the grace period; say why in a header."""
        if self._killing:
            return
        self._killing = True
        self._failure = failure
        self.send_update(Update(self.command_id, header=header))
        self._stop_timers()
        if self._paused:  # drain what the dying process wrote, or its end is never seen
            self._cancel_flow_wait()
            self._resume(None)
        grace = self.args.sigterm_time
        grace = self.runner.kill_grace if grace is None else grace
        if grace <= 0:
            self._signal(signal.SIGKILL)
            return
        self._signal(signal.SIGTERM)
        self._kill_timer = self.runner.reactor.callLater(grace, self._kill_hard)

    def _kill_hard(self) -> None:
        self._kill_timer = None
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
            return
        except ProcessLookupError:
            pass  # no group (yet, or any more): signal the process itself if it is still ours
        except OSError as exc:
            log.warn("command {id}: killpg failed: {exc}", id=self.command_id, exc=exc)
        try:
            self.process.signalProcess(sig)
        except (ProcessExitedAlready, OSError):
            pass

    # -- back-pressure ----------------------------------------------------------------------------

    def _check_flow(self) -> None:
        if self._paused or self._killing or self._ended or self.process is None:
            return
        if self.runner.flow.writable:
            return
        self._paused = True
        self.process.pauseProducing()
        if self._silence is not None and self._silence.active():
            self._silence.cancel()
        self._silence = None
        wait = self.runner.flow.when_writable()
        self._flow_wait = wait
        wait.addCallbacks(self._resume, self._wait_failed)

    def _resume(self, _: object) -> None:
        self._flow_wait = None
        if not self._paused:
            return
        self._paused = False
        self.process.resumeProducing()
        if self._silence is None:
            self._arm_silence()

    def _cancel_flow_wait(self) -> None:
        wait, self._flow_wait = self._flow_wait, None
        if wait is not None:
            wait.cancel()

    def _wait_failed(self, failure: Failure) -> None:
        self._flow_wait = None
        if not isinstance(failure.value, CancelledError):
            log.failure("command {id}: when_writable failed", failure, id=self.command_id)
            self._resume(None)


class CommandRunner:
    """Runs ``shell`` commands for a worker (see the module docstring for the behaviour).

    :param reactor: provides ``spawnProcess`` and ``callLater``/``seconds`` (a real reactor:
        a ``Clock`` cannot spawn).
    :param basedir: every command's workdir lies inside it; created if missing.
    :param send: ``send(kind, body)`` for ``update``, ``complete`` and ``file_*`` messages
        (e.g. ``worker.send``). Its exceptions are logged, never raised into the process
        machinery.
    :param flow: ``writable`` and ``when_writable()`` (e.g. the worker): reading output
        pauses while the flow is not writable.
    :param flush_delay: seconds a partial line may wait for its newline.
    :param max_chunk: the most UTF-8 bytes of output per ``update``.
    :param kill_grace: seconds from SIGTERM to SIGKILL, unless a command says ``sigterm_time``.
    :param python: the interpreter that runs the ``setsid`` trampoline.
    :param request: ``request(kind, body, timeout)`` → Deferred of the reply (e.g.
        ``worker.request``), for ``downloadFile``'s ``file_read``; without it downloads fail.
    """

    def __init__(
        self,
        reactor: Any,
        basedir: str | os.PathLike[str],
        send: Callable[[str, JSON], object],
        flow: Flow,
        *,
        flush_delay: float = FLUSH_DELAY,
        max_chunk: int = MAX_CHUNK,
        kill_grace: float = KILL_GRACE,
        python: str = sys.executable,
        request: Callable[[str, JSON, float | None], Deferred[Message]] | None = None,
    ) -> None:
        if max_chunk < 4:
            raise ValueError("max_chunk must hold at least one character (4 bytes)")
        self.reactor = reactor
        self.basedir = os.path.abspath(os.fspath(basedir))
        self.send = send
        self.flow = flow
        self.flush_delay = flush_delay
        self.max_chunk = max_chunk
        self.kill_grace = kill_grace
        self.python = python
        self.request = request
        self._commands: dict[str, _Command] = {}
        self._files: dict[str, FileCommand] = {}

    @property
    def running(self) -> frozenset[str]:
        """The ids of the commands started and not yet complete."""
        return frozenset(self._commands) | frozenset(self._files)

    def start(self, command_id: str, args: ShellArgs | Mapping[str, Any]) -> Deferred[None]:
        """Start a ``shell`` command; fires once its process runs (its ``exec`` succeeded).

        ``args`` is a :class:`~wiremsg.vocabulary.ShellArgs` or its JSON object. Fails with
        :class:`CommandError`: ``bad_body`` (malformed args, or a workdir that leaves the
        basedir, symlinks included), ``duplicate_command`` (the id is running), or
        ``spawn_failed`` (no such program, not executable, workdir not creatable, ...). A
        command that fails to start sends no messages.
        """
        try:
            return self._start(command_id, args)
        except CommandError as exc:
            return fail(exc)

    def interrupt(self, command_id: str, why: str = "") -> bool:
        """Kill a command's process group (SIGTERM, then SIGKILL after the grace period).

        The command then completes as usual, with a header saying it was interrupted and the
        ``rc`` of the signal. Returns False if no such command is running.
        """
        file_command = self._files.get(command_id)
        if file_command is not None:
            file_command.interrupt()
            return True
        command = self._commands.get(command_id)
        if command is None:
            return False
        command.kill(f"command interrupted{': ' + why if why else ''}, killing it\n")
        return True

    def stop_all(self, why: str = "worker stopping") -> Deferred[None]:
        """Interrupt every command; fires once all have completed."""
        ended = [command.ended for command in self._commands.values()]
        ended += [command.ended for command in self._files.values()]
        for command_id in list(self.running):
            self.interrupt(command_id, why)
        done: Deferred[None] = DeferredList(ended).addCallback(lambda _: None)
        return done

    def info(self, **extra: JSON) -> WorkerInfo:
        """This worker's :class:`~wiremsg.vocabulary.WorkerInfo` (``extra``: more facts)."""
        from wiremsg import __version__

        return WorkerInfo(
            commands=dict.fromkeys(COMMANDS, COMMAND_VERSION),
            basedir=self.basedir,
            os=sys.platform,
            version=__version__,
            extra=extra,
        )

    def serve(self, worker: _Registry, info: Mapping[str, JSON] | None = None) -> None:
        """Answer ``start_command``, ``interrupt`` and ``worker_info`` on ``worker`` (anything
        with ``on(kind, handler)``, such as a :class:`~wiremsg.worker.Worker`); ``info``
        adds facts to the ``worker_info`` reply."""
        extra = dict(info or {})
        worker.on(START_COMMAND, self._on_start_command)
        worker.on(INTERRUPT, self._on_interrupt)
        worker.on(WORKER_INFO, lambda message: self.info(**extra).to_body())

    # -- internals --------------------------------------------------------------------------------

    def _on_start_command(self, message: Message) -> Deferred[dict[str, JSON]]:
        try:
            request = StartCommand.from_body(message.body)
        except BodyError as exc:
            return fail(CommandError(BAD_BODY, str(exc)))
        command = canonical_command(request.command)
        if command in FILE_COMMANDS:
            return self.start_file(request.command_id, command, request.args).addCallback(
                lambda _: {}
            )
        if command != SHELL:
            return fail(CommandError(UNKNOWN_COMMAND, f"no command {request.command!r} here"))
        return self.start(request.command_id, request.args).addCallback(lambda _: {})

    def start_file(self, command_id: str, command: str, args: Mapping[str, Any]) -> Deferred[None]:
        """Start one of Buildbot's file commands (:data:`~wiremsg.vocabulary.FILE_COMMANDS`);
        fires at once when its arguments are sound, and it then runs to its ``complete``.

        Fails with :class:`CommandError`: ``bad_body`` (malformed args), ``duplicate_command``.
        """
        try:
            self._check_id(command_id)
            checked = file_args(command, dict(args))
        except CommandError as exc:
            return fail(exc)
        except BodyError as exc:
            return fail(CommandError(BAD_BODY, str(exc)))
        file_command = FileCommand(self, command_id, canonical_command(command), checked)
        self._files[command_id] = file_command
        file_command.ended.addBoth(lambda _: self._files.pop(command_id, None))
        file_command.run()
        return succeed(None)

    def _check_id(self, command_id: str) -> None:
        if not isinstance(command_id, str) or not command_id:
            raise CommandError(BAD_BODY, "command_id must be a non-empty string")
        if command_id in self.running:
            raise CommandError(DUPLICATE_COMMAND, f"command {command_id!r} is already running")

    def _on_interrupt(self, message: Message) -> dict[str, JSON]:
        try:
            request = Interrupt.from_body(message.body)
        except BodyError as exc:
            raise CommandError(BAD_BODY, str(exc)) from None
        return InterruptReply(self.interrupt(request.command_id, request.why)).to_body()

    def _start(self, command_id: str, raw: ShellArgs | Mapping[str, Any]) -> Deferred[None]:
        self._check_id(command_id)
        try:
            args = raw if isinstance(raw, ShellArgs) else ShellArgs.from_body(dict(raw))
        except (BodyError, TypeError, ValueError) as exc:
            raise CommandError(BAD_BODY, str(exc)) from None
        workdir = self._workdir(args.workdir)
        env = dict(os.environ)
        for name, value in args.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        command = _Command(self, command_id, args, workdir)
        argv = [self.python, "-I", "-S", "-c", _TRAMPOLINE, *args.argv]
        self._commands[command_id] = command
        try:
            command.process = self.reactor.spawnProcess(
                command,
                self.python,
                argv,
                env=env,
                path=workdir,
                usePTY=False,
                childFDs={0: "w", 1: "r", 2: "r", _STATUS_FD: "r"},
            )
        except Exception as exc:
            del self._commands[command_id]
            raise CommandError(SPAWN_FAILED, f"cannot spawn {args.argv[0]!r}: {exc}") from None
        return command.started

    def _workdir(self, relative: str) -> str:
        path = os.path.normpath(os.path.join(self.basedir, relative))
        self._check_inside(relative, path)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise CommandError(SPAWN_FAILED, f"cannot create workdir {path}: {exc}") from None
        self._check_inside(relative, path)
        return path

    def _check_inside(self, relative: str, path: str) -> None:
        base = os.path.realpath(self.basedir)
        real = os.path.realpath(path)
        if os.path.commonpath([base, real]) != base:
            raise CommandError(BAD_BODY, f"workdir {relative!r} leads outside {self.basedir}")

    def _forget(self, command: _Command) -> None:
        if self._commands.get(command.command_id) is command:
            del self._commands[command.command_id]
