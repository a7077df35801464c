"""The failover policy: which master next and how long to wait, with injected randomness."""

from __future__ import annotations

import random

import pytest

from wiremsg.backoff import Failover, full_jitter

M = ["a", "b", "c"]


def test_full_jitter_is_uniform_below_the_capped_exponential() -> None:
    assert [full_jitter(n, lambda: 0.5, base=1, cap=8, factor=2) for n in range(6)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        4.0,
        4.0,
    ]
    assert full_jitter(10_000, lambda: 1.0, cap=30) == 30.0  # no overflow
    assert full_jitter(3, lambda: 0.0) == 0.0
    rng = random.Random(7)
    draws = [full_jitter(4, rng.random, base=1, cap=100) for _ in range(2000)]
    assert 0 <= min(draws) < 0.5 and 15.5 < max(draws) < 16  # spread over [0, 16)


def test_failover_hops_then_backs_off_per_cycle_and_restarts_at_the_first() -> None:
    f = Failover(M, "failover", lambda: 0.5, base=1, factor=2, cap=8, hop=0.1)
    assert f.current == "a"
    steps = [f.failed() for _ in range(9)]
    assert steps == [
        ("b", 0.1),
        ("c", 0.1),
        ("a", 1.0),
        ("b", 0.1),
        ("c", 0.1),
        ("a", 2.0),
        ("b", 0.1),
        ("c", 0.1),
        ("a", 4.0),
    ]
    f.attached()
    assert f.failed_cycles == 0
    assert f.failed() == ("b", 0.1)


@pytest.mark.parametrize(
    ("policy", "after_cycle"), [("failover", ["a", "b"]), ("round_robin", ["b", "c"])]
)
def test_after_a_failed_cycle_failover_restarts_at_the_first_round_robin_goes_on(
    policy: str, after_cycle: list[str]
) -> None:
    f = Failover(M, policy, lambda: 0.5, base=1, hop=0)
    f.failed()
    f.attached()  # attached to b
    f.lost()
    tried = [f.failed() for _ in range(5)]
    assert [m for m, _ in tried[:2]] == ["c", "a"]
    assert tried[2] == (after_cycle[0], 1.0)  # the cycle b, c, a failed: back off
    assert tried[3][0] == after_cycle[1]


def test_random_policy_uses_the_injected_rng() -> None:
    orders = []
    for _ in range(2):
        rng = random.Random(42)
        f = Failover(["a", "b", "c", "d"], "random", rng.random, hop=0)
        orders.append([f.current] + [f.failed()[0] for _ in range(8)])
    assert orders[0] == orders[1]  # deterministic for a seed
    assert sorted(orders[0][:4]) == ["a", "b", "c", "d"]  # each master once per cycle


def test_lost_link_retries_the_same_master_first_and_goodbye_moves_on() -> None:
    f = Failover(M, "failover", lambda: 0.5, base=1, hop=0.1)
    f.failed()
    f.attached()  # attached to b
    assert f.lost() == ("b", 0.5)
    assert f.failed() == ("c", 0.1)
    assert f.goodbye() == ("a", 0.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one master"):
        Failover([])
    with pytest.raises(ValueError, match="unknown policy"):
        Failover(M, "sometimes")
