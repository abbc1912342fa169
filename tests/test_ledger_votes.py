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


def test_kept_early_votes_are_bounded_per_voter(tmp_path):
    # SPEC 7.3 Budgets: at most so many early votes per voter; a voter past its
    # quota loses its new ones, never another voter's.
    from timefast.ledger.early import EarlyVotes
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    clock = Clock()
    led, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    led.votes.early_votes = early = EarlyVotes(quota=5, ttl=600.0)
    txids = [f"{i:064x}" for i in range(8)]
    for t in txids:
        led.votes.submit_vote(batch_vote(led, keys[1], t, True))
    assert [t for t in txids if early.has(t, pubs[1])] == txids[:5]
    assert len(early) == 5 and early.dropped == 3
    led.votes.submit_vote(batch_vote(led, keys[2], txids[7], True))
    assert early.has(txids[7], pubs[2])  # another voter's quota is its own
    clock.now += 601
    led.votes.submit_vote(batch_vote(led, keys[1], "ff" * 32, True))
    assert early.has("ff" * 32, pubs[1]) and not early.has(txids[0], pubs[1])
    assert len(early) == 2  # the stale ones went (keys[2]'s goes at its next vote)


def test_early_votes_are_written_only_when_their_transaction_arrives(tmp_path):
    led, _, keys, pubs, ka, coin = _net(tmp_path)
    tx = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    flood = [f"{i:064x}" for i in range(1, 256)]
    batches = [wire.sign_votes(k, led.network_id, 40, [(tx.txid, True), *[
        (t, True) for t in flood]]) for k in keys[1:3]]
    def rows():
        return [led.store.one(f"SELECT COUNT(*) FROM {t}")[0] for t in ("batches", "votes")]
    before = rows()
    assert [led.add_batch(b) for b in batches] == [True, True]
    # Nothing of them on disk, nor of their votes: memory only, bounded.
    assert rows() == before
    assert len(led.votes.early_votes) == 2 * 256
    assert led.add_batch(batches[0]) is False  # the same batch again: known
    led.submit(tx.to_json())
    # Counted as it arrived, and their batches kept as its certificate.
    assert led.status_of(tx.txid) == "finalized"
    assert sorted(b.voter for b in led.certificate(tx.txid)) == sorted(pubs[:3])
    assert len(led.votes.early_votes) == 2 * 255
    assert led.add_batch(batches[1]) is False


def test_a_batch_for_unknown_transactions_past_the_quota_is_dropped_unwritten(tmp_path):
    from timefast.ledger.early import EarlyVotes
    led, _, keys, pubs, ka, coin = _net(tmp_path)
    led.votes.early_votes = EarlyVotes(quota=2)
    unknown = [wire.sign_votes(keys[1], led.network_id, n, [(f"{n:064x}", True)])
               for n in range(1, 5)]
    assert [led.add_batch(b) for b in unknown] == [True, True, False, False]
    tx = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    led.submit(tx.to_json())
    # A batch with a vote on a transaction this node holds is counted all the same.
    mixed = wire.sign_votes(keys[1], led.network_id, 9, [("ab" * 32, True),
                                                         (tx.txid, True)])
    assert led.add_batch(mixed)
    assert pubs[1] in led.pool.pending[tx.txid].approvals


def test_a_voter_past_its_quota_voting_on_nothing_in_flight_is_not_worth_a_check(tmp_path):
    from timefast.ledger.early import EarlyVotes
    led, _, keys, _, ka, coin = _net(tmp_path)
    led.votes.early_votes = EarlyVotes(quota=2)
    unknown = [wire.sign_votes(keys[1], led.network_id, n, [(f"{n:064x}", True)])
               for n in range(1, 5)]
    assert led.votes.admits(unknown[0])  # room for early votes: checked and kept
    led.add_batch(unknown[0])
    led.add_batch(unknown[1])
    assert not led.votes.admits(unknown[2])  # at the quota: dropped before its check
    assert led.votes.admits(wire.sign_votes(keys[2], led.network_id, 1,
                                            [("cd" * 32, True)]))  # another voter's room
    tx = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    led.submit(tx.to_json())
    assert led.votes.admits(wire.sign_votes(keys[1], led.network_id, 9,
                                            [("ab" * 32, True), (tx.txid, True)]))


