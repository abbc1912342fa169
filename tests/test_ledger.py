"""The ledger: validation, the UTXO state protocol, votes, blocks, storage (SPEC 4)."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import replace

import orjson
import pytest

from timefast import crypto, wire
from timefast.ledger import FAUCET_KEY, GENESIS_SUPPLY, Ledger, LedgerError
from timefast.rules import coinbase, proposer
from timefast.storage import StorageError, Store
from timefast.transaction import build

from .helpers import (
    accept,
    batch_vote,
    commit_for,
    commit_next,
    ledger_with_coins,
    new_wallet,
    propose,
    validate,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make_ledger(path, key=None, masternodes=None, clock=None, **kw):
    key = key or crypto.new_key()
    led = Ledger(Store(path / "t.db"), "regtest", key, masternodes, clock=clock or Clock(),
                 **kw)
    events = []
    led.listen(events.extend)
    if led.networked:
        signing(led)
    return led, events


def signing(led):
    """Sign a network ledger's own votes after each transaction it accepts, as the
    node's peer layer does a few milliseconds later."""
    def signed(call):
        def wrapped(*args, **kw):
            out = call(*args, **kw)
            while led.sign_batch() is not None:
                pass
            return out
        return wrapped
    led.submit = signed(led.submit)
    led.faucet.pay = signed(led.faucet.pay)


def kinds(events):
    out = []
    for e in events:
        d = orjson.loads(e.payload)["data"]
        if e.type == "UtxoStateChange":
            out.append((e.type, d["state"], d["prev_state"]))
        else:
            out.append((e.type,))
    return out


def test_genesis_funds_the_faucet(tmp_path):
    led, _ = make_ledger(tmp_path)
    faucet = crypto.address_of(crypto.public_key_hex(FAUCET_KEY), "regtest")
    assert led.height == 0
    assert led.reads.balance(faucet) == GENESIS_SUPPLY
    assert led.reads.get_block(0)["txids"] == [led.reads.list_unspent(faucet)[0]["txid"]]


def test_payment_event_sequence_and_balances(tmp_path):
    led, events = make_ledger(tmp_path)
    ka, a = new_wallet()
    _, b = new_wallet()
    t1 = led.faucet.pay(a, 10_0000_0000)
    assert led.reads.balance(a) == 10_0000_0000
    events.clear()
    utxo = led.reads.list_unspent(a)[0]
    tx = build([(utxo["txid"], utxo["vout"], ka)], [(b, 6_0000_0000), (a, 3_9999_0000)],
               timestamp=1_800_000_000)
    assert led.submit(tx.to_json()) == tx.txid
    assert kinds(events) == [
        ("UtxoStateChange", "Locked", "Unspent"),
        ("TransactionPending",),
        ("UtxoStateChange", "SpentPending", "Locked"),
        ("UtxoStateChange", "SpentFinalized", "SpentPending"),
        ("UtxoStateChange", "Unspent", None),
        ("UtxoStateChange", "Unspent", None),
        ("TransactionFinalized",),
    ]
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # Each event goes to the addresses it concerns.
    assert events[0].addresses == (a,)
    assert set(events[1].addresses) == {a, b}
    assert led.reads.balance(b) == 6_0000_0000 and led.reads.balance(a) == 3_9999_0000
    assert led.reads.get_transaction(tx.txid)["status"] == "finalized"
    events.clear()
    block = led.blocks.make_block()
    # The block starts with its coinbase, which pays the fee to the producer (SPEC 7.5).
    coinbase = block["txids"][0]
    assert block["txids"] == [coinbase, t1, tx.txid]
    fee = 10_0000_0000 - 6_0000_0000 - 3_9999_0000
    cb = led.reads.get_transaction(coinbase)
    assert (cb["status"], cb["block_height"]) == ("confirmed", 1)
    assert cb["tx"]["inputs"] == [] and cb["tx"]["lock_time"] == 1
    assert cb["tx"]["outputs"] == [{"amount": fee, "address": led.address}]
    assert led.reads.balance(led.address) == fee
    # Its coin is Unspent before anything is confirmed; NewBlock comes last.
    assert kinds(events)[:2] == [("UtxoStateChange", "Unspent", None),
                                 ("TransactionConfirmed",)]
    assert events[0].addresses == (led.address,)
    assert kinds(events)[-3:] == [("UtxoStateChange", "Confirmed", "SpentFinalized"),
                                  ("TransactionConfirmed",), ("NewBlock",)]
    assert events[-1].addresses is None
    got = led.reads.get_transaction(tx.txid)
    assert (got["status"], got["block_height"], got["votes"], got["quorum"]) == (
        "confirmed", 1, 1, 1)
    assert led.reads.get_block(block["hash"]) == led.reads.get_block(1) == block
    assert led.reads.get_txout(utxo["txid"], utxo["vout"])["state"] == "Confirmed"
    # Resubmitting an accepted transaction is idempotent.
    before = len(events)
    assert led.submit(tx.to_json()) == tx.txid
    assert len(events) == before


def test_confirmed_coins_leave_memory_but_stay_answerable(tmp_path):
    led, _ = make_ledger(tmp_path)
    ka, a = new_wallet()
    _, b = new_wallet()
    led.faucet.pay(a, 1000)
    coin = led.reads.list_unspent(a)[0]
    op = (coin["txid"], coin["vout"])
    spend = build([(*op, ka)], [(b, 900)], timestamp=1_800_000_000)
    led.submit(spend.to_json())
    led.blocks.make_block()
    live = len(led.pool.utxos)
    # Spent and confirmed: gone from the core and from the snapshot, kept on disk.
    assert op not in led.pool.utxos
    assert led.reads.get_txout(*op)["state"] == "Confirmed"
    assert led.reads.get_txout(*op)["spending_txid"] == spend.txid
    assert [u["state"] for u in led.reads.snapshot(a)["utxos"]] == []
    assert led.reads.snapshot(b)["balance"] == 900
    # Spending it again is a conflict, not an unknown coin, before and after a restart.
    again = build([(*op, ka)], [(a, 800)], timestamp=1_800_000_001)
    with pytest.raises(LedgerError) as e:
        led.submit(again.to_json())
    assert e.value.code == "TX_CONFLICT" and "Confirmed" in e.value.message
    led2, _ = make_ledger(tmp_path)
    assert len(led2.pool.utxos) == live and op not in led2.pool.utxos
    with pytest.raises(LedgerError) as e:
        led2.submit(again.to_json())
    assert e.value.code == "TX_CONFLICT"
    assert led2.reads.get_txout(*op)["block_height"] == 1
    assert led2.reads.get_txout("ab" * 32, 0) is None


