"""Unit tests for :mod:`wiremsg.window`: the send window's bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiremsg.window import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, SendWindow


def test_defaults() -> None:
    window = SendWindow()
    assert (window.max_messages, window.max_bytes) == (DEFAULT_MAX_MESSAGES, DEFAULT_MAX_BYTES)
    assert (window.messages, window.bytes) == (0, 0)
    assert not window.full


@pytest.mark.parametrize(("messages", "size"), [(0, 10), (1, 0), (0, 0), (-1, 5), (5, -1)])
def test_bounds_below_one_are_refused(messages: int, size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SendWindow(messages, size)


def test_message_bound() -> None:
    window = SendWindow(max_messages=2, max_bytes=1000)
    window.sent(10)
    assert window.fits(10) and not window.full
    window.sent(10)
    assert (window.messages, window.bytes) == (2, 20)
    assert not window.fits(0) and window.full
    window.acked(10)
    assert (window.messages, window.bytes) == (1, 10)
    assert window.fits(10) and not window.full


def test_byte_bound_is_inclusive() -> None:
    window = SendWindow(max_messages=10, max_bytes=100)
    window.sent(60)
    assert window.fits(40)
    assert not window.fits(41)
    assert not window.full  # an empty message still fits
    window.sent(40)
    assert window.bytes == 100
    assert not window.full  # at the bound exactly, an empty message still fits
    assert not window.fits(1)
    window.sent(1)
    assert window.full


def test_a_lone_message_larger_than_the_byte_window_goes_alone() -> None:
    window = SendWindow(max_messages=10, max_bytes=100)
    assert window.fits(10_000)
    window.sent(10_000)
    assert window.full
    assert not window.fits(1)
    window.acked(10_000)
    assert (window.messages, window.bytes) == (0, 0)
    assert window.fits(10_000)


def test_reset_forgets_everything_in_flight() -> None:
    window = SendWindow(max_messages=1, max_bytes=100)
    window.sent(50)
    assert window.full
    window.reset()
    assert (window.messages, window.bytes) == (0, 0)
    assert not window.full


def test_acked_takes_several_messages_at_once() -> None:
    window = SendWindow(max_messages=3, max_bytes=1000)
    for size in (10, 20, 30):
        window.sent(size)
    assert window.full
    window.acked(30, count=2)
    assert (window.messages, window.bytes) == (1, 30)
    assert window.fits(970) and not window.fits(971)


@given(
    st.integers(1, 5),
    st.integers(1, 100),
    st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=40),
)
def test_full_is_always_not_fits_zero(max_messages: int, max_bytes: int, ops: Any) -> None:
    window = SendWindow(max_messages, max_bytes)
    flight: list[int] = []
    for send, size in ops:
        if send and window.fits(size):
            window.sent(size)
            flight.append(size)
        elif flight:
            window.acked(flight.pop(0))
        assert window.full == (not window.fits(0))
    window.reset()
    assert not window.full
