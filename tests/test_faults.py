"""Faults on a network of masternodes (SPEC 7.6, issue 17): the checker, and a short
run of each scenario (``pytest bench/test_faults_bench.py`` runs them over many
seeds).  Each prints its seed; FAULT_SEED=N replays one."""

from __future__ import annotations

import os

import pytest

from . import faults
from .faults import History, NodeView, check

SEED = int(os.environ.get("FAULT_SEED", "1"))


def _view(chain, status, heard=None, unspent=100):
    return NodeView(chain=chain, status=status, unspent_total=unspent,
                    heard={"w": heard or []})


def _honest() -> History:
    status = {"a": "confirmed", "b": "rejected", "c": "pending", "d": "pending"}
    heard = [(1, "TransactionPending", "a"), (2, "TransactionFinalized", "a"),
             (3, "TransactionRejected", "b")]
    return History({i: _view(["g", "h1"], dict(status), list(heard)) for i in range(3)},
                   acknowledged=["a", "b", "c"], conflicts=[{"a", "b"}, {"c", "d"}],
                   supply=100)


def test_the_checker_finds_nothing_in_an_honest_history():
    assert check(_honest()) == []


def test_the_checker_catches_a_double_finalization():
    h = _honest()
    h.nodes[2].status["b"] = "finalized"
    assert any("double spend" in v for v in check(h))


def test_the_checker_catches_a_fork():
    h = _honest()
    h.nodes[1].chain = ["g", "h1-other"]
    assert any("fork at height 1" in v for v in check(h))


def test_the_checker_catches_a_lost_payment():
    h = _honest()
    for v in h.nodes.values():
        del v.status["a"]
    assert any("lost" in v for v in check(h))


def test_the_checker_catches_nodes_that_disagree_and_a_stuck_payment():
    h = _honest()
    h.nodes[0].status["b"] = "pending"
    assert any("ends differently" in v for v in check(h))
    h = _honest()
    h.conflicts = [{"a", "b"}]
    assert any("still pending" in v for v in check(h))


def test_a_losing_spend_unknown_where_its_rival_was_final_ends_rejected_there():
    # SPEC 7.3: a node that held "a" finalized when "b" came refused "b" unstored.
    h = _honest()
    del h.nodes[1].status["b"]
    assert check(h) == []
    # Unknown where no rival won is still a node that disagrees.
    h = _honest()
    h.nodes[1].status["a"] = "pending"
    del h.nodes[1].status["b"]
    assert any("b ends differently" in v for v in check(h))


def test_the_checker_catches_a_status_that_went_back_and_a_gap_in_order():
    h = _honest()
    h.nodes[0].heard["w"].append((4, "TransactionRejected", "a"))
    assert any("finalized, then rejected" in v for v in check(h))
    h = _honest()
    h.nodes[1].heard["w"] = [(2, "TransactionPending", "a"), (1, "UtxoStateChange", None)]
    assert any("out of seq order" in v for v in check(h))


def test_the_checker_catches_money_made_or_lost():
    h = _honest()
    h.nodes[2].unspent_total = 101
    assert any("!= supply" in v for v in check(h))


SCENARIOS = [
    ("kill -9 cycles", lambda root: faults.kill_cycles(root, SEED, cycles=4)),
    ("partition 2|2", lambda root: faults.partition_halves(root, SEED)),
    ("1|3, the proposer alone", lambda root: faults.isolated_proposer(root, SEED)),
    ("paused proposer", lambda root: faults.paused_proposer(root, SEED)),
    ("votes both ways under one batch", lambda root: faults.votes_both_ways(root, SEED)),
    ("five masternodes, one down", lambda root: faults.network_of(root, SEED, 5)),
    ("a masternode approves two spends of one coin",
     lambda root: faults.conflicting_approvals(root, SEED)),
    ("a flapping link", lambda root: faults.flapping_link(root, SEED)),
    ("a child before its parent's votes", lambda root: faults.child_before_parent(root, SEED)),
    ("a lying proposer, one of four", lambda root: faults.lying_proposers(root, SEED)),
    ("two lying proposers of seven", lambda root: faults.lying_proposers(root, SEED, 7, 2)),
    ("a block re-proposed in a later round", lambda root: faults.reproposed_block(root, SEED)),
    ("a lying catch-up peer", lambda root: faults.catchup_liar(root, SEED)),
    ("a co-signer's double spend", lambda root: faults.co_signer_double_spend(root, SEED)),
    # The short ones (+29 and +31 hold the network ~30 s: the bench runs them).
    *[(f"a clock {skew:+d} s off", lambda root, skew=skew: faults.clock_skew(root, SEED, skew))
      for skew in (32, -31)],
    *((f"kill -9 at {point}, a vote split", lambda root, point=point:
       faults.crash_at_vote(root, SEED, point)) for point in ("approval", "batch", "send")),
    ("kill -9 at precommit, a round split", lambda root: faults.crash_at_precommit(root, SEED)),
]


@pytest.mark.parametrize("name,run", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scenario_splits_nothing(name, run, tmp_path):
    figures = run(tmp_path)
    print(f"\n{name} (FAULT_SEED={SEED}): {figures}")
    assert figures["violations"] == [], figures
    assert figures["payments"] > 0