def test_memory_holds_the_live_set_however_long_the_history(tmp_path):
    led, _ = make_ledger(tmp_path)
    _, a = new_wallet()
    sizes = []
    for _ in range(5):
        for _ in range(40):
            led.faucet.pay(a, 7)
        led.blocks.make_block()
        sizes.append(len(led.pool.utxos))
    # Each round adds 40 coins for ``a``; the faucet's spent coins do not pile up.
    assert [s - sizes[0] for s in sizes] == [0, 40, 80, 120, 160]
    assert len(led.pool.utxos.by_address(
        crypto.address_of(crypto.public_key_hex(FAUCET_KEY), "regtest"))) == 1


def test_kept_events_cost_about_their_own_size(tmp_path):
    led, _ = make_ledger(tmp_path)
    _, a = new_wallet()
    led.faucet.pay(a, 5)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    seq = led.seq
    for i in range(200):
        led.faucet.pay(a, 10 + i)
    kept = [e for e in led.journal.recent if e.seq > seq]
    payload = sum(len(e.payload) for e in kept)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # The replay window holds its events: memory follows their length, plus the
    # Event objects and the unconfirmed transactions, not 4 KiB a payload.
    assert len(kept) > 1000
    assert grown < 3 * payload, (grown, payload)


def test_validity_rules_each_refused_with_reason(tmp_path):
    led, _ = make_ledger(tmp_path)
    ka, a = new_wallet()
    kb, b = new_wallet()
    led.faucet.pay(a, 5000)
    u = led.reads.list_unspent(a)[0]

    def refused(tx_json, code, words):
        with pytest.raises(LedgerError) as e:
            led.submit(tx_json)
        assert e.value.code == code
        assert words in e.value.message

    good = build([(u["txid"], u["vout"], ka)], [(b, 4000)], timestamp=1)
    bad_txid = good.to_json() | {"txid": "0" * 64}
    refused(bad_txid, "TX_INVALID", "txid does not match")
    refused(build([(u["txid"], u["vout"], ka)] * 2, [(b, 1)], 1).to_json(), "TX_INVALID",
            "spent twice")
    refused(build([("ab" * 32, 0, ka)], [(b, 1)], 1).to_json(), "TX_INVALID", "unknown outpoint")
    refused(build([(u["txid"], u["vout"], kb)], [(b, 1)], 1).to_json(), "TX_INVALID",
            "does not own")
    forged = good.to_json()
    forged["inputs"][0]["signature"] = build([(u["txid"], u["vout"], ka)], [(b, 3)],
                                             1).inputs[0].signature
    refused(forged, "TX_INVALID", "bad signature")
    refused(build([(u["txid"], u["vout"], ka)], [(b, 5001)], 1).to_json(), "TX_INVALID",
            "exceed inputs")
    mainnet = "TIME1" + b[5:]
    refused(build([(u["txid"], u["vout"], ka)], [(mainnet, 1)], 1).to_json(), "TX_INVALID",
            "not a regtest address")
    refused({"txid": 5}, "TX_INVALID", "txid must be")
    assert led.pool.utxos.state(u["txid"], u["vout"]) == "Unspent"
    led.submit(good.to_json())
    refused(build([(u["txid"], u["vout"], ka)], [(b, 1)], 2).to_json(), "TX_CONFLICT",
            "already SpentFinalized")


def test_hundred_conflicting_spends_one_wins(tmp_path):
    led, _ = make_ledger(tmp_path)
    ka, a = new_wallet()
    led.faucet.pay(a, 1000)
    u = led.reads.list_unspent(a)[0]
    outcomes = []
    for i in range(100):
        tx = build([(u["txid"], u["vout"], ka)], [(new_wallet()[1], 100 + i)], timestamp=i)
        try:
            led.submit(tx.to_json())
            outcomes.append("ok")
        except LedgerError as e:
            outcomes.append(e.code)
    assert outcomes.count("ok") == 1
    assert outcomes.count("TX_CONFLICT") == 99


def _four(tmp_path, clock=None):
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led, events = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    ka, a = new_wallet()
    # The faucet's own payment needs quorum too: vote it through.
    t = led.faucet.pay(a, 1000)
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, t, True))
    assert led.reads.balance(a) == 1000
    u = led.reads.list_unspent(a)[0]
    tx = build([(u["txid"], u["vout"], ka)], [(new_wallet()[1], 900)], timestamp=5)
    events.clear()
    led.submit(tx.to_json())
    return led, events, keys, tx, u


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


def test_restart_rebuilds_everything(tmp_path):
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs)
    _ka, a = new_wallet()
    t = led.faucet.pay(a, 1000)
    led.votes.submit_vote(batch_vote(led, keys[1], t, True))
    seq_before = led.seq
    led.store.db.close()
    led2, events = make_ledger(tmp_path, key=keys[0], masternodes=pubs)
    assert led2.seq == seq_before
    assert led2.status_of(t) == "pending"
    assert led2.pool.pending[t].approvals == {pubs[0], pubs[1]}
    # The restored pending transaction finalizes with one more vote, seq continues.
    led2.votes.submit_vote(batch_vote(led2, keys[2], t, True))
    assert led2.status_of(t) == "finalized"
    assert events[0].seq == seq_before + 1
    assert led2.reads.balance(a) == 1000
    ok, replay = led2.reads.events_after(0)
    assert ok and [e.seq for e in replay] == list(range(1, led2.seq + 1))