def test_a_number_used_twice_is_evidence_once_and_its_further_batches_are_dropped(
        tmp_path):
    led, _, keys, pubs, ka, coin = _net(tmp_path)
    txs = [build([(coin, 0, ka)], [(new_wallet()[1], 1000 + i)], timestamp=i)
           for i in range(3)]
    led.submit(txs[0].to_json())
    for t in txs[1:]:
        led.submit(t.to_json(), relayed=True)
    first, second, third = (wire.sign_votes(keys[1], led.network_id, 1, [(t.txid, False)])
                            for t in txs)
    assert led.add_batch(first) and led.add_batch(second)
    assert led.votes.masternode_info(pubs[1])["equivocations"] == 1
    assert led.add_batch(third) is False  # dropped unread: not counted, not kept
    assert pubs[1] not in led.pool.pending[txs[2].txid].rejections
    assert pubs[1] in led.pool.pending[txs[1].txid].rejections  # the second counts
    assert led.votes.masternode_info(pubs[1])["equivocations"] == 1
    assert len(led.tables.batch_bodies(pubs[1], 1)) == 2


def test_a_number_first_used_by_an_unwritten_batch_still_makes_evidence(tmp_path):
    led, _, keys, pubs, ka, coin = _net(tmp_path)
    tx = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    early = wire.sign_votes(keys[1], led.network_id, 3, [("ab" * 32, True)])
    assert led.add_batch(early)
    assert led.tables.batch_bodies(pubs[1], 3) == {}
    led.submit(tx.to_json())
    assert led.add_batch(wire.sign_votes(keys[1], led.network_id, 3, [(tx.txid, True)]))
    assert led.votes.masternode_info(pubs[1])["equivocations"] == 1
    assert len(led.tables.batch_bodies(pubs[1], 3)) == 2
    assert pubs[1] in led.pool.pending[tx.txid].approvals


def test_a_batch_on_decided_transactions_writes_nothing(tmp_path):
    led, _, keys, _, _, coin = _net(tmp_path)
    assert led.status_of(coin) == "finalized"
    rows = led.store.one("SELECT COUNT(*) FROM batches")[0]
    for n in range(100, 110):
        assert led.add_batch(wire.sign_votes(keys[3], led.network_id, n, [(coin, True)]))
    assert led.store.one("SELECT COUNT(*) FROM batches")[0] == rows
    # Its numbers are remembered (bounded), so the same batch is known again.
    assert not led.add_batch(wire.sign_votes(keys[3], led.network_id, 100, [(coin, True)]))


def test_early_votes_hold_bounded_memory():
    from timefast.ledger.early import NUMBERS_PER_VOTER, EarlyVotes
    from timefast.tables import Vote
    early = EarlyVotes(quota=10, quota_bytes=1000)
    voter = "aa" * 32
    for n in range(NUMBERS_PER_VOTER + 50):
        early.note_number(voter, n, b"%d" % n)
    assert early.number(voter, 0) is None
    assert early.number(voter, NUMBERS_PER_VOTER + 49) == (b"%d" % (NUMBERS_PER_VOTER + 49),
                                                           None)
    body = b"x" * 400
    kept = [early.keep(Vote(f"{i:064x}", voter, True, "@1"), 0.0, (voter, i, b"d"), body)
            for i in range(4)]
    assert kept == [True, True, False, False]  # 1,000 bytes of batches at most
    assert early.held_bytes() == 800
    # Many votes of one batch hold its body once.
    for i in range(10, 20):
        early.keep(Vote(f"{i:064x}", voter, True, "@9"), 0.0, (voter, 9, b"d"), b"y" * 100)
    assert len(early) == 10 and early.held_bytes() == 900
    early.forget(f"{0:064x}")
    assert early.held_bytes() == 500 and len(early) == 9


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
