"""The backend registry: a URL scheme to a :class:`~wiremsg.backends.base.Backend` class.

Backends register under the entry-point group ``wiremsg.backends``; the entry point's name is
the backend name, i.e. the scheme up to any ``+`` (``amp`` serves ``amp``, ``amp+tls`` and
``amp+unix``). The built-in backends are also known statically, so a source checkout that was
never installed still finds them. A registered backend whose dependency is missing raises
:class:`~wiremsg.errors.BackendUnavailable` naming the extra to install.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from wiremsg.address import Address, parse_address
from wiremsg.backends.base import Backend
from wiremsg.errors import BackendNotFound, BackendUnavailable

ENTRY_POINT_GROUP = "wiremsg.backends"
"""The entry-point group third-party backends register under."""

_BUILTIN: dict[str, tuple[str, str]] = {
    # name: ("module:Class", extra that provides its dependency)
    "memory": ("wiremsg.backends.memory:MemoryBackend", ""),
    "amp": ("wiremsg.backends.amp:AMPBackend", ""),
    "zmq": ("wiremsg.backends._zmq:ZMQBackend", "zmq"),
    "amqp": ("wiremsg.backends._amqp:AMQPBackend", "amqp"),
}
_ALIASES = {"amqps": "amqp"}


def _load(target: str, name: str, extra: str) -> type[Backend]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise BackendNotFound(f"backend {name!r} is not available in this version") from None
        hint = f"pip install 'wiremsg[{extra}]'" if extra else f"pip install {exc.name}"
        raise BackendUnavailable(
            f"backend {name!r} needs {exc.name!r}, which is not installed: {hint}"
        ) from exc
    cls: type[Backend] = getattr(module, attr)
    return cls


def available() -> list[str]:
    """Names of every backend known, built in or registered (not all may be loadable)."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def backend_class(name_or_scheme: str) -> type[Backend]:
    """Return the backend class for a name or scheme (``"amp+tls"`` finds ``amp``).

    :raises BackendNotFound: nothing is registered under that name.
    :raises BackendUnavailable: it is registered but its dependency is missing; the message
        says which extra to install.
    """
    name = name_or_scheme.split("+", 1)[0].lower()
    name = _ALIASES.get(name, name)
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name in _BUILTIN:
        target, extra = _BUILTIN[name]
        return _load(target, name, extra)
    if name in eps:
        ep = eps[name]
        dist = ep.dist.name if ep.dist is not None else "the package that registers it"
        try:
            cls: type[Backend] = ep.load()
        except ImportError as exc:
            raise BackendUnavailable(
                f"backend {name!r} (from {dist}) cannot be loaded: {exc}"
            ) from exc
        return cls
    raise BackendNotFound(
        f"no backend for scheme {name_or_scheme!r}; known: {', '.join(available())}"
    )


def backend_for(address: str | Address, reactor: Any) -> tuple[Backend, Address]:
    """Parse ``address`` and return a backend instance for it, with the parsed address."""
    addr = parse_address(address)
    return backend_class(addr.scheme)(reactor), addr


class BackendPool:
    """One backend instance per backend name, made on first use, for one reactor.

    :param reactor: what every backend made here runs on.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._backends: dict[str, Backend] = {}

    def get(self, scheme: str) -> Backend:
        """The backend serving ``scheme`` (``amp+tls`` shares ``amp``'s instance).

        :raises BackendNotFound, BackendUnavailable: as :func:`backend_class`.
        """
        name = scheme.split("+", 1)[0].lower()
        name = _ALIASES.get(name, name)
        backend = self._backends.get(name)
        if backend is None:
            backend = self._backends[name] = backend_class(scheme)(self.reactor)
        return backend
