"""Tests of timefast.ledger.votes: vote batches, early votes, evidence and own votes."""

from __future__ import annotations

import orjson
import pytest

from timefast import crypto, wire
from timefast.ledger import Ledger, LedgerError
from timefast.storage import Store
from timefast.transaction import build

from .helpers import batch_vote, new_wallet
from .ledger_helpers import Clock, _four, _net, _own_vote, kinds, make_ledger


def test_votes_refused(tmp_path):
    led, _, keys, tx, _ = _four(tmp_path)
    outsider = crypto.new_key()
    flipped = batch_vote(led, keys[1], tx.txid, True)
    flipped["votes"][0][1] = False
    other_net = wire.sign_votes(keys[1], b"\0" * 32, 1, [(tx.txid, True)]).to_data()
    cases = [
        (batch_vote(led, outsider, tx.txid, True), "not in the masternode set"),
        (flipped, "signature does not verify"),
        (other_net, "signature does not verify"),
        (crypto.sign_vote(keys[1], tx.txid, True), "binds no network"),
        ({"voter": "ab", "votes": []}, "vote: "),
        ("nope", "must be an object"),
    ]
    for vote, words in cases:
        with pytest.raises(LedgerError) as e:
            led.votes.submit_vote(vote)
        assert (e.value.code, words in e.value.message) == ("BAD_REQUEST", True), \
            e.value.message
    assert led.pool.pending[tx.txid].rejections == set()


def test_the_timevote_form_is_taken_with_one_masternode_only(tmp_path):
    key = crypto.new_key()
    led, _ = make_ledger(tmp_path, key=key)
    _, a = new_wallet()
    assert not led.networked
    t = led.faucet.pay(a, 10)
    with pytest.raises(LedgerError, match="duplicate vote"):
        led.votes.submit_vote(crypto.sign_vote(key, t, True))
    with pytest.raises(LedgerError, match=r"vote\.txid"):
        led.votes.submit_vote({"txid": 1})


def test_votes_before_their_transaction_are_kept_and_counted(tmp_path):
    # Votes from peers may overtake the transaction they vote on: they are kept
    # (not refused) and counted the moment it arrives.
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led, events = make_ledger(tmp_path, key=keys[0], masternodes=pubs)
    ka, a = new_wallet()
    t = led.faucet.pay(a, 1000)
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, t, True))
    tx = build([(t, 0, ka)], [(new_wallet()[1], 900)], timestamp=5)
    for k in keys[1:3]:
        assert led.votes.submit_vote(batch_vote(led, k, tx.txid, True)) == {
            "txid": tx.txid, "status": None}
    # The same vote again, in another batch, is kept once.
    led.votes.submit_vote(batch_vote(led, keys[1], tx.txid, True))
    assert led.status_of(tx.txid) is None
    led.submit(tx.to_json())
    # Its own vote and the two kept ones: quorum (3 of 4) in the step that accepts it.
    assert led.status_of(tx.txid) == "finalized"
    assert led.reads.get_transaction(tx.txid)["votes"] == 3
    assert ("TransactionFinalized",) in kinds(events)


def test_kept_early_votes_are_bounded(tmp_path, monkeypatch):
    from timefast.ledger import votes as votes_module
    monkeypatch.setattr(votes_module, "EARLY_VOTES_MAX", 5)
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    clock = Clock()
    led, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    txids = [f"{i:064x}" for i in range(8)]
    for t in txids:
        led.votes.submit_vote(batch_vote(led, keys[1], t, True))
    assert list(led.votes._early) == txids[-5:]  # the oldest went first
    clock.now += votes_module.EARLY_VOTES_TTL + 1
    led.votes.submit_vote(batch_vote(led, keys[2], "ff" * 32, True))
    assert list(led.votes._early) == ["ff" * 32]  # the stale ones went


def test_add_batch_counts_a_signed_batch_of_many_once(tmp_path):
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs)
    ka, a = new_wallet()
    coins = []
    for amount in (100, 200):
        t = led.faucet.pay(a, amount)
        for k in keys[1:3]:
            led.votes.submit_vote(batch_vote(led, k, t, True))
        coins.append((t, 0, ka))
    txs = [build([c], [(new_wallet()[1], 50)], timestamp=5) for c in coins]
    for tx in txs:
        led.submit(tx.to_json())
    batches = [wire.sign_votes(k, led.network_id, 7, [(tx.txid, True) for tx in txs])
               for k in keys[1:3]]
    assert [led.add_batch(b) for b in batches] == [True, True]
    assert [led.status_of(tx.txid) for tx in txs] == ["finalized", "finalized"]
    # The same batch again is known: nothing changes, nothing to relay.
    seq = led.seq
    assert led.add_batch(batches[0]) is False
    assert led.seq == seq
    # Each finality certificate: the signed batches of q distinct voters.
    cert = led.certificate(txs[0].txid)
    assert sorted(b.voter for b in cert) == sorted(pubs[:3])
    for b in cert:
        wire.verify_votes(b, led.network_id)