def test_restart_replays_the_very_bytes_announced(tmp_path):
    # Events are stored without the transaction they embed (it is in its txs row
    # once); a restart puts it back byte for byte, for every kind of event.
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    clock = Clock()
    led, events = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    _ka, a = new_wallet()
    paid = led.faucet.pay(a, 1000)
    led.votes.submit_vote(batch_vote(led, keys[1], paid, True))
    led.votes.submit_vote(batch_vote(led, keys[2], paid, True))
    refused = led.faucet.pay(a, 2000)
    for k in keys[1:4]:
        led.votes.submit_vote(batch_vote(led, k, refused, False))
    led.blocks.make_block()
    assert {e.type for e in events} >= {"UtxoStateChange", "TransactionPending",
                                        "TransactionFinalized", "TransactionRejected",
                                        "TransactionConfirmed", "NewBlock"}
    # Assembled around their transaction, payloads are still exactly orjson's bytes.
    assert all(orjson.dumps(orjson.loads(e.payload)) == e.payload for e in events)
    change = orjson.loads(next(e.payload for e in events if e.type == "UtxoStateChange"))
    assert list(change["data"])[-2:] == ["transaction", "seq"]
    raw = led.store.one("SELECT raw FROM txs WHERE txid=?", (paid,))[0]
    stored = led.store.query("SELECT payload, tx_ref FROM events")
    assert not any(raw in bytes(p) for p, _ in stored)
    assert sum(ref == paid for _, ref in stored) >= 5
    led.store.close()
    led2, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    ok, replay = led2.reads.events_after(0)
    assert ok and [e.payload for e in replay] == [e.payload for e in events]
    assert [(e.seq, e.type, e.addresses) for e in replay] == [
        (e.seq, e.type, e.addresses) for e in events]


def test_events_stored_before_references_still_load(tmp_path):
    # A database from before events left their transaction out: its table gains
    # the new columns, and its rows load as they were stored.
    import sqlite3
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL,"
               " addresses BLOB, payload BLOB NOT NULL)")
    old = b'{"type":"NewBlock","data":{"height":0,"seq":1}}'
    db.execute("INSERT INTO events VALUES (1, 'NewBlock', NULL, ?)", (old,))
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('seq', '1')")
    db.commit()
    db.close()
    led, _ = make_ledger(tmp_path)
    assert led.reads.events_after(0) == (True, [led.journal.recent[0]])
    assert led.journal.recent[0].payload == old
    _, a = new_wallet()
    led.faucet.pay(a, 10)
    assert [e.seq for e in led.reads.events_after(0)[1]][:2] == [1, 2]


def test_replay_window(tmp_path):
    led, _ = make_ledger(tmp_path, replay_events=5)
    _, a = new_wallet()
    led.faucet.pay(a, 10)
    led.faucet.pay(a, 11)
    assert led.seq > 5
    ok, evs = led.reads.events_after(led.seq - 3)
    assert ok and [e.seq for e in evs] == [led.seq - 2, led.seq - 1, led.seq]
    ok, evs = led.reads.events_after(0)
    assert not ok and evs == []
    assert led.reads.events_after(led.seq) == (True, [])


def test_storage_failure_refuses_and_changes_nothing(tmp_path):
    led, _events = make_ledger(tmp_path)
    ka, a = new_wallet()
    led.faucet.pay(a, 1000)
    u = led.reads.list_unspent(a)[0]
    seq = led.seq
    tx = build([(u["txid"], u["vout"], ka)], [(new_wallet()[1], 900)], timestamp=5)
    led.store.db.execute("PRAGMA query_only=ON")  # the database refuses every write
    with pytest.raises(StorageError):
        led.submit(tx.to_json())
    assert led.seq == seq and led.pool.utxos.state(u["txid"], u["vout"]) == "Unspent"
    assert led.status_of(tx.txid) is None and tx.txid not in led.pool.pending
    led.store.db.execute("PRAGMA query_only=OFF")  # space is back
    assert led.submit(tx.to_json()) == tx.txid
    assert led.status_of(tx.txid) == "finalized"



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


def _mirror(tmp_path):
    """Two ledgers of one regtest network: ``a`` its one masternode, ``b`` a full node
    (its own key, not in the voting set) that accepts ``a``'s blocks."""
    a, _ = make_ledger(tmp_path / "a")
    b, events = make_ledger(tmp_path / "b", masternodes=[a.public_key])
    return a, b, events


def _utxo_set(led):
    rows = led.store.query("SELECT txid, vout, address, amount, state FROM utxos"
                           " ORDER BY txid, vout")
    return [tuple(r) for r in rows]


def test_a_block_made_by_one_ledger_is_accepted_by_another(tmp_path):
    a, b, events = _mirror(tmp_path)
    ka, addr = new_wallet()
    paid = a.faucet.pay(addr, 5000)
    child = build([(paid, 0, ka)], [(new_wallet()[1], 4000), (addr, 900)], timestamp=7)
    a.submit(child.to_json())  # spends the faucet payment: a parent and its child
    block = a.blocks.make_block()
    full = a.reads.get_block(block["height"], with_txs=True)
    coinbase = block["txids"][0]  # the child's fee of 100, to a
    assert [t["txid"] for t in full["txs"]] == block["txids"] == [coinbase, paid, child.txid]
    assert full["commit"] == block["commit"] and len(block["commit"]) == 1
    accept(b, full, full["commit"])
    assert (b.height, b.tip) == (a.height, a.tip)
    assert _utxo_set(a) == _utxo_set(b)
    assert b.reads.get_block(1) == a.reads.get_block(1)
    assert [b.status_of(t) for t in block["txids"]] == ["confirmed"] * 3
    assert b.reads.balance(addr) == a.reads.balance(addr) == 900
    assert b.reads.balance(a.address) == a.reads.balance(a.address) == 100
    seen = [e.type for e in events]
    # Wallets of the second node hear the transactions it learnt from the block.
    assert seen.count("TransactionFinalized") == 2 and seen.count("TransactionConfirmed") == 3
    assert seen[-1] == "NewBlock" and "TransactionPending" not in seen
    # Each input goes Unspent -> SpentFinalized -> Confirmed (SPEC 7.5).
    spent_moves = [(d["outpoint"]["vout"], d["prev_state"], d["state"])
                   for d in (orjson.loads(e.payload)["data"] for e in events)
                   if d.get("outpoint") == {"txid": paid, "vout": 0}]
    assert spent_moves == [(0, None, "Unspent"), (0, "Unspent", "SpentFinalized"),
                           (0, "SpentFinalized", "Confirmed")]
    # A restart of the second ledger agrees.
    again = Ledger(b.store, "regtest", b.key, clock=Clock())
    assert (again.height, again.tip) == (a.height, a.tip)


