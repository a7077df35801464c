"""SessionDriver: a batch of frames from one link is acted on frame by frame, its timer once."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock

from wiremsg.backends.base import BaseLink, CloseReason
from wiremsg.driver import SessionDriver
from wiremsg.events import Closed, DropLink, Event, MessageReceived
from wiremsg.session import State
from wiremsg.testing.pair import SessionPair


class StubLink(BaseLink):
    """A link that records what is written and whether it was closed."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, "stub")
        self.written: list[dict[str, Any]] = []
        self.shut: list[str] = []

    def _transmit(self, frame: bytes) -> None:
        self.written.append(json.loads(frame))

    def _shutdown(self, reason: str) -> None:
        self.shut.append(reason)
        self._notify_closed(CloseReason(reason, local=True))


def master_driver(
    on_event: Any = None,
) -> tuple[SessionPair, SessionDriver, StubLink, list[Event]]:
    """An open pair whose master-side session now runs on a driver over a stub link."""
    pair = SessionPair(worker_options={"codecs": ("json",)})
    assert pair.master is not None and pair.master.state is State.OPEN
    seen: list[Event] = []

    def record(driver: SessionDriver, event: Event) -> None:
        seen.append(event)
        if on_event is not None:
            on_event(driver, event)

    driver = SessionDriver(pair.master, pair.clock, record)
    link = StubLink(pair.clock)
    driver.attach(link)
    return pair, driver, link, seen


def worker_frames(pair: SessionPair, count: int) -> list[bytes]:
    for i in range(count):
        pair.worker.send("n", {"i": i})
    return pair.worker.take_frames()


def test_a_batch_is_handled_in_order_with_one_timer() -> None:
    pair, driver, link, seen = master_driver()
    link._deliver_all(worker_frames(pair, 100))
    got = [e.message.body for e in seen if isinstance(e, MessageReceived)]
    assert got == [{"i": i} for i in range(100)]
    acks = [f["ack"] for f in link.written if f["type"] == "ack"]
    assert acks == [64], "the ack that fell due mid-batch went out"
    timers = [c for c in pair.clock.getDelayedCalls() if c.active()]
    assert len(timers) == 1 and timers[0].getTime() == driver.session.next_deadline()
    driver.stop_timer()


def test_frames_after_a_goodbye_from_a_handler_are_not_taken() -> None:
    def stop_at_three(driver: SessionDriver, event: Event) -> None:
        if isinstance(event, MessageReceived) and event.message.body == {"i": 2}:
            driver.session.goodbye("enough")

    pair, driver, link, seen = master_driver(stop_at_three)
    link._deliver_all(worker_frames(pair, 10))
    got = [e.message.body for e in seen if isinstance(e, MessageReceived)]
    assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
    (goodbye,) = link.written
    assert goodbye["type"] == "goodbye" and goodbye["ack"] == 3, "acks only what was handled"
    assert link.shut and any(isinstance(e, Closed) for e in seen)
    assert driver.session.stats.messages_received == 3


def test_a_bad_frame_mid_batch_drops_the_link_and_the_rest() -> None:
    pair, _, link, seen = master_driver()
    frames = worker_frames(pair, 4)
    link._deliver_all([*frames[:2], b"{not json", *frames[2:]])
    got = [e.message.body for e in seen if isinstance(e, MessageReceived)]
    assert got == [{"i": 0}, {"i": 1}]
    assert [f["type"] for f in link.written] == ["error"]
    assert any(isinstance(e, DropLink) for e in seen) and link.shut


def test_a_link_handed_over_mid_batch_takes_the_rest_of_the_batch_along() -> None:
    other_pair = SessionPair(worker_options={"codecs": ("json",)}, clock=Clock())
    assert other_pair.master is not None
    other_seen: list[Event] = []
    other = SessionDriver(other_pair.master, other_pair.clock, lambda d, e: other_seen.append(e))

    def hand_over(driver: SessionDriver, event: Event) -> None:
        if isinstance(event, MessageReceived) and event.message.body == {"i": 1}:
            other.adopt(driver)  # what a resume does: the link now serves other's session

    pair, driver, link, seen = master_driver(hand_over)
    link._deliver_all(worker_frames(pair, 4))
    assert [e.message.body for e in seen if isinstance(e, MessageReceived)] == [{"i": 0}, {"i": 1}]
    assert driver.link is None
    # other's session expected its own worker's seq 1: frame 3 (seq 3) reached it, was refused,
    # and other dropped the link it had adopted
    assert any(isinstance(e, DropLink) and "seq 3" in e.reason for e in other_seen)
    assert other.link is None and link.shut
    driver.stop_timer()
    other.stop_timer()


def test_requests_and_replies_are_pushed_one_way_messages_wait_for_the_turn() -> None:
    pushed: list[int] = []
    _pair, driver, link, _ = master_driver()
    link.push = lambda: pushed.append(len(link.written))  # type: ignore[method-assign]
    driver.send("n", {"one": "way"})
    assert pushed == []
    driver.request("echo", {"x": 1})
    assert pushed == [2], "pushed once the request was written"
    driver.write(push=True)
    assert pushed == [2, 2]
    driver.stop_timer()
