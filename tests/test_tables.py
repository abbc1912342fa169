"""The tables: rows staged per batch, written once, read back consistently."""

from __future__ import annotations

import orjson
import pytest

from timefast import crypto
from timefast.ledger import Ledger, LedgerError
from timefast.storage import StorageError, Store
from timefast.tables import Coin, EventRow, Rows, Tables, TxChange, TxRow, Vote
from timefast.transaction import build

from .helpers import batch_vote, ledger_with_coins, new_wallet


class CountingDb:
    """A sqlite connection that counts the statements it runs."""

    def __init__(self, db) -> None:
        self.db = db
        self.calls: list[tuple[str, int]] = []
        self.statements: list[str] = []

    def execute(self, sql, args=()):
        self.calls.append((sql.split()[0], 1))
        self.statements.append(sql)
        return self.db.execute(sql, args)

    def executemany(self, sql, rows):
        rows = list(rows)
        self.calls.append((sql.split()[0], len(rows)))
        self.statements.append(sql)
        return self.db.executemany(sql, rows)


def _store(tmp_path) -> Store:
    store = Store(tmp_path / "w.db")
    Tables(store)  # the ledger's tables in place
    return store


def _tx(txid: str) -> TxRow:
    return TxRow(txid, b"{}", "pending", 1.0, None, None, b"[]", None)


def test_a_row_changed_many_times_is_written_once_in_its_last_state(tmp_path):
    store = _store(tmp_path)
    w = Rows()
    w.put_utxo(("t", 0), Coin("A", 5, "Unspent", None, 0, None), new=True)
    w.put_utxo(("t", 0), Coin("A", 5, "Locked", "s", 0, None), new=False)
    w.put_utxo(("t", 0), Coin("A", 5, "SpentPending", "s", 1, None), new=False)
    w.add_tx(_tx("s"))
    w.set_tx("s", TxChange("finalized", finalized_seq=9))
    w.events.extend([EventRow(1, "X", None, b"{}", None, None),
                     EventRow(2, "Y", b'["A"]', b"{}", None, None)])
    db = CountingDb(store.db)
    with store.transaction():
        w.flush(db)
    assert not w
    assert sorted(db.calls) == [("INSERT", 1), ("INSERT", 1), ("INSERT", 2)]
    assert store.one("SELECT state, votes FROM utxos WHERE txid='t'") == ("SpentPending", 1)
    assert store.one("SELECT status, finalized_seq FROM txs WHERE txid='s'") == ("finalized", 9)
    # Later changes to stored rows are UPDATEs that keep what they do not name.
    w.put_utxo(("t", 0), Coin("A", 5, "SpentFinalized", "s", 1, None), new=False)
    w.set_tx("s", TxChange("confirmed", block_height=4))
    with store.transaction() as raw:
        w.flush(raw)
    assert store.one("SELECT status, finalized_seq, block_height FROM txs") == (
        "confirmed", 9, 4)
    assert store.one("SELECT state FROM utxos") == ("SpentFinalized",)


def test_keyed_reads_answer_from_staged_rows_first():
    w = Rows()
    assert w.tx_status("s") is None and w.utxo(("t", 0)) is None
    assert w.has_vote("s", "v") is None
    w.set_tx("s", TxChange("rejected", reason="quorum against"))
    assert w.tx_status("s") == "rejected"
    w.add_tx(_tx("s"))
    assert w.tx_status("s") == "pending" and "s" not in w.tx_changes
    w.add_vote(Vote("s", "v", True, "sig"))
    assert w.has_vote("s", "v") is True
    # Retrying a transaction forgets its votes, staged or stored.
    w.clear_votes("s")
    assert w.has_vote("s", "v") is False and w.has_vote("s", "other") is False
    w.put_utxo(("t", 0), Coin("A", 5, "Locked", "s", 0, None), new=False)
    assert w.utxo(("t", 0)).state == "Locked"


def test_cleared_votes_go_before_new_ones(tmp_path):
    store = _store(tmp_path)
    with store.transaction() as db:
        db.execute("INSERT INTO votes VALUES ('s','old',0,'x')")
    w = Rows()
    w.add_vote(Vote("s", "stale", True, "y"))
    w.clear_votes("s")
    w.add_vote(Vote("s", "new", True, "z"))
    with store.transaction() as db:
        w.flush(db)
    assert store.query("SELECT voter FROM votes") == [("new",)]