def test_a_vote_both_ways_counts_twice_and_is_kept_as_evidence(tmp_path):
    led, _, keys, pubs, ka, coin = _net(tmp_path)
    tx = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    led.submit(tx.to_json())
    led.votes.submit_vote(batch_vote(led, keys[1], tx.txid, True))
    led.votes.submit_vote(batch_vote(led, keys[1], tx.txid, False))
    p = led.pool.pending[tx.txid]
    assert pubs[1] in p.approvals and pubs[1] in p.rejections
    assert led.votes.masternode_info(pubs[1])["equivocations"] == 1
    # Two different batches under one number: evidence too, and both count.
    a = wire.sign_votes(keys[2], led.network_id, 5, [(tx.txid, False)])
    b = wire.sign_votes(keys[2], led.network_id, 5, [(coin, True)])
    assert led.add_batch(a) and led.add_batch(b)
    assert led.votes.masternode_info(pubs[2])["equivocations"] == 1
    kinds_kept = [r.kind for r in led.tables.evidence()]
    assert kinds_kept == ["vote", "batch"]
    for row in led.tables.evidence():  # each piece is a batch signed by the voter
        for body in (row.first, row.second):
            wire.verify_votes(wire.Votes.from_data(orjson.loads(body)), led.network_id)
    # Rejections past n - q + f = 2 reject it: keys 1 and 2 and one more.
    led.votes.submit_vote(batch_vote(led, keys[3], tx.txid, False))
    assert led.status_of(tx.txid) == "rejected"
    led.store.close()
    again, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs)
    assert again.votes.masternode_info(pubs[1])["equivocations"] == 1


def test_consensus_evidence_is_kept_once_and_counted(tmp_path):
    led, _, keys, pubs, _, _ = _net(tmp_path)
    a = wire.encode(wire.sign_prevote(keys[1], led.network_id, 3, 0, "ab" * 32))
    b = wire.encode(wire.sign_prevote(keys[1], led.network_id, 3, 0, None))
    assert led.add_evidence(pubs[1], "prevote", a, b)
    assert not led.add_evidence(pubs[1], "prevote", b, a)  # met again (after a restart)
    assert led.votes.masternode_info(pubs[1])["equivocations"] == 1
    assert [(r.kind, r.first, r.second) for r in led.tables.evidence()] == [
        ("prevote", a, b)]
    with pytest.raises(LedgerError, match="not in the masternode set"):
        led.add_evidence(crypto.public_key_hex(crypto.new_key()), "prevote", a, b)
    with pytest.raises(LedgerError, match="unknown kind"):
        led.add_evidence(pubs[1], "gossip", a, b)
    led.store.close()
    again, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs)
    assert again.votes.masternode_info(pubs[1])["equivocations"] == 1


def test_approve_once_holds_across_a_restart_and_ends_with_a_rejection(tmp_path):
    led, _, keys, pubs, ka, coin = _net(tmp_path)
    t1 = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    t2 = build([(coin, 0, ka)], [(new_wallet()[1], 2000)], timestamp=2)
    t3 = build([(coin, 0, ka)], [(new_wallet()[1], 3000)], timestamp=3)
    led.submit(t1.to_json())
    batches = led.votes.next_batch
    led.store.close()
    led, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs)
    assert led.votes.next_batch == batches  # numbers go on after the last one stored
    led.submit(t2.to_json(), relayed=True)
    assert (_own_vote(led, t1.txid), _own_vote(led, t2.txid)) == (True, False)
    # t1 gets a rejection certificate (3 > n - q + f): the coin is free, and this
    # masternode may approve another spend of it.
    for k in keys[1:4]:
        led.votes.submit_vote(batch_vote(led, k, t1.txid, False))
    assert led.status_of(t1.txid) == "rejected"
    led.submit(t3.to_json(), relayed=True)
    assert _own_vote(led, t3.txid) is True


def test_an_own_vote_decided_but_not_signed_is_decided_again_after_a_crash(tmp_path):
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led = Ledger(Store(tmp_path / "t.db"), "regtest", keys[0], pubs, clock=Clock())
    _, a = new_wallet()
    t = led.faucet.pay(a, 10)  # accepted; its own vote queued, never signed (a crash)
    assert led.votes.own_queue == [(t, True)] and led.votes.next_batch == 1
    led.store.close()
    again = Ledger(Store(tmp_path / "t.db"), "regtest", keys[0], pubs, clock=Clock())
    assert again.votes.own_queue == [(t, True)]
    msg = again.sign_batch()
    assert (msg.batch, msg.votes) == (1, ((t, True),))
    assert again.pool.pending[t].approvals == {pubs[0]}


def test_the_vote_crash_points_sit_before_and_inside_the_batch_commit(tmp_path,
                                                                     monkeypatch):
    """TIMEFAST_CRASH_AT (timefast/crashpoints.py): at ``approval`` the vote is decided
    and its transaction stored, the batch not signed; at ``batch`` the batch is
    written in the open transaction, and a kill then leaves none of it on disk."""
    import sqlite3

    from timefast import crashpoints
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led = Ledger(Store(tmp_path / "t.db"), "regtest", keys[0], pubs, clock=Clock())
    _, a = new_wallet()
    t = led.faucet.pay(a, 10)
    seen: dict[str, tuple[object, ...]] = {}

    def on_disk() -> tuple[str | None, int]:
        db = sqlite3.connect(tmp_path / "t.db")  # another reader: committed rows only
        try:
            status = db.execute("SELECT status FROM txs WHERE txid=?", (t,)).fetchone()
            (batches,) = db.execute("SELECT COUNT(*) FROM batches").fetchone()
            return (status[0] if status else None), batches
        finally:
            db.close()

    def reached(point: str) -> None:
        written = led.store.db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        seen[point] = (list(led.votes.own_queue), written, on_disk())
    monkeypatch.setattr(crashpoints, "reached", reached)
    msg = led.sign_batch()
    assert msg is not None and msg.votes == ((t, True),)
    assert seen["approval"] == ([(t, True)], 0, ("pending", 0))
    # Written, not committed (the queue is already taken: a failed commit rebuilds it
    # from the database, which holds no batch).
    assert seen["batch"] == ([], 1, ("pending", 0))
    assert on_disk() == ("pending", 1)
