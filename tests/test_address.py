"""Addresses (DESIGN §4): every scheme parses, str() round-trips, each mistake names its part."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiremsg.address import Address, parse_address
from wiremsg.errors import AddressError

# -- good addresses ------------------------------------------------------------------------------

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("amp://127.0.0.1:9989", {"scheme": "amp", "host": "127.0.0.1", "port": 9989}),
    ("amp://localhost:0", {"scheme": "amp", "host": "localhost", "port": 0}),
    ("amp://[::1]:9989", {"scheme": "amp", "host": "::1", "port": 9989}),
    (
        "amp+tls://m.example.org:9990?ca=/etc/ca.pem&cert=/etc/w.pem&key=/etc/w.key",
        {
            "scheme": "amp+tls",
            "host": "m.example.org",
            "port": 9990,
            "params": {"ca": "/etc/ca.pem", "cert": "/etc/w.pem", "key": "/etc/w.key"},
        },
    ),
    ("amp+unix:///run/wiremsg.sock", {"scheme": "amp+unix", "path": "/run/wiremsg.sock"}),
    ("zmq://0.0.0.0:5555", {"scheme": "zmq", "host": "0.0.0.0", "port": 5555}),
    ("zmq+ipc:///tmp/wiremsg.ipc", {"scheme": "zmq+ipc", "path": "/tmp/wiremsg.ipc"}),
    (
        "amqp://user:pass@broker:5672/vhost",
        {
            "scheme": "amqp",
            "host": "broker",
            "port": 5672,
            "path": "/vhost",
            "user": "user",
            "password": "pass",
        },
    ),
    ("amqp://broker:5672/", {"scheme": "amqp", "host": "broker", "port": 5672, "path": "/"}),
    ("amqp://broker", {"scheme": "amqp", "host": "broker", "port": 5672, "path": "/"}),
    (
        "amqps://u:p@broker/ci",
        {"scheme": "amqps", "host": "broker", "port": 5671, "path": "/ci", "user": "u"},
    ),
    ("memory://test-bus", {"scheme": "memory", "name": "test-bus", "host": "", "port": None}),
    (
        "amp://127.0.0.1:9989?via=ssh://user@gateway:22&identity=/path/key",
        {
            "scheme": "amp",
            "host": "127.0.0.1",
            "port": 9989,
            "params": {"via": "ssh://user@gateway:22", "identity": "/path/key"},
        },
    ),
    ("zmq://h:1?via=ssh://gw", {"params": {"via": "ssh://gw"}}),
    ("AMP://Host.Example:1", {"scheme": "amp", "host": "host.example", "port": 1}),
    ("thirdparty://h:7/x", {"scheme": "thirdparty", "host": "h", "port": 7}),
]


@pytest.mark.parametrize(("url", "fields"), GOOD, ids=[u for u, _ in GOOD])
def test_parses(url: str, fields: dict[str, Any]) -> None:
    addr = parse_address(url)
    for name, value in fields.items():
        got = getattr(addr, name)
        assert (dict(got) if name == "params" else got) == value, name


@pytest.mark.parametrize(("url", "fields"), GOOD, ids=[u for u, _ in GOOD])
def test_str_round_trip(url: str, fields: dict[str, Any]) -> None:
    addr = parse_address(url)
    again = parse_address(str(addr))
    assert again == addr
    assert str(again) == str(addr)
    assert hash(again) == hash(addr)


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("amp://127.0.0.1:9989", "amp://127.0.0.1:9989"),
        ("amqp://broker", "amqp://broker:5672/"),
        ("amqp://u%40x:p%3Aw@broker/v", "amqp://u%40x:p%3Aw@broker:5672/v"),
        ("amp://[::1]:1", "amp://[::1]:1"),
        ("memory://bus", "memory://bus"),
        ("amp+unix:///tmp/a%3Fb%23c%25d", "amp+unix:///tmp/a%3Fb%23c%25d"),
    ],
)
def test_str_form(url: str, text: str) -> None:
    assert str(parse_address(url)) == text


def test_user_and_password_are_unquoted() -> None:
    addr = parse_address("amqp://u%40x:p%3Aw%2F@broker/v")
    assert (addr.user, addr.password) == ("u@x", "p:w/")


def test_path_with_url_specials_round_trips() -> None:
    addr = parse_address("amp+unix:///tmp/a%3Fb%23c%25d e")
    assert addr.path == "/tmp/a?b#c%d e"
    assert parse_address(str(addr)) == addr
    assert parse_address(str(addr)).path == addr.path


def test_amqp_vhost_slash() -> None:
    addr = parse_address("amqp://broker/%2F")
    assert addr.path == "//"  # vhost "/" after the leading separator
    assert parse_address(str(addr)).path == "//"


def test_properties() -> None:
    assert parse_address("amp+tls://h:1").backend == "amp"
    assert parse_address("zmq+ipc:///x").backend == "zmq"
    assert parse_address("amp://h:1").is_tcp
    assert parse_address("amqps://h").is_tcp
    assert not parse_address("amp+unix:///x").is_tcp
    assert not parse_address("memory://x").is_tcp


def test_with_port() -> None:
    addr = parse_address("amp+tls://h:0?ca=/c")
    bound = addr.with_port(41234)
    assert bound.port == 41234 and addr.port == 0
    assert str(bound) == "amp+tls://h:41234?ca=/c"


def test_immutable_and_hashable() -> None:
    addr = parse_address("amp://h:1?a=b")
    with pytest.raises(AttributeError):
        addr.port = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        addr.params["a"] = "c"  # type: ignore[index]
    assert {addr: 1}[parse_address("amp://h:1?a=b")] == 1
    assert addr != "amp://h:1?a=b"


def test_address_passes_through() -> None:
    addr = parse_address("memory://x")
    assert parse_address(addr) is addr
    assert isinstance(addr, Address)


@given(
    st.sampled_from(["amp", "amp+tls", "zmq", "amqp", "amqps"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    st.integers(0, 65535),
    st.dictionaries(
        st.from_regex(r"[a-z_]{1,8}", fullmatch=True).filter(lambda k: k != "via"),
        st.text(max_size=10),
        max_size=3,
    ),
)
def test_round_trip_property(scheme: str, host: str, port: int, params: dict[str, str]) -> None:
    addr = Address(scheme=scheme, host=host, port=port, params=params)
    if scheme.startswith("amqp"):
        addr = Address(scheme=scheme, host=host, port=port, path="/", params=params)
    again = parse_address(str(addr))
    assert (again.scheme, again.host, again.port) == (scheme, host, port)
    assert dict(again.params) == params


# -- bad addresses ------------------------------------------------------------------------------

BAD: list[tuple[Any, str]] = [
    ("", "address"),
    (None, "address"),
    ("127.0.0.1:9989", "scheme"),
    ("amp:/h:1", "scheme"),
    ("1amp://h:1", "scheme"),
    ("a_b://h:1", "scheme"),
    ("amp://h:99999", "port"),
    ("amp://h:port", "port"),
    ("amp://h:-1", "port"),
    ("amp://:9989", "host"),
    ("zmq://:5555", "host"),
    ("amp://h", "port"),
    ("zmq://h", "port"),
    ("amp://h:1/path", "path"),
    ("zmq://h:1/x", "path"),
    ("amp+unix://host/path", "host"),
    ("zmq+ipc://host/x", "host"),
    ("amp+unix:///", "path"),
    ("zmq+ipc://", "path"),
    ("memory://", "name"),
    ("memory://bus/extra", "path"),
    ("amp://h:1?via=http://gw:80", "via"),
    ("amp://h:1?via=ssh://", "via"),
    ("amp://h:1?via=gateway", "via"),
    ("amp://h:1?via=ssh://gw:22/path", "via"),
    ("amp://h:1?via=ssh://gw:70000", "via"),
    ("amp+unix:///s?via=ssh://gw", "via"),
    ("memory://bus?via=ssh://gw", "via"),
    ("amp://h:1?novalue", "query"),
    ("amp://h:1#frag", "address"),
]


@pytest.mark.parametrize(("url", "part"), BAD, ids=[repr(u) for u, _ in BAD])
def test_malformed(url: Any, part: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(url)
    err = info.value
    assert err.part == part
    assert err.problem
    assert f"bad {part} in address" in str(err)
    assert isinstance(err, ValueError)


def test_error_keeps_the_address() -> None:
    with pytest.raises(AddressError) as info:
        parse_address("amp://h:1/x")
    assert info.value.address == "amp://h:1/x"
    assert "amp addresses take no path" in str(info.value)


def test_via_error_says_what_is_wrong_with_the_tunnel() -> None:
    with pytest.raises(AddressError, match="only ssh:// tunnels"):
        parse_address("amp://h:1?via=amp://gw:1")
    with pytest.raises(AddressError, match="missing host") as info:
        parse_address("amp://h:1?via=ssh://:22")
    assert info.value.part == "via"


def test_redacted_hides_passwords_and_secrets_only() -> None:
    from wiremsg.address import parse_address

    addr = parse_address("zmq://h:1?curve_secret=abc&curve_server=keys/m.key&curve_clients=keys")
    assert (
        addr.redacted() == "zmq://h:1?curve_secret=***&curve_server=keys/m.key&curve_clients=keys"
    )
    amqp = parse_address("amqp://guest:hunter2@localhost:5672/vhost")
    assert amqp.redacted() == "amqp://guest:***@localhost:5672/vhost"
    assert "hunter2" not in amqp.redacted() and str(amqp).count("hunter2") == 1
