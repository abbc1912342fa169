"""Tests of timefast.ledger.finality: tallies, finalized and rejected, timeouts."""

from __future__ import annotations

import orjson

from .helpers import batch_vote
from .ledger_helpers import Clock, _four, kinds


def test_four_masternodes_three_approvals_finalize(tmp_path):
    led, events, keys, tx, u = _four(tmp_path)
    assert led.quorum == 3
    assert led.status_of(tx.txid) == "pending"
    assert led.pool.utxos.get(u["txid"], u["vout"])[2:5] == ("SpentPending", tx.txid, 1)
    r = led.votes.submit_vote(batch_vote(led, keys[1], tx.txid, True))
    assert r["status"] == "pending"
    assert led.pool.utxos.get(u["txid"], u["vout"])[4] == 2
    r = led.votes.submit_vote(batch_vote(led, keys[2], tx.txid, True))
    assert r["status"] == "finalized"
    assert [k[1] if len(k) > 1 else k[0] for k in kinds(events)] == [
        "Locked", "TransactionPending", "SpentPending", "SpentPending", "SpentFinalized",
        "Unspent", "TransactionFinalized"]
    # A late vote is recorded but changes nothing.
    assert led.votes.submit_vote(batch_vote(led, keys[3], tx.txid, True))["status"] == "finalized"


def test_four_masternodes_three_against_reject_and_unlock(tmp_path):
    # Rejected only past n - q + f = 4 - 3 + 1 = 2 rejections (SPEC 7.4): with two,
    # one equivocator could still join the two approvals to a quorum.
    led, events, keys, tx, u = _four(tmp_path)
    led.votes.submit_vote(batch_vote(led, keys[1], tx.txid, False))
    led.votes.submit_vote(batch_vote(led, keys[2], tx.txid, False))
    assert led.status_of(tx.txid) == "pending"
    led.votes.submit_vote(batch_vote(led, keys[3], tx.txid, False))
    assert led.status_of(tx.txid) == "rejected"
    assert led.pool.utxos.get(u["txid"], u["vout"]) == (u["address"], 1000, "Unspent", None,
                                                        0, None)
    assert kinds(events)[-2:] == [("UtxoStateChange", "Unspent", "SpentPending"),
                                  ("TransactionRejected",)]
    assert orjson.loads(events[-1].payload)["data"]["reason"] == "quorum against"


def test_four_masternodes_silence_decides_nothing_and_asks_again(tmp_path):
    # In a network a timeout never releases a coin (SPEC 7.4): the transaction stays
    # pending and is named, once per FINALITY_TIMEOUT, for the peers to be asked.
    clock = Clock()
    led, _, keys, tx, u = _four(tmp_path, clock)
    clock.now += 9.9
    assert led.overdue() == []
    clock.now += 0.2
    assert led.finality.expire() == 0
    assert led.overdue() == [tx.txid]
    assert led.overdue() == []
    clock.now += 10
    assert led.overdue() == [tx.txid]
    assert led.status_of(tx.txid) == "pending"
    assert led.pool.utxos.state(u["txid"], u["vout"]) == "SpentPending"
    led.votes.submit_vote(batch_vote(led, keys[1], tx.txid, True))
    led.votes.submit_vote(batch_vote(led, keys[2], tx.txid, True))
    assert led.status_of(tx.txid) == "finalized"
