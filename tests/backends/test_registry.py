"""The backend registry: names, schemes, entry points, and missing dependencies."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

import wiremsg.backends as registry
from wiremsg.address import Address
from wiremsg.backends.memory import MemoryBackend
from wiremsg.errors import AddressError, BackendNotFound, BackendUnavailable


@pytest.mark.parametrize("name", ["memory", "MEMORY", "memory+anything"])
def test_memory_found_by_name_and_scheme(name: str) -> None:
    assert registry.backend_class(name) is MemoryBackend


def test_memory_is_listed() -> None:
    assert "memory" in registry.available()
    assert registry.available() == sorted(registry.available())


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(BackendNotFound) as caught:
        registry.backend_class("pigeon+tls")
    message = str(caught.value)
    assert "'pigeon+tls'" in message
    for known in registry.available():
        assert known in message


def _fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_missing_dependency_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_module(tmp_path, monkeypatch, "wiremsg_fake_pigeon", "import pigeon_sdk_not_installed\n")
    monkeypatch.setitem(
        registry._BUILTIN, "pigeon", ("wiremsg_fake_pigeon:PigeonBackend", "pigeon")
    )
    with pytest.raises(BackendUnavailable) as caught:
        registry.backend_class("pigeon+tls")
    message = str(caught.value)
    assert "pip install 'wiremsg[pigeon]'" in message
    assert "pigeon_sdk_not_installed" in message
    assert isinstance(caught.value, ImportError)


def test_missing_dependency_without_extra_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_module(tmp_path, monkeypatch, "wiremsg_fake_owl", "import owl_sdk_not_installed\n")
    monkeypatch.setitem(registry._BUILTIN, "owl", ("wiremsg_fake_owl:OwlBackend", ""))
    with pytest.raises(BackendUnavailable, match="pip install owl_sdk_not_installed"):
        registry.backend_class("owl")


def test_builtin_module_absent_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._BUILTIN, "gone", ("wiremsg.backends._gone:GoneBackend", "x"))
    with pytest.raises(BackendNotFound, match="not available in this version"):
        registry.backend_class("gone")


def _entry_points(*eps: EntryPoint) -> Any:
    def fake(*, group: str) -> list[EntryPoint]:
        assert group == registry.ENTRY_POINT_GROUP
        return list(eps)

    return fake


def test_third_party_entry_point_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_module(
        tmp_path,
        monkeypatch,
        "wiremsg_fake_raven",
        "from wiremsg.backends.memory import MemoryBackend\n"
        "class RavenBackend(MemoryBackend):\n"
        "    schemes = ('raven',)\n",
    )
    ep = EntryPoint("raven", "wiremsg_fake_raven:RavenBackend", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", _entry_points(ep))
    cls = registry.backend_class("raven")
    assert cls.__name__ == "RavenBackend" and cls.schemes == ("raven",)
    assert "raven" in registry.available()


def test_third_party_entry_point_with_missing_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_module(tmp_path, monkeypatch, "wiremsg_fake_crow", "import crow_sdk_not_installed\n")
    ep = EntryPoint("crow", "wiremsg_fake_crow:CrowBackend", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", _entry_points(ep))
    with pytest.raises(BackendUnavailable) as caught:
        registry.backend_class("crow")
    assert "'crow'" in str(caught.value) and "crow_sdk_not_installed" in str(caught.value)


def test_installed_entry_point_for_memory_matches_builtin() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    if "memory" not in eps:
        pytest.skip("wiremsg is not installed (pip install -e .), so no entry points")
    assert eps["memory"].load() is MemoryBackend


@pytest.mark.parametrize("address", ["memory://abc", Address(scheme="memory", name="abc")])
def test_backend_for_parses_and_builds(address: str | Address) -> None:
    clock = Clock()
    backend, parsed = registry.backend_for(address, clock)
    assert isinstance(backend, MemoryBackend)
    assert backend.reactor is clock
    assert parsed == Address(scheme="memory", name="abc")
    assert parsed.name == "abc"


def test_backend_for_bad_address_and_unknown_scheme() -> None:
    with pytest.raises(AddressError):
        registry.backend_for("memory:/nope", Clock())
    with pytest.raises(BackendNotFound):
        registry.backend_for("pigeon://host:1", Clock())


def test_backend_pool_makes_one_instance_per_backend_name() -> None:
    from twisted.internet.task import Clock

    from wiremsg.backends import BackendPool
    from wiremsg.backends.memory import MemoryBackend

    clock = Clock()
    pool = BackendPool(clock)
    first = pool.get("memory")
    assert isinstance(first, MemoryBackend) and first.reactor is clock
    assert pool.get("MEMORY") is first
    with pytest.raises(BackendNotFound):
        pool.get("carrier-pigeon")
