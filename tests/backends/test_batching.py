"""BatchLink: batching, bounds and the in-band close, on a stub transport (a list)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from wiremsg.backends.base import CloseReason
from wiremsg.backends.batching import BATCH_BYTES, BatchLink, split_records
from wiremsg.testing.harness import FrameRecorder


class ListLink(BatchLink):
    """A BatchLink whose transport is a list of sent messages; flushes on clock turns."""

    def __init__(self, max_queue: int = 1 << 30) -> None:
        self.clock = Clock()
        super().__init__(self.clock, "stub", max_queue=max_queue, close_timeout=5.0)
        self.sent: list[bytes] = []
        self.controls: list[bytes] = []
        self.ended: list[tuple[CloseReason, bool]] = []

    def _schedule_flush(self) -> None:
        self.clock.callLater(0, self._flush)

    def _hand_out(self) -> None:
        while self._backlog:
            msg = self._backlog.popleft()
            self._queued -= len(msg)
            self.sent.append(msg)

    def _send_control(self, message: bytes) -> None:
        self.controls.append(message)

    def _finish(self, reason: CloseReason, linger: bool = False) -> None:
        if not self._released:
            self._released = True
            self._drop()
            self._cancel_close()
            self.ended.append((reason, linger))
        self._notify_closed(reason)


def attached(link: ListLink) -> FrameRecorder:
    rx = FrameRecorder(link.clock, "stub")
    link.attach(rx)
    return rx


def test_split_records_returns_whole_records_and_names_the_problem() -> None:
    data = b"D" + b"".join(len(f).to_bytes(4, "big") + f for f in (b"", b"ab", b"c" * 9))
    assert split_records(data, 1, 100) == ([b"", b"ab", b"c" * 9], "")
    assert split_records(data + b"\x00\x00", 1, 100) == (
        [b"", b"ab", b"c" * 9],
        "a bad record (length -1, limit 100, 2 left)",
    )
    frames, problem = split_records(data + b"\x00\x00\x00\x05abc", 1, 100)
    assert frames == [b"", b"ab", b"c" * 9] and "length 5" in problem
    frames, problem = split_records(data, 1, 8)
    assert frames == [b"", b"ab"] and problem == "a bad record (length 9, limit 8, 13 left)"


def test_split_records_of_one_record() -> None:
    one = b"D" + (9).to_bytes(4, "big") + b"c" * 9
    assert split_records(one, 1, 9) == ([b"c" * 9], "")
    assert split_records(b"D" + bytes(4), 1, 9) == ([b""], "")
    assert split_records(one, 1, 8) == ([], "a bad record (length 9, limit 8, 13 left)")
    assert split_records(one[:-1], 1, 9) == ([], "a bad record (length 9, limit 9, 12 left)")
    assert split_records(one + b"x", 1, 9)[0] == [b"c" * 9]  # then a truncated record


def test_frames_of_one_turn_travel_in_one_message_and_big_batches_are_split() -> None:
    link = ListLink()
    for frame in (b"a", b"bb", b""):
        link.send(frame)
    assert link.sent == []  # nothing before the end of the turn
    link.clock.advance(0)
    assert link.sent == [b"D" + b"\x00\x00\x00\x01a\x00\x00\x00\x02bb\x00\x00\x00\x00"]
    big = b"x" * (BATCH_BYTES // 2 - 4)  # two records fill a batch exactly
    for _ in range(3):
        link.send(big)
    assert len(link.sent) == 2, "a full batch goes out at once"
    link.clock.advance(0)
    assert [split_records(m, 1, 1 << 30)[0] for m in link.sent[1:]] == [[big, big], [big]]


def test_overflow_ends_the_link_at_the_next_flush_not_inside_send() -> None:
    link = ListLink(max_queue=100)
    rx = attached(link)
    link.send(b"x" * 200)
    assert rx.closes == []
    link.clock.advance(0)
    (reason,) = rx.closes
    assert "send queue overflow" in reason.text and "a peer that does not read" in reason.text
    assert reason.clean is False and link.sent == []


def test_close_waits_for_the_peers_ack_and_bye_crossing_bye_is_clean() -> None:
    link = ListLink()
    rx = attached(link)
    link.send(b"last")
    link.close("done")
    link.clock.advance(0)
    assert link.sent[-1] == b"Bdone" and rx.closes == []
    link._receive(b"A")
    assert rx.closes == [CloseReason("done", local=True, clean=True)]

    crossing = ListLink()
    rx2 = attached(crossing)
    crossing.close("mine")
    crossing._receive(b"Btheirs")
    assert crossing.controls == [b"A"]
    assert rx2.closes == [CloseReason("mine", local=True, clean=True)]


def test_a_peers_bye_is_acknowledged_and_ends_the_link_cleanly() -> None:
    link = ListLink()
    rx = attached(link)
    link._receive(b"D\x00\x00\x00\x02hi")
    link._receive(b"Bbye now")
    link.clock.advance(0)
    assert rx.frames == [b"hi"] and link.controls == [b"A"]
    assert rx.closes == [CloseReason("closed by peer: bye now")]
    assert link.ended[0][1] is True, "lingers so that the A gets out"


def test_close_times_out_without_an_ack() -> None:
    link = ListLink()
    rx = attached(link)
    link.close("done")
    link.clock.advance(5.0)
    (reason,) = rx.closes
    assert reason.clean is False and "no acknowledgement within 5s" in reason.text


def test_protocol_violations_end_only_this_link_with_an_abort() -> None:
    cases: list[tuple[bytes, str]] = [
        (b"D\x00\x00\x00\x09short", "a bad record"),
        (b"Zwhat", "an unexpected message"),
        (b"A", "an unexpected message"),  # an ack for a bye never sent
        (b"", "an unexpected message"),
    ]
    for data, why in cases:
        link = ListLink()
        rx = attached(link)
        link._receive(data)
        link.clock.advance(0)
        (reason,) = rx.closes
        assert why in reason.text and reason.clean is False, data
        assert link.controls and link.controls[0].startswith(b"Xprotocol violation"), data


def test_a_peer_abort_is_an_unclean_close_and_nothing_is_received_after_release() -> None:
    link = ListLink()
    rx = attached(link)
    link._receive(b"Xboom")
    link._receive(b"D\x00\x00\x00\x01a")
    link.clock.advance(0)
    assert rx.closes == [CloseReason("peer failed: boom", clean=False)] and rx.frames == []


def test_receiver_failure_aborts_with_an_x(monkeypatch: Any) -> None:
    link = ListLink()
    rx = attached(link)
    monkeypatch.setattr(rx, "frame_received", lambda frame: 1 / 0)
    link._receive(b"D\x00\x00\x00\x01a")
    assert link.controls and link.controls[0].startswith(b"X")
    assert rx.closes and rx.closes[0].clean is False


def test_push_hands_the_open_batch_over_at_once_and_keeps_the_turns_flush() -> None:
    link = ListLink()
    link.send(b"request")
    link.push()
    assert link.sent == [b"D\x00\x00\x00\x07request"], "a request does not wait for the turn"
    link.push()  # nothing open: nothing sent
    link.send(b"more")
    link.clock.advance(0)
    assert link.sent[1:] == [b"D\x00\x00\x00\x04more"]


def test_push_is_ignored_where_sends_may_fail_at_once() -> None:
    class Careful(ListLink):
        flush_full_batches = False

    link = Careful()
    link.send(b"request")
    link.push()
    assert link.sent == []
    link.clock.advance(0)
    assert link.sent == [b"D\x00\x00\x00\x07request"]