def _race(tmp_path):
    """Ledger ``a`` (one masternode) and ``b`` (one of four) share a coin; its owner
    spends it one way at ``b`` (pending there: ``b`` needs three votes) and another
    at ``a`` (finalized).  Returns ``(a, b, b's events, the voting keys, owner key,
    address, coin's txid, loser, winner)``."""
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    a, _ = make_ledger(tmp_path / "a", key=keys[1], masternodes=pubs)
    b, events = make_ledger(tmp_path / "b", key=keys[0], masternodes=pubs)
    ka, addr = new_wallet()
    # The same coin on both ledgers: a faucet payment finalized on a, learnt by b in a
    # block the four commit.
    paid = a.faucet.pay(addr, 5000)
    _finalize(a, paid, keys[2:])
    commit_next([a, b], keys)
    loser = build([(paid, 0, ka)], [(new_wallet()[1], 100)], timestamp=8)
    winner = build([(paid, 0, ka)], [(new_wallet()[1], 200)], timestamp=9)
    b.submit(loser.to_json())
    a.submit(winner.to_json())
    _finalize(a, winner.txid, keys[2:])
    return a, b, events, keys, ka, addr, paid, loser, winner


def _finalize(led, txid, keys):
    """Votes of ``keys`` that finalize ``txid`` at ``led`` (with its own)."""
    for k in keys:
        led.votes.submit_vote(batch_vote(led, k, txid, True))
    assert led.status_of(txid) == "finalized"


def test_a_block_beats_a_pending_conflicting_spend(tmp_path):
    a, b, events, keys, _, _, paid, loser, winner = _race(tmp_path)
    events.clear()
    commit_next([a, b], keys)
    assert b.status_of(loser.txid) == "rejected"
    # The contested coin goes from the loser's lock straight to the winner.
    moves = [(d["prev_state"], d["state"], d["spending_txid"])
             for d in (orjson.loads(e.payload)["data"] for e in events)
             if d.get("outpoint") == {"txid": paid, "vout": 0}]
    assert moves == [("SpentPending", "SpentFinalized", winner.txid),
                     ("SpentFinalized", "Confirmed", winner.txid)]
    assert b.status_of(winner.txid) == "confirmed"
    assert b.reads.get_transaction(loser.txid)["reason"] == "conflict"
    assert b.tip == a.tip


def test_a_block_that_does_not_follow_is_refused_and_changes_nothing(tmp_path):
    a, b, _events = _mirror(tmp_path)
    _, addr = new_wallet()
    a.faucet.pay(addr, 10)
    good = a.reads.get_block(a.blocks.make_block()["height"], with_txs=True)
    seq = b.seq
    for bad, words in [
        (good | {"height": 5}, "not the next block"),
        (good | {"prev_hash": "11" * 32}, "does not extend"),
        (good | {"timestamp": good["timestamp"] + 1}, "hash does not match"),
        (good | {"round": 1}, "hash does not match"),
        (good | {"txs": []}, "do not match its txids"),
        (good | {"txs": [dict(good["txs"][0], timestamp=1)]}, "txid does not match"),
    ]:
        with pytest.raises(LedgerError, match=words):
            accept(b, bad, good["commit"])
        assert (b.seq, b.height) == (seq, 0)
    accept(b, good, good["commit"])
    assert b.tip == a.tip


def test_history_shows_payments_in_and_out_rejections_and_blocks(tmp_path):
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    clock = Clock()
    led, _ = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    ka, a = new_wallet()
    _, b = new_wallet()
    paid = led.faucet.pay(a, 1000)
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, paid, True))
    clock.now += 5
    block = led.blocks.make_block()
    out = build([(paid, 0, ka)], [(b, 600), (a, 350)], timestamp=5)
    led.submit(out.to_json())
    clock.now += 5
    for k in keys[1:4]:  # three against: rejected
        led.votes.submit_vote(batch_vote(led, k, out.txid, False))
    assert led.status_of(out.txid) == "rejected"
    again = build([(paid, 0, ka)], [(b, 900)], timestamp=6)
    led.submit(again.to_json())  # pending
    h = led.reads.history(a)
    assert (h["address"], h["balance"], h["tx_count"], h["next"]) == (a, 0, 3, None)
    assert [(t["txid"], t["status"], t["received"], t["sent"]) for t in h["txs"]] == [
        (again.txid, "pending", 0, 1000),
        (out.txid, "rejected", 350, 1000),
        (paid, "confirmed", 1000, 0)]
    assert h["txs"][2]["block_height"] == 1
    assert h["txs"][2]["timestamp"] == block["timestamp"]
    assert h["txs"][0]["timestamp"] == int(clock.now)
    assert [t["txid"] for t in led.reads.history(b)["txs"]] == [again.txid, out.txid]
    assert led.reads.history("time1test") == {"address": "time1test", "balance": 0, "tx_count": 0,
                                        "txs": [], "next": None}
    for args, code in [(("bad address!",), "INVALID_ADDRESS"), ((a, 0), "BAD_REQUEST"),
                       ((a, 1001), "BAD_REQUEST"), ((a, 5, "x"), "BAD_REQUEST"),
                       ((a, 5, -1), "BAD_REQUEST"), ((a, True), "BAD_REQUEST")]:
        with pytest.raises(LedgerError) as e:
            led.reads.history(*args)
        assert e.value.code == code


