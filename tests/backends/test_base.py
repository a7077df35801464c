"""BaseLink's delivery of frames received together (``_deliver_all``), on a stub backend."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from wiremsg.backends.base import BaseLink, CloseReason


class StubLink(BaseLink):
    """A link whose channel is a list: what a backend would write, and whether it closed."""

    def __init__(self) -> None:
        self.clock = Clock()
        super().__init__(self.clock, "stub")
        self.written: list[bytes] = []
        self.shut: list[str] = []

    def _transmit(self, frame: bytes) -> None:
        self.written.append(frame)

    def _shutdown(self, reason: str) -> None:
        self.shut.append(reason)
        self._notify_closed(CloseReason(reason, local=True))


class Plain:
    """A receiver with frame_received only."""

    def __init__(self, link: StubLink | None = None, close_on: bytes | None = None) -> None:
        self.frames: list[bytes] = []
        self.closes: list[CloseReason] = []
        self.link, self.close_on = link, close_on

    def frame_received(self, frame: bytes) -> None:
        self.frames.append(frame)
        if frame == self.close_on and self.link is not None:
            self.link.close("enough")

    def link_closed(self, reason: CloseReason) -> None:
        self.closes.append(reason)


class Batch(Plain):
    """A receiver that takes batches too, and records how they came."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.batches: list[list[bytes]] = []
        self.fail = fail

    def frames_received(self, frames: list[bytes]) -> None:
        if self.fail:
            raise ValueError("batch receiver bug")
        self.batches.append(list(frames))
        self.frames.extend(frames)


def test_a_batch_receiver_gets_the_batch_in_one_call() -> None:
    link, rx = StubLink(), Batch()
    link.attach(rx)
    link._deliver_all([b"a", b"b", b"c"])
    link._deliver_all([])
    assert rx.batches == [[b"a", b"b", b"c"]]


def test_a_plain_receiver_gets_each_frame_in_order() -> None:
    link, rx = StubLink(), Plain()
    link.attach(rx)
    link._deliver_all([b"a", b"b", b"c"])
    assert rx.frames == [b"a", b"b", b"c"]


def test_a_plain_receiver_that_closes_gets_none_of_the_rest() -> None:
    link = StubLink()
    rx = Plain(link, close_on=b"b")
    link.attach(rx)
    link._deliver_all([b"a", b"b", b"c"])
    assert rx.frames == [b"a", b"b"]
    assert rx.closes == [CloseReason("enough", local=True)]
    link._deliver_all([b"d"])
    assert rx.frames == [b"a", b"b"], "nothing after the close"


def test_batches_before_attach_are_held_and_delivered_in_order() -> None:
    link, rx = StubLink(), Batch()
    link._deliver_all([b"a", b"b"])
    link._deliver_all([b"c"])
    link.attach(rx)
    assert rx.frames == []  # never from inside attach
    link.clock.advance(0)
    link._deliver_all([b"d"])
    assert rx.frames == [b"a", b"b", b"c", b"d"]


def test_a_batch_receiver_that_raises_closes_the_link_uncleanly_once() -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        link, rx = StubLink(), Batch(fail=True)
        link.attach(rx)
        link._deliver_all([b"a", b"b"])
        link._deliver_all([b"c"])
    finally:
        globalLogPublisher.removeObserver(events.append)
    (reason,) = rx.closes
    assert reason.local is True and reason.clean is False and "batch receiver bug" in reason.text
    assert link.closed and link.shut == [reason.text]
    failures: list[Any] = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
