"""Tests of timefast.ledger.recovery: genesis, restarts, storage failure, old databases."""

from __future__ import annotations

import orjson
import pytest

from timefast import crypto
from timefast.ledger import FAUCET_KEY, GENESIS_SUPPLY
from timefast.storage import StorageError
from timefast.transaction import build

from .helpers import batch_vote, new_wallet
from .ledger_helpers import Clock, _paid_with_fee, make_ledger


def test_genesis_funds_the_faucet(tmp_path):
    led, _ = make_ledger(tmp_path)
    faucet = crypto.address_of(crypto.public_key_hex(FAUCET_KEY), "regtest")
    assert led.height == 0
    assert led.reads.balance(faucet) == GENESIS_SUPPLY
    assert led.reads.get_block(0)["txids"] == [led.reads.list_unspent(faucet)[0]["txid"]]


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