def test_history_pages_lose_and_repeat_nothing_while_payments_arrive(tmp_path):
    led, _ = make_ledger(tmp_path)
    _, a = new_wallet()
    first = [led.faucet.pay(a, 10 + i) for i in range(25)]
    seen: list[str] = []
    page = led.reads.history(a, 10)
    while True:
        seen += [t["txid"] for t in page["txs"]]
        # New payments between pages land on top, never inside the pages to come.
        led.faucet.pay(a, 99)
        if page["next"] is None:
            break
        page = led.reads.history(a, 10, str(page["next"]))
    assert seen == first[::-1]
    led.blocks.make_block()  # confirming changes statuses, never the order
    assert [t["txid"] for t in led.reads.history(a, 1000)["txs"]][-25:] == first[::-1]
    assert led.reads.history(a)["tx_count"] == 28


def test_history_within_a_batch_and_after_a_failed_one(tmp_path):
    led, _ = make_ledger(tmp_path)
    _, a = new_wallet()
    with led.batch():
        t1 = led.faucet.pay(a, 10)
        assert led.reads.history(a)["tx_count"] == 1  # a read writes the staged rows first
        t2 = led.faucet.pay(a, 11)
    assert [t["txid"] for t in led.reads.history(a)["txs"]] == [t2, t1]
    with pytest.raises(RuntimeError), led.batch():
        led.faucet.pay(a, 12)
        raise RuntimeError("the batch fails")
    t3 = led.faucet.pay(a, 13)
    h = led.reads.history(a)
    assert [t["txid"] for t in h["txs"]] == [t3, t2, t1] and h["tx_count"] == 3


def test_an_older_data_directory_gets_its_history_built_once(tmp_path, caplog):
    led, _ = make_ledger(tmp_path)
    ka, a = new_wallet()
    paid = led.faucet.pay(a, 1000)
    spend = build([(paid, 0, ka)], [(new_wallet()[1], 400), (a, 500)], timestamp=3)
    led.submit(spend.to_json())
    led.blocks.make_block()
    want = led.reads.history(a, 1000)
    faucet = led.reads.history(led.pool.utxos.get(paid, 1)[0], 1000)
    led.store.close()
    # As a node from before the index left it: no history rows, no marker.
    import sqlite3
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("DROP TABLE history")
    db.execute("DELETE FROM meta WHERE key='history'")
    db.commit()
    db.close()
    caplog.set_level("INFO")
    again, _ = make_ledger(tmp_path)
    assert again.reads.history(a, 1000) == want
    assert again.reads.history(faucet["address"], 1000) == faucet
    # genesis, the payment, the spend and the block's coinbase (the spend's fee)
    assert "address history built: 4 transactions" in caplog.text
    caplog.clear()
    make_ledger(tmp_path)  # once
    assert "address history" not in caplog.text


def test_snapshot_pages_largest_first_with_a_cursor(tmp_path):
    led, key, a, split = ledger_with_coins(tmp_path / "db")
    # Amounts differ for some coins: largest first, then txid, then vout.
    coin = led.faucet.pay(a, 5000)
    led.submit(build([(coin, 0, key)], [(a, 3000), (a, 2000)], timestamp=1).to_json())
    full = led.reads.snapshot(a, limit=100)
    keys = [(-u["amount"], u["txid"], u["vout"]) for u in full["utxos"]]
    assert keys == sorted(keys) and "more" not in full
    pages, after = [], None
    while True:
        page = led.reads.snapshot(a, after, limit=3)
        assert page["balance"] == full["balance"]
        pages += page["utxos"]
        if not page.get("more"):
            break
        assert page["utxo_count"] == len(full["utxos"])
        after = (page["utxos"][-1]["txid"], page["utxos"][-1]["vout"])
    assert pages == full["utxos"]
    _, b = new_wallet()
    with pytest.raises(LedgerError) as e:
        led.reads.snapshot(b, after=(split.txid, 0))  # a coin, but not b's
    assert e.value.code == "BAD_REQUEST"