def test_a_batch_reads_its_own_writes(tmp_path):
    led, ka, a, split = ledger_with_coins(tmp_path / "l.db")
    tx = build([(split.txid, 0, ka)], [(new_wallet()[1], 500)], timestamp=2)
    with led.batch():
        led.submit(tx.to_json())
        # Not yet in the database, yet every read sees it.
        assert led.store.one("SELECT 1 FROM txs WHERE txid=?", (tx.txid,)) is None
        assert led.status_of(tx.txid) == "finalized"
        assert led.reads.get_transaction(tx.txid)["status"] == "finalized"
        led.blocks.make_block()
        assert led.reads.get_txout(split.txid, 0)["state"] == "Confirmed"
        assert led.reads.get_block(led.height)["txids"][-1] == tx.txid
        with pytest.raises(LedgerError) as e:
            led.submit(build([(split.txid, 0, ka)], [(a, 1)], timestamp=3).to_json())
        assert e.value.code == "TX_CONFLICT"
    assert led.store.one("SELECT status FROM txs WHERE txid=?", (tx.txid,)) == ("confirmed",)


def test_batch_commit_uses_one_statement_per_kind(tmp_path, monkeypatch):
    led, ka, _a, split = ledger_with_coins(tmp_path / "l.db")
    txs = [build([(split.txid, i, ka)], [(new_wallet()[1], 500)], timestamp=i)
           for i in range(8)]
    counting = CountingDb(led.store.db)
    real = led.store.transaction

    def counted():
        cm = real()

        class Wrap:
            def __enter__(self):
                cm.__enter__()
                return counting

            def __exit__(self, *exc):
                return cm.__exit__(*exc)
        return Wrap()

    monkeypatch.setattr(led.store, "transaction", counted)
    with led.batch():
        for tx in txs:
            led.submit(tx.to_json())
    kinds = [c for c in counting.calls if c[0] != "DELETE"]
    # txs (with the node's votes inline), utxos (new), utxos (changed), events, the
    # address history, then the seq: six statements for eight transactions.
    assert len(kinds) == 6, kinds
    assert not any(q.startswith("INSERT INTO votes") for q in counting.statements)
    assert all(led.status_of(t.txid) == "finalized" for t in txs)


def test_a_failed_write_mid_batch_fails_the_whole_batch(tmp_path):
    led, ka, a, split = ledger_with_coins(tmp_path / "l.db")
    seq, balance = led.seq, led.reads.balance(a)
    tx = build([(split.txid, 0, ka)], [(new_wallet()[1], 500)], timestamp=2)
    with pytest.raises(StorageError), led.batch():
        led.submit(tx.to_json())
        led.store.db.execute("PRAGMA query_only=ON")
        led.reads.get_transaction(tx.txid)  # must write the staged rows first: refused
    led.store.db.execute("PRAGMA query_only=OFF")
    assert led.seq == seq and led.reads.balance(a) == balance and led.status_of(tx.txid) is None
    assert led.submit(tx.to_json()) == tx.txid


def test_votes_cast_with_their_row_are_written_inline(tmp_path):
    store = _store(tmp_path)
    w = Rows()
    w.add_tx(_tx("t1"))
    w.add_vote(Vote("t1", "me", True, "sig1"))
    with store.transaction():
        w.flush(store.db)
    # A later vote on a stored transaction goes to the votes table.
    w.add_vote(Vote("t1", "other", False, "sig2"))
    with store.transaction():
        w.flush(store.db)
    assert store.query("SELECT txid, voter, approve FROM votes") == [("t1", "other", 0)]
    assert orjson.loads(store.one("SELECT inline_votes FROM txs")[0]) == [["me", 1, "sig1"]]
    # Tried again after a rejection: both kinds of stored votes go.
    w.clear_votes("t1")
    with store.transaction():
        w.flush(store.db)
    assert store.query("SELECT * FROM votes") == []
    assert store.one("SELECT inline_votes FROM txs")[0] is None


def test_the_ledger_counts_inline_and_table_votes(tmp_path):
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led = Ledger(Store(tmp_path / "l.db"), "regtest", keys[0], pubs)
    _, a = new_wallet()
    with led.batch():  # the own batch signed in the commit that stores the transaction
        t = led.faucet.pay(a, 10)
        led.sign_batch()
    assert led.store.query("SELECT * FROM votes") == []
    assert led.reads.get_transaction(t)["votes"] == 1
    led.votes.submit_vote(batch_vote(led, keys[1], t, True))
    assert len(led.store.query("SELECT * FROM votes")) == 1
    assert led.reads.get_transaction(t)["votes"] == 2
    # Both kinds name their signed batch, which the certificate finds.
    assert sorted(b.voter for b in led.certificate(t)) == sorted(pubs[:2])
    led.store.close()
    led = Ledger(Store(tmp_path / "l.db"), "regtest", keys[0], pubs)
    assert led.pool.pending[t].approvals == set(pubs[:2])
    assert led.votes.next_batch == 2
