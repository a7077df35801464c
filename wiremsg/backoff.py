"""Which master a worker tries next, and how long it waits first: a pure policy object.

Modelled on Twisted's ``ClientService`` retry policy, but with *full* jitter (a uniform draw
between 0 and the exponential ceiling, which spreads a reconnecting fleet instead of
synchronising it) and with the master list built in. Randomness is injected, so tests are
deterministic; time is not used here at all (the caller waits the returned delays).

Policies:

``failover``
    Masters in the given order; every new cycle starts again at the first (failback to the
    preferred master happens at the next reconnection).
``round_robin``
    Masters in order, continuing from the last one tried.
``random``
    A fresh random order each cycle.

After a link to an attached master is lost the same master is tried first (to resume the
session within its grace period). After a master's ``goodbye``, the next one is tried at once.
Within a cycle, moving to the next master waits a short ``hop``; after a whole cycle fails,
the wait is ``uniform(0, min(cap, base * factor ** failed_cycles))``.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence

POLICIES = ("failover", "round_robin", "random")
"""The names of the failover policies."""

DEFAULT_BASE = 0.5
DEFAULT_CAP = 30.0
DEFAULT_FACTOR = 2.0
DEFAULT_HOP = 0.1


def full_jitter(
    attempt: int,
    rng: Callable[[], float],
    base: float = DEFAULT_BASE,
    cap: float = DEFAULT_CAP,
    factor: float = DEFAULT_FACTOR,
) -> float:
    """A delay uniformly drawn from ``[0, min(cap, base * factor ** attempt))``."""
    ceiling = cap if attempt > 64 else min(cap, base * factor**attempt)
    return rng() * ceiling


class Failover:
    """Chooses the next master address and the delay before trying it.

    :param masters: the addresses, in preference order (at least one).
    :param policy: one of :data:`POLICIES`.
    :param rng: a ``random()``-like function in [0, 1); seeded in tests.
    :raises ValueError: no masters, or an unknown policy.
    """

    def __init__(
        self,
        masters: Sequence[str],
        policy: str = "failover",
        rng: Callable[[], float] | None = None,
        *,
        base: float = DEFAULT_BASE,
        cap: float = DEFAULT_CAP,
        factor: float = DEFAULT_FACTOR,
        hop: float = DEFAULT_HOP,
    ) -> None:
        if not masters:
            raise ValueError("a worker needs at least one master address")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.masters = list(masters)
        self.policy = policy
        self._rng = rng or _random.random
        self.base, self.cap, self.factor, self.hop = base, cap, factor, hop
        self.failed_cycles = 0
        self._order = self._new_order()
        self._pos = 0
        self._tried_in_cycle = 0

    def _new_order(self) -> list[str]:
        order = list(self.masters)
        if self.policy == "random":
            # Fisher-Yates with the injected rng, so a seeded rng gives a known order.
            for i in range(len(order) - 1, 0, -1):
                j = int(self._rng() * (i + 1))
                order[i], order[j] = order[j], order[i]
        return order

    @property
    def current(self) -> str:
        """The master to try now (or the one attached to)."""
        return self._order[self._pos]

    def failed(self) -> tuple[str, float]:
        """The attempt at :attr:`current` failed: return the next master and the wait."""
        self._tried_in_cycle += 1
        if self._tried_in_cycle >= len(self._order):
            self.failed_cycles += 1
            self._tried_in_cycle = 0
            if self.policy == "random":
                self._order = self._new_order()
            self._pos = 0 if self.policy != "round_robin" else (self._pos + 1) % len(self._order)
            return self.current, full_jitter(
                self.failed_cycles, self._rng, self.base, self.cap, self.factor
            )
        self._pos = (self._pos + 1) % len(self._order)
        return self.current, self.hop

    def attached(self) -> None:
        """The attempt at :attr:`current` succeeded: the backoff starts over."""
        self.failed_cycles = 0
        self._tried_in_cycle = 0

    def lost(self) -> tuple[str, float]:
        """The link to the attached master was lost: try it again first, after a short wait."""
        self._tried_in_cycle = 0
        return self.current, self._rng() * self.base

    def goodbye(self) -> tuple[str, float]:
        """The attached master said goodbye: move to the next master at once."""
        self._tried_in_cycle = 0
        self._pos = (self._pos + 1) % len(self._order)
        return self.current, 0.0