def _traced(fn):
    """(fn's result, bytes it left allocated)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    out = fn()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return out, grown


def test_a_wide_transaction_is_named_not_copied_in_its_events(tmp_path):
    # A 1,300-output payment (about 100 KB) was carried whole by each of its 1,300
    # UtxoStateChange events: about 130 MB in the replay window, again at start-up.
    led, events = make_ledger(tmp_path)
    key, a = new_wallet()
    coin = led.faucet.pay(a, 1300 * 1000)
    wide = build([(coin, 0, key)], [(a, 1000)] * 1300, timestamp=1)
    size = len(orjson.dumps(wide.to_json()))
    assert size > 4096
    start = len(events)
    _, grown = _traced(lambda: led.submit(wide.to_json()))
    mine = [orjson.loads(e.payload) for e in events[start:]]
    changes = [m["data"] for m in mine if m["type"] == "UtxoStateChange"]
    assert len(changes) == 1300 + 3  # the outputs, the input's Locked/SpentPending/Final
    assert all(c["transaction"] == {"txid": wide.txid, "size": size} for c in changes)
    pending = next(m for m in mine if m["type"] == "TransactionPending")
    assert pending["data"]["tx"]["txid"] == wide.txid  # given once, whole
    assert grown < 2_000_000, grown
    seq = led.seq
    led.store.close()
    led2, grown = _traced(lambda: make_ledger(tmp_path)[0])
    assert grown < 4_000_000, grown
    ok, replay = led2.reads.events_after(seq - len(mine))
    assert ok and [orjson.loads(e.payload) for e in replay] == mine


def test_a_small_transaction_is_kept_once_however_many_events_name_it(tmp_path):
    led, _ = make_ledger(tmp_path)
    key, a = new_wallet()
    coin = led.faucet.pay(a, 30 * 1000)
    split = build([(coin, 0, key)], [(a, 1000)] * 30, timestamp=1)
    assert len(orjson.dumps(split.to_json())) <= 4096
    led.submit(split.to_json())
    for ledger in (led, make_ledger(tmp_path)[0]):  # live, and rebuilt at start-up
        naming = [e for e in ledger.journal.recent if e.type == "UtxoStateChange"
                  and orjson.loads(e.payload)["data"]["transaction"]["txid"] == split.txid]
        assert len(naming) == 33
        assert len({id(e.tx) for e in naming}) == 1


def test_replay_window_is_bounded_in_bytes(tmp_path):
    led, events = make_ledger(tmp_path, replay_bytes=20_000)
    _, a = new_wallet()
    first = led.seq
    for i in range(20):
        led.faucet.pay(a, 10 + i)
    assert sum(e.size for e in events) > 40_000
    assert sum(e.size for e in led.journal.recent) == led.journal.recent_bytes <= 20_000
    kept = led.journal.recent
    assert [e.seq for e in kept] == list(range(kept[0].seq, led.seq + 1))
    assert led.reads.events_after(first) == (False, [])  # too old: resync
    led.store.close()
    led2, _ = make_ledger(tmp_path, replay_bytes=20_000)
    assert led2.journal.recent_bytes <= 20_000 and led2.journal.recent[-1].seq == led.seq


def test_a_refused_block_leaves_the_pending_tallies_as_they_were(tmp_path):
    # The block's first transaction beats a pending spend here; its second is forged:
    # the block is refused, and the pending spend must not stay marked as decided.
    from timefast.rules import block_hash
    a, b, _, keys, ka, addr, paid, loser, _ = _race(tmp_path)
    good = propose(a, 0, proposer(a.masternodes, 2, 0), 1_800_000_000)
    forged = build([(paid, 1, ka)], [(addr, 1)], timestamp=10).to_json()  # not ka's coin
    txids = [*good["txids"], forged["txid"]]
    bad = good | {"txids": txids, "txs": [*good["txs"], forged],
                  "hash": block_hash(good["height"], good["prev_hash"], good["timestamp"],
                                     txids, good["producer"])}
    seq = b.seq
    with pytest.raises(LedgerError, match="does not own"):
        accept(b, bad, commit_for(bad, keys[:3], b.network_id))
    assert b.seq == seq and b.status_of(loser.txid) == "pending"
    assert not b.pool.pending[loser.txid].decided
    for k in keys[1:3]:  # its own vote and two more: quorum, as if no block had come
        b.votes.submit_vote(batch_vote(b, k, loser.txid, True))
    assert b.status_of(loser.txid) == "finalized"


# -- the network's rules (SPEC 7.4) ---------------------------------------------------


def _net(tmp_path, clock=None):
    """A masternode of four with a finalized coin of 5,000 for a fresh wallet."""
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led, events = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    ka, a = new_wallet()
    coin = led.faucet.pay(a, 5000)
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, coin, True))
    assert led.status_of(coin) == "finalized"
    return led, events, keys, pubs, ka, coin


def _own_vote(led, txid):
    p = led.pool.pending[txid]
    return (True if led.public_key in p.approvals
            else False if led.public_key in p.rejections else None)


def test_a_relayed_conflicting_spend_is_stored_unlocked_voted_against_and_may_win(tmp_path):
    led, events, keys, _, ka, coin = _net(tmp_path)
    t1 = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    t2 = build([(coin, 0, ka)], [(new_wallet()[1], 2000)], timestamp=2)
    led.submit(t1.to_json())
    with pytest.raises(LedgerError, match="TX_CONFLICT"):
        led.submit(t2.to_json())  # from a wallet: refused, as ever
    led.submit(t2.to_json(), relayed=True)  # from a peer: kept, locking nothing
    assert led.status_of(t2.txid) == "pending" and not led.pool.pending[t2.txid].holds
    assert led.pool.utxos.get(coin, 0)[2:4] == ("SpentPending", t1.txid)
    assert (_own_vote(led, t1.txid), _own_vote(led, t2.txid)) == (True, False)
    events.clear()
    for k in keys[1:4]:  # the rest of the network went the other way
        led.votes.submit_vote(batch_vote(led, k, t2.txid, True))
    assert (led.status_of(t1.txid), led.status_of(t2.txid)) == ("rejected", "finalized")
    assert led.reads.get_transaction(t1.txid)["reason"] == "conflict"
    assert led.pool.utxos.get(coin, 0)[2:4] == ("SpentFinalized", t2.txid)
    assert [k for k in kinds(events) if k[0] != "UtxoStateChange" or k[1] != "Unspent"] == [
        ("TransactionRejected",), ("UtxoStateChange", "SpentFinalized", "SpentPending"),
        ("TransactionFinalized",)]


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


def test_an_orphan_waits_for_its_parent(tmp_path):
    led, _, keys, _, ka, coin = _net(tmp_path)
    kb, b = new_wallet()
    parent = build([(coin, 0, ka)], [(b, 1000)], timestamp=1)
    child = build([(parent.txid, 0, kb)], [(new_wallet()[1], 900)], timestamp=2)
    with pytest.raises(LedgerError) as e:
        led.submit(child.to_json(), relayed=True)
    assert e.value.code == "TX_ORPHAN" and child.txid in led.mempool.orphans
    led.submit(parent.to_json(), relayed=True)
    with pytest.raises(LedgerError, match="TX_ORPHAN"):
        led.submit(child.to_json(), relayed=True)  # the parent is only pending
    assert led.take_orphans(["ff" * 32]) == []
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, parent.txid, True))
    assert led.status_of(parent.txid) == "finalized"
    assert [t.txid for t in led.take_orphans([parent.txid])] == [child.txid]
    assert led.submit(child, relayed=True) == child.txid
    assert led.status_of(child.txid) == "pending" and not led.mempool.orphans


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


# -- blocks of a network (SPEC 7.5) ------------------------------------------------------


def _rehash(block, **changes):
    """``block`` with ``changes`` and the hash of its new header."""
    from timefast.rules import block_hash
    b = block | changes
    if "txs" in changes and "txids" not in changes:
        b["txids"] = [t["txid"] for t in b["txs"]]
    b["hash"] = block_hash(b["height"], b["prev_hash"], b["timestamp"], b["txids"],
                           b["producer"], b["round"])
    return b


def _paid_with_fee(led, fee=100):
    """A finalized payment at ``led`` (one masternode) that leaves ``fee``."""
    ka, addr = new_wallet()
    paid = led.faucet.pay(addr, 5000)
    tx = build([(paid, 0, ka)], [(new_wallet()[1], 5000 - fee)], timestamp=7)
    led.submit(tx.to_json())
    return tx


def test_a_block_without_a_valid_commit_is_refused_and_changes_nothing(tmp_path):
    a, b, _ = _mirror(tmp_path)
    _paid_with_fee(a)
    good = a.reads.get_block(a.blocks.make_block()["height"], with_txs=True)
    stranger = crypto.new_key()
    seq = b.seq
    for commit, words in [
        (None, "committed with its commit"),
        ([], "holds 0 of 1 precommits"),
        ({"voter": a.public_key}, "commit must be a list"),
        ([{"voter": a.public_key}], r"commit\[0\]"),
        (commit_for(good, [stranger], b.network_id), "not a masternode"),
        # a's precommit, but for another round than the one it signed
        ([good["commit"][0] | {"round": 1}], "does not verify"),
        # a's precommit for this block in another network
        (commit_for(good, [a.key], wire.network_id("00" * 32, [a.public_key])),
         "does not verify"),
    ]:
        with pytest.raises(LedgerError, match=words):
            accept(b, good, commit)
        assert (b.seq, b.height) == (seq, 0)
    accept(b, good, good["commit"])
    assert b.reads.get_block(1)["commit"] == good["commit"] and b.tip == a.tip


def test_a_block_with_a_greedy_missing_or_misplaced_coinbase_is_refused(tmp_path):
    a, b, _ = _mirror(tmp_path)
    spend = _paid_with_fee(a, fee=100)
    good = propose(a, 0, a.public_key, 1_800_000_000)
    assert a.height == 0 and a.status_of(spend.txid) == "finalized"  # nothing committed
    cb = good["txs"][0]
    greedy = coinbase("regtest", 1, good["timestamp"], a.public_key, 101).to_json()
    other = good | {"producer": b.public_key}  # paid to b, who is not the proposer
    seq = b.seq
    for bad, words in [
        (_rehash(good, txs=[greedy, *good["txs"][1:]]), "must pay exactly the fees"),
        (_rehash(good, txs=good["txs"][1:]), "no coinbase for its fees of 100"),
        (_rehash(good, txs=[*good["txs"][1:], cb]), r"txs\[2\]: .* at least one input"),
        # the spend before the faucet payment it spends
        (_rehash(good, txs=[cb, *good["txs"][:0:-1]]), "does not come before it"),
        (_rehash(other), "is not the proposer of round 0"),
    ]:
        with pytest.raises(LedgerError, match=words):
            accept(b, bad, commit_for(bad, [a.key], b.network_id))
        assert (b.seq, b.height) == (seq, 0)
    accept(b, good, commit_for(good, [a.key], b.network_id))
    assert b.reads.balance(a.address) == 100 and b.status_of(cb["txid"]) == "confirmed"


def test_a_proposal_needs_a_certificate_for_what_is_not_finalized_here(tmp_path):
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    a, _ = make_ledger(tmp_path / "a", key=keys[1], masternodes=pubs)
    b, _ = make_ledger(tmp_path / "b", key=keys[0], masternodes=pubs)
    _, addr = new_wallet()
    paid = a.faucet.pay(addr, 5000)
    _finalize(a, paid, keys[2:])  # finalized at a; b has never seen it
    block = propose(a, 0, proposer(pubs, 1, 0), int(b.clock()))
    validate(a, block)  # finalized there: its own votes are its certificate
    seq = b.seq
    with pytest.raises(LedgerError, match=f"{paid} is not finalized: its certificate "
                       "holds 0 of 3 approvals"):
        validate(b, block)
    cert = [wire.sign_votes(k, b.network_id, 1, [(paid, True)]) for k in keys[1:]]
    with pytest.raises(LedgerError, match="holds 2 of 3"):
        validate(b, block, cert[:2])
    with pytest.raises(LedgerError, match="bad signature"):
        validate(b, block, [*cert[:2], replace(cert[2], batch=2)])
    assert validate(b, block, cert) is None
    assert (b.seq, b.height, b.status_of(paid)) == (seq, 0, None)  # nothing changed
    # Committed, the block needs no certificate: its commit stands for it.
    commit = commit_for(block, keys[:3], b.network_id)
    for led in (a, b):
        accept(led, block, commit)
    assert b.status_of(paid) == "confirmed" and b.reads.balance(addr) == 5000
    assert b.reads.get_block(1) == a.reads.get_block(1)


def test_a_proposal_at_most_30_s_ahead_of_the_clock(tmp_path):
    a, b, _ = _mirror(tmp_path)
    now = int(b.clock())
    ahead = propose(a, 0, a.public_key, now + 31)
    with pytest.raises(LedgerError, match="more than 30 s ahead"):
        validate(b, ahead)
    validate(b, propose(a, 0, a.public_key, now + 30))
    # A committed block is the network's decision whatever this node's clock says.
    accept(b, ahead, commit_for(ahead, [a.key], b.network_id))
    assert b.tip_timestamp == now + 31
    # The next proposal's timestamp is never before its parent's.
    assert propose(b, 0, b.masternodes[0], now)["timestamp"] == now + 31


def test_propose_block_fills_a_block_within_its_limits_parents_first(tmp_path, monkeypatch):
    from timefast.ledger import blocks as blocks_module
    led, _ = make_ledger(tmp_path)
    kx, x = new_wallet()
    _, y = new_wallet()
    t1 = led.faucet.pay(x, 10_000)
    # A wide transaction (too big for the limit set below) and its small child ...
    wide = build([(t1, 0, kx)], [(x, 100)] * 40 + [(y, 5000)], timestamp=1)
    led.submit(wide.to_json())
    child = build([(wide.txid, 0, kx)], [(y, 90)], timestamp=2)
    led.submit(child.to_json())
    # ... and a small one after them, which fits.
    small = _paid_with_fee(led, fee=7)
    raws = {t: len(f.raw) for t, f in led.pool.unconfirmed.items()}
    assert raws[wide.txid] > raws[child.txid]
    room = blocks_module.COINBASE_BYTES + sum(n for t, n in raws.items() if t != wide.txid)
    monkeypatch.setattr(blocks_module, "MAX_BLOCK_BYTES", room)
    seq, counts = led.seq, led.reads.counts()
    block = propose(led, 0, led.public_key, 1_800_000_000)
    # The child waits with its parent; the coinbase pays the fees of what is in.
    faucet_paid = [t for t in raws if t not in (wide.txid, child.txid, small.txid)]
    assert block["txids"][1:] == [t1, *faucet_paid[1:], small.txid]
    assert block["txs"][0]["outputs"] == [{"amount": 7, "address": led.address}]
    assert (led.seq, led.reads.counts(), led.height) == (seq, counts, 0)
    validate(led, block)
    # At most MAX_BLOCK_TXS in all, the coinbase included.
    monkeypatch.setattr(blocks_module, "MAX_BLOCK_BYTES", 4 << 20)
    monkeypatch.setattr(blocks_module, "MAX_BLOCK_TXS", 3)
    assert len(propose(led, 0, led.public_key, 1_800_000_000)["txids"]) == 3
    accept(led, block, commit_for(block, [led.key], led.network_id))
    stored = led.reads.get_block(1, with_txs=True)
    assert stored == block | {"commit": led.reads.get_block(1)["commit"]}
    monkeypatch.setattr(blocks_module, "MAX_BLOCK_TXS", 10_000)
    # Then the next block: the parent, then its child.
    nxt = led.blocks.make_block()
    assert nxt["txids"][1:] == [wide.txid, child.txid]
    assert led.reads.counts() == {"pending": 0, "unconfirmed": 0}


def _unspent_total(led):
    [(total,)] = led.store.query("SELECT SUM(amount) FROM utxos WHERE state='Unspent'")
    return total


def test_payments_with_fees_and_blocks_keep_the_total_supply(tmp_path):
    import random
    rng = random.Random(16)
    a, b, _ = _mirror(tmp_path)
    wallets = [new_wallet() for _ in range(20)]
    for _, addr in wallets:
        a.faucet.pay(addr, 1_0000_0000)
    fees = 0
    for n in range(1000):
        key, addr = rng.choice(wallets)
        coins = [u for u in a.reads.list_unspent(addr) if u["state"] == "Unspent"]
        coin = max(coins, key=lambda u: u["amount"])
        fee = rng.randrange(0, 1000)
        pay = rng.randrange(1, max(2, coin["amount"] // 3))
        outs = [(rng.choice(wallets)[1], pay), (addr, coin["amount"] - pay - fee)]
        a.submit(build([(coin["txid"], coin["vout"], key)], outs, timestamp=n).to_json())
        fees += fee
        if n % 100 == 99:
            blk = a.reads.get_block(a.blocks.make_block()["height"], with_txs=True)
            accept(b, blk, blk["commit"])
    blk = a.reads.get_block(a.blocks.make_block()["height"], with_txs=True)
    accept(b, blk, blk["commit"])
    # Every fee went to the producer; nothing was made or burned.
    assert a.reads.balance(a.address) == b.reads.balance(a.address) == fees > 0
    everyone = [a.address, crypto.address_of(crypto.public_key_hex(FAUCET_KEY), "regtest"),
                *(addr for _, addr in wallets)]
    for led in (a, b, Ledger(a.store, "regtest", a.key, clock=Clock())):
        assert _unspent_total(led) == GENESIS_SUPPLY
        assert sum(led.reads.balance(addr) for addr in everyone) == GENESIS_SUPPLY


def test_an_older_data_directory_shows_its_blocks_with_round_0_and_no_commit(tmp_path):
    import sqlite3
    led, _ = make_ledger(tmp_path)
    _paid_with_fee(led)
    old = led.blocks.make_block()
    led.store.close()
    # As a node from before rounds and commits left its blocks table.
    db = sqlite3.connect(tmp_path / "t.db")
    db.executescript("""
        CREATE TABLE old (height INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE,
            prev_hash TEXT NOT NULL, timestamp INTEGER NOT NULL, txids BLOB NOT NULL,
            producer TEXT NOT NULL);
        INSERT INTO old SELECT height, hash, prev_hash, timestamp, txids, producer
            FROM blocks;
        DROP TABLE blocks;
        ALTER TABLE old RENAME TO blocks;""")
    db.commit()
    db.close()
    again, _ = make_ledger(tmp_path)
    got = again.reads.get_block(1)
    assert got == old | {"commit": [], "round": 0}
    assert again.reads.get_block(0)["commit"] == [] and again.reads.get_block(0)["round"] == 0
    # The chain goes on from there.
    _paid_with_fee(again)
    assert again.blocks.make_block()["prev_hash"] == old["hash"]
    assert again.reads.get_block(2)["commit"] != []


def test_a_relayed_spend_of_a_coin_already_taken_is_stored_rejected_and_passed_on(tmp_path):
    # Pending at another node before the winner finalized there: every node must end
    # with it rejected, and its wallets with the same events (SPEC 7.4).
    led, events, keys, _, ka, coin = _net(tmp_path)
    t1 = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    t2 = build([(coin, 0, ka)], [(new_wallet()[1], 2000)], timestamp=2)
    led.submit(t1.to_json())
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, t1.txid, True))
    assert led.status_of(t1.txid) == "finalized"
    events.clear()
    assert led.submit(t2.to_json(), relayed=True) == t2.txid
    assert led.status_of(t2.txid) == "rejected"
    assert kinds(events) == [("TransactionPending",), ("TransactionRejected",)]
    assert led.reads.get_transaction(t2.txid)["reason"] == "conflict"
    # Passed on to a peer that asks, and never taken again, nor from a wallet.
    txs, _ = led.pending_for(None, 1 << 20)
    assert t2.txid in [t.txid for t in txs]
    assert led.submit(t2.to_json(), relayed=True) == t2.txid and len(events) == 2
    with pytest.raises(LedgerError, match="rejected by the network"):
        led.submit(t2.to_json())
    with pytest.raises(LedgerError, match="TX_CONFLICT"):
        led.submit(build([(coin, 0, ka)], [(new_wallet()[1], 3)], timestamp=3).to_json())
