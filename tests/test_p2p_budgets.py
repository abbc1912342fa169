"""Request budgets (timefast/p2p/budgets.py): rates per peer, the node-wide bucket
and the shared answer cache, fed ``now`` (SPEC 7.3 "Budgets")."""

from __future__ import annotations

from timefast.p2p.budgets import AnswerCache, RequestBudget, TokenBucket


def test_a_peer_asking_20_times_at_once_is_answered_twice_then_twice_a_second():
    b = RequestBudget()
    assert sum(b.allow(0.0) for _ in range(20)) == 2
    assert not b.allow(0.4)
    assert b.allow(0.5)
    # Every kind of request from the peer draws on the same two a second.
    assert not b.allow(0.5)
    # Over a long run, at most twice a second.
    assert sum(b.allow(1.0 + n / 100) for n in range(1000)) <= 21


def test_a_bucket_charged_past_empty_refills_from_below_zero():
    t = TokenBucket(rate=10, burst=20, now=0.0)
    assert t.available(0.0)
    t.charge(0.0, 50)  # an answer bigger than what was left
    assert not t.available(0.0) and not t.available(2.9)
    assert t.available(3.1)
    assert not t.take(3.1, 5) and t.take(4.0, 5)


def test_an_answer_is_shared_while_its_state_holds_and_dropped_when_it_moves():
    c = AnswerCache(ttl=1.0)
    assert c.get("pending", None, (5, 1), 0.0) is None
    c.put("pending", None, (5, 1), b"answer", 0.0)
    assert c.get("pending", None, (5, 1), 0.5) == b"answer"
    assert c.hits == 1 and c.misses == 1
    assert c.get("pending", None, (5, 1), 1.5) is None  # aged out
    c.put("pending", None, (5, 1), b"answer", 2.0)
    c.put("blocks", (1, 9), 9, b"blocks", 2.0)
    assert c.get("pending", None, (6, 1), 2.0) is None  # the ledger moved: gone
    assert len(c) == 1 and c.get("blocks", (1, 9), 9, 2.0) == b"blocks"


def test_the_cache_is_bounded_in_entries_and_bytes():
    c = AnswerCache(max_entries=3, max_bytes=100)
    for n in range(10):
        c.put("blocks", n, 0, b"x" * 10, 0.0)
    assert len(c) == 3 and c.get("blocks", 9, 0, 0.0) is not None
    c.put("blocks", "big", 0, b"x" * 95, 0.0)
    assert len(c) == 1 and c.get("blocks", "big", 0, 0.0) is not None
