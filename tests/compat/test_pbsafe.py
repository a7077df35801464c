"""PB safety: only plain data, references and failures are unjellied; sends never raise."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.spread import banana, jelly, pb
from wiremsg.compat.pbsafe import MAX_STRING, PB_SECURITY, call, describe
from wiremsg.compat.translate import MAX_TEXT

from wiremsg.vocabulary import MAX_BLOCKSIZE


class Sneaky(pb.Copyable):
    """A class a hostile peer might name, hoping we build one."""


class Evil:
    def __reduce__(self) -> Any:  # pragma: no cover - must never run
        raise AssertionError("unjellied")


def test_plain_data_passes() -> None:
    value = {"a": [1, 2.5, None, True, b"bytes", "text", (1, 2)], "b": {"c": "d"}}
    assert jelly.unjelly(jelly.jelly(value), PB_SECURITY) == value


@pytest.mark.parametrize("value", [Sneaky(), Evil(), {"x": Evil()}, [Sneaky]])
def test_classes_and_instances_are_refused(value: Any) -> None:
    with pytest.raises(jelly.InsecureJelly):
        jelly.unjelly(jelly.jelly(value), PB_SECURITY)


def test_what_the_bridge_sends_fits_banana() -> None:
    assert MAX_STRING == banana.SIZE_LIMIT == 640 * 1024
    assert MAX_BLOCKSIZE < MAX_STRING and MAX_TEXT < MAX_STRING


def test_call_never_raises() -> None:
    class Broken:
        def callRemote(self, *args: Any, **kw: Any) -> Any:
            raise banana.BananaError("string too long")

    d = call(Broken(), "write", b"x")
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert "BananaError" in describe(failures[0])
