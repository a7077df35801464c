"""Addresses are URLs whose scheme names the backend (DESIGN §4).

``amp://host:port``, ``amp+tls://host:port?ca=..&cert=..&key=..``, ``amp+unix:///path``,
``zmq://host:port``, ``zmq+ipc:///path``, ``amqp://user:pass@host:5672/vhost``, ``amqps://...``,
``memory://name``. The part of the scheme before ``+`` is the backend's registry name; the rest
is its variant. A tunnel is a parameter on any TCP address: ``?via=ssh://user@gw:22``.

:func:`parse_address` returns an immutable :class:`Address` or raises one
:class:`~wiremsg.errors.AddressError` that names the wrong part. Schemes it does not know are
accepted in the generic ``scheme://host:port/path?query`` shape so that third-party backends
need nothing from this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from wiremsg.errors import AddressError

# How each built-in scheme locates its peer: by host and port, by a filesystem path, by a name.
_TCP, _PATH, _NAME = "tcp", "path", "name"
_KINDS: dict[str, str] = {
    "amp": _TCP,
    "amp+tls": _TCP,
    "amp+unix": _PATH,
    "zmq": _TCP,
    "zmq+ipc": _PATH,
    "amqp": _TCP,
    "amqps": _TCP,
    "memory": _NAME,
}
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "ssh": 22}
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9.-]*(\+[a-z0-9.-]+)?$")


@dataclass(frozen=True)
class Address:
    """A parsed address. Compare and hash by value; ``str()`` gives back a URL.

    :ivar scheme: the full scheme, e.g. ``amp+tls``.
    :ivar host: host name or IP for TCP schemes (IPv6 without brackets), else ``""``.
    :ivar port: port for TCP schemes (0 asks the system for one when listening), else ``None``.
    :ivar path: filesystem path for unix/ipc schemes, vhost for amqp, ``""`` otherwise.
    :ivar name: the name of a ``memory://`` address.
    :ivar user: the user part, if any.
    :ivar password: the password part, if any.
    :ivar params: the query parameters, read-only.
    """

    scheme: str
    host: str = ""
    port: int | None = None
    path: str = ""
    name: str = ""
    user: str | None = None
    password: str | None = None
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __hash__(self) -> int:
        return hash(
            (
                self.scheme,
                self.host,
                self.port,
                self.path,
                self.name,
                self.user,
                tuple(sorted(self.params.items())),
            )
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return str(self) == str(other)

    @property
    def backend(self) -> str:
        """The registry name of the backend: the scheme up to any ``+``."""
        return self.scheme.split("+", 1)[0]

    @property
    def is_tcp(self) -> bool:
        """True when the address names a host and port (a tunnel may be put under it)."""
        return _KINDS.get(self.scheme, _TCP) == _TCP and bool(self.host)

    def redacted(self) -> str:
        """The URL with the password and every ``*secret*`` parameter replaced by ``***``: what
        logs, status pages and error messages show."""
        params = {k: ("***" if "secret" in k.lower() else v) for k, v in self.params.items()}
        password = None if self.password is None else "***"
        return str(replace(self, password=password, params=MappingProxyType(params)))

    def with_port(self, port: int) -> Address:
        """Return a copy with ``port`` set (a listener uses this to report port 0 resolved)."""
        return replace(self, port=port)

    def __str__(self) -> str:
        auth = ""
        if self.user is not None:
            auth = quote(self.user, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="*")
            auth += "@"
        if self.name:
            netloc = self.name
        elif self.host:
            host = f"[{self.host}]" if ":" in self.host else self.host
            netloc = host if self.port is None else f"{host}:{self.port}"
        else:
            netloc = ""
        query = "&".join(
            f"{quote(k, safe='')}={quote(v, safe='/:@*')}" for k, v in self.params.items()
        )
        path = quote(self.path, safe="/:@!$&'()*+,;=")  # parse_address unquotes it
        return f"{self.scheme}://{auth}{netloc}{path}" + (f"?{query}" if query else "")


def parse_address(url: str | Address) -> Address:
    """Parse ``url`` into an :class:`Address`.

    :raises AddressError: naming the wrong part (``address``, ``scheme``, ``host``, ``port``,
        ``path``, ``name``, ``query`` or ``via``).
    """
    if isinstance(url, Address):
        return url
    if not isinstance(url, str) or not url:
        raise AddressError("address", repr(url), "must be a non-empty string URL")
    if "://" not in url:
        raise AddressError("scheme", url, "missing '://' (expected e.g. amp://host:port)")
    scheme = url.split("://", 1)[0].lower()
    if not _SCHEME_RE.match(scheme):
        raise AddressError("scheme", url, f"{scheme!r} is not a valid scheme")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressError("port", url, str(exc)) from None
    if parts.fragment:
        raise AddressError("address", url, "fragments ('#...') are not allowed")
    try:
        params = dict(
            parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        )
    except ValueError as exc:
        raise AddressError("query", url, str(exc)) from None
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    kind = _KINDS.get(scheme, _TCP)
    if kind != _TCP and "via" in params:
        raise AddressError("via", url, "a tunnel goes only under a TCP address (host:port)")
    host = parts.hostname or ""
    path = unquote(parts.path)

    if kind == _NAME:
        name = parts.netloc
        if not name:
            raise AddressError("name", url, "memory addresses need a name: memory://NAME")
        if path not in ("", "/"):
            raise AddressError("path", url, "memory addresses take no path")
        return Address(scheme=scheme, name=name, params=MappingProxyType(params))
    if kind == _PATH:
        if parts.netloc:
            raise AddressError("host", url, f"{scheme} takes a path, not a host: {scheme}:///path")
        if not path or path == "/":
            raise AddressError("path", url, f"{scheme} needs a socket path: {scheme}:///path")
        return Address(scheme=scheme, path=path, params=MappingProxyType(params))

    if not host:
        raise AddressError("host", url, "missing host (expected host:port)")
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            raise AddressError("port", url, "missing port (use :0 to let the system choose)")
    if scheme in ("amqp", "amqps"):
        path = path or "/"
    elif scheme in _KINDS or scheme == "ssh":  # a third-party scheme keeps its path
        if path not in ("", "/"):
            raise AddressError("path", url, f"{scheme} addresses take no path")
        path = ""
    via = params.get("via")
    if via is not None:
        try:
            tunnel = parse_address(via)
        except AddressError as exc:
            raise AddressError("via", url, exc.problem) from None
        if tunnel.scheme != "ssh":
            raise AddressError("via", url, f"only ssh:// tunnels exist, not {tunnel.scheme}://")
    return Address(
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        user=user,
        password=password,
        params=MappingProxyType(params),
    )
