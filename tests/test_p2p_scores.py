"""Misbehaviour scores (timefast/p2p/scores.py): points, fading, 10-minute refusals,
who may be refused at all, and bounded memory (SPEC 7.3 "Budgets")."""

from __future__ import annotations

from timefast.p2p.scores import FATAL, PREAUTH, REFUSAL, SOFT, Refusals, Scores

MEMBER, OUTSIDER = "aa" * 32, "bb" * 32


def test_points_add_up_fade_and_refuse_at_the_threshold_for_ten_minutes():
    s = Scores()
    for _ in range(99):
        assert not s.add("k", SOFT, 0.0)
    assert s.score("k", 0.0) == 99 and not s.refused_for("k", 0.0)
    assert s.score("k", 10.0) == 89  # a point a second fades
    assert not s.add("k", SOFT, 10.0)
    assert s.add("k", 10 * SOFT, 10.0)  # 100 reached: refused
    assert s.refused_for("k", 10.0) == REFUSAL and s.refusals == 1
    assert s.refused_for("k", 10.0 + REFUSAL - 1) == 1
    assert s.refused_for("k", 10.0 + REFUSAL) == 0
    # A peer overshooting by less than it fades is never refused.
    assert not any(s.add("slow", SOFT, float(t)) for t in range(10_000))


def test_a_fatal_fault_refuses_at_once_unless_not_refusable():
    s = Scores()
    assert s.add("k", FATAL, 5.0)
    assert not s.add("m", FATAL, 5.0, refusable=False)
    assert s.score("m", 5.0) == 100 and not s.refused_for("m", 5.0)
    assert s.refused(5.0) == 1


def test_scores_are_bounded_and_forget_what_faded_first():
    s = Scores(max_entries=100)
    s.add("refused", FATAL, 0.0)
    for n in range(99):
        s.add(f"old {n}", SOFT, 0.0)
    # Much later the old points faded: a flood of new subjects sweeps them out, and
    # the refusal still running stays.
    for n in range(1000):
        s.add(f"new {n}", SOFT, 100.0)
        assert len(s) <= 100
    assert s.refused_for("refused", 100.0) > 0


def test_a_member_is_scored_but_never_refused_and_its_ip_is_never_counted():
    r = Refusals([MEMBER])
    assert not r.fault(MEMBER, "10.0.0.1", FATAL, 0.0)
    assert r.score(MEMBER, 0.0) == 100
    assert r.key_refused(MEMBER, 0.0) == 0 and r.ip_refused("10.0.0.1", 0.0) == 0


def test_an_outsider_key_refused_takes_its_ip_but_not_loopback_or_peers_hosts():
    r = Refusals([MEMBER])
    r.exempt.add("10.0.0.9")
    assert r.fault(OUTSIDER, "10.0.0.1", FATAL, 0.0)
    assert r.key_refused(OUTSIDER, 0.0) == REFUSAL and r.ip_refused("10.0.0.1", 0.0) > 0
    other = "cc" * 32
    assert r.fault(other, "127.0.0.1", FATAL, 0.0)
    assert r.fault(other, "10.0.0.9", FATAL, 0.0) is False  # refused already, no new
    assert r.key_refused(other, 0.0) > 0
    assert r.ip_refused("127.0.0.1", 0.0) == 0 and r.ip_refused("10.0.0.9", 0.0) == 0
    assert r.refused(0.0) == 3 and r.refusals == 3


def test_faults_before_auth_count_a_little_against_the_ip_only():
    r = Refusals([MEMBER])
    # A misconfigured node redialling (another network id) every few seconds.
    assert not any(r.fault(None, "10.0.0.2", FATAL, t * 10.0) for t in range(100))
    # A flood from one IP is refused; the key it claimed is not touched.
    assert not any(r.fault(None, "10.0.0.3", FATAL, 0.0) for _ in range(9))
    assert r.fault(None, "10.0.0.3", FATAL, 0.0)
    assert r.ip_refused("10.0.0.3", 0.0) > 0 and PREAUTH * 10 >= 100
