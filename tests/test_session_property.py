"""Property: across a link that breaks at random points and resumes, every message arrives
exactly once and in order, in both directions.

Hypothesis drives a :class:`~wiremsg.testing.pair.SessionPair` with random interleavings of
sends (worker → master and master → worker), partial deliveries (some frames in flight when the
link breaks, and are lost), breaks (also in the middle of a handshake, and half-open ones the
master does not notice), reconnections and clock advances. Time stays below the master's grace
period, so the worker always resumes the same session and the guarantee is the strong one.

The master application sends only into a session the worker has attached to (the one whose id
the worker holds); until then it keeps its messages, as a real master keeps work for a worker
that is not registered yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wiremsg.events import Closed, DropLink, MessageReceived, Rejected
from wiremsg.session import State
from wiremsg.testing.pair import SessionPair

GRACE = 60.0
MAX_TOTAL_ADVANCE = 45.0  # below GRACE: whatever the breaks, the session stays resumable

STATS: list[tuple[int, int, int, int, int]] = []
"""Per example: messages worker→master, messages master→worker, breaks, breaks during a
handshake, frames lost in flight. Nothing prints them; a tally run reads them."""

operation = st.one_of(
    st.tuples(st.just("worker_send"), st.integers(1, 8)),
    st.tuples(st.just("master_send"), st.integers(1, 8)),
    st.tuples(st.just("step"), st.integers(1, 6)),
    st.tuples(st.just("pump"), st.just(0)),
    st.tuples(st.just("cut"), st.sampled_from(["both", "half-open"])),
    st.tuples(st.just("connect"), st.just(0)),
    st.tuples(st.just("advance"), st.floats(0.0, 6.0, allow_nan=False)),
)


@dataclass
class Model:
    pair: SessionPair
    worker_sent: int = 0
    master_sent: int = 0
    master_backlog: list[int] = field(default_factory=list)
    advanced: float = 0.0
    breaks: int = 0
    handshake_breaks: int = 0
    lost_frames: int = 0

    def master_flush(self) -> None:
        master = self.pair.master
        if master is None or master.session_id != self.pair.worker.session_id:
            return  # the worker has not attached to this session (yet)
        while self.master_backlog:
            master.send("m", self.master_backlog.pop(0))

    def apply(self, op: str, arg: Any) -> None:
        pair = self.pair
        if op == "worker_send":
            for _ in range(arg):
                pair.worker.send("w", self.worker_sent)
                self.worker_sent += 1
        elif op == "master_send":
            for _ in range(arg):
                self.master_backlog.append(self.master_sent)
                self.master_sent += 1
        elif op == "step":
            for _ in range(arg):
                pair.step()
        elif op == "pump":
            pair.pump()
        elif op == "cut":
            if pair.connected:
                self.breaks += 1
                self.handshake_breaks += pair.worker.state is not State.OPEN
                self.lost_frames += len(pair.cut(master=arg == "both"))
        elif op == "connect":
            if not pair.connected:
                pair.connect(pump=False)
        elif op == "advance":
            if self.advanced + arg <= MAX_TOTAL_ADVANCE:
                self.advanced += arg
                pair.advance(arg)
        self.master_flush()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=st.lists(operation, min_size=20, max_size=80),
    window=st.sampled_from([1, 3, 1024]),
    ack_every=st.sampled_from([1, 4, 64]),
)
def test_breaking_link_delivers_everything_exactly_once_in_order(
    ops: list[tuple[str, Any]], window: int, ack_every: int
) -> None:
    options = {"window_messages": window, "ack_every": ack_every}
    pair = SessionPair(
        connect=False,
        worker_options=options,
        master_options={**options, "grace": GRACE},
    )
    model = Model(pair)
    pair.connect(pump=False)
    for op, arg in ops:
        model.apply(op, arg)

    # Heal: reconnect if needed and let everything (acks included) settle.
    if not pair.connected or pair.worker.state is not State.OPEN:
        pair.cut()
        pair.connect()
    model.master_flush()
    pair.advance(1.0)
    model.master_flush()
    pair.advance(1.0)

    worker_events = pair.take_worker_events()
    master_events = pair.take_master_events()
    assert not any(isinstance(e, Rejected) for e in worker_events)
    refused = {"bad_frame", "unexpected", "too_large", "auth_failed", "codec", "version"}
    for event in worker_events + master_events:
        if isinstance(event, DropLink | Closed):
            assert event.code not in refused, event
    got_by_master = [e.message.body for e in master_events if isinstance(e, MessageReceived)]
    got_by_worker = [e.message.body for e in worker_events if isinstance(e, MessageReceived)]
    assert got_by_master == list(range(model.worker_sent))
    assert got_by_worker == list(range(model.master_sent))
    assert not model.master_backlog
    assert pair.master is not None
    assert pair.worker.in_flight == pair.master.in_flight == 0
    STATS.append(
        (
            model.worker_sent,
            model.master_sent,
            model.breaks,
            model.handshake_breaks,
            model.lost_frames,
        )
    )
