"""Group commit: many requests, one commit, nothing acknowledged before it."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from timefast import commits
from timefast.commits import GroupCommit
from timefast.ledger import LedgerError, mempool
from timefast.storage import StorageError
from timefast.transaction import Transaction, TxInput, TxOutput, build, parse

from .helpers import ledger_with_coins, new_wallet


def _setup(tmp_path):
    led, ka, a, split = ledger_with_coins(tmp_path / "c.db")
    announced = []
    led.listen(announced.extend)
    return led, ka, a, split, announced


def test_one_commit_for_a_turn_and_conflicts_inside_it(tmp_path):
    led, ka, _a, split, announced = _setup(tmp_path)
    loop = asyncio.new_event_loop()
    gc = GroupCommit(led, loop)
    outcomes = []
    txs = [build([(split.txid, i, ka)], [(new_wallet()[1], 500)], timestamp=i) for i in range(5)]
    loser = build([(split.txid, 0, ka)], [(new_wallet()[1], 700)], timestamp=99)
    for tx in [*txs, loser]:
        gc.submit(lambda tx=tx: led.submit(tx.to_json()),
                  lambda v, e: outcomes.append((v, getattr(e, "code", None),
                                                len(announced))))
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    assert gc.batches == 1
    assert [o[0] for o in outcomes[:5]] == [t.txid for t in txs]
    assert outcomes[5][:2] == (None, "TX_CONFLICT")
    # Every event was announced before the first result was handed back.
    assert all(o[2] == len(announced) for o in outcomes)
    assert all(led.status_of(t.txid) == "finalized" for t in txs)


def test_failed_commit_refuses_all_and_forgets_the_batch(tmp_path, monkeypatch):
    led, ka, a, split, announced = _setup(tmp_path)
    seq, balance = led.seq, led.reads.balance(a)
    txs = [build([(split.txid, i, ka)], [(new_wallet()[1], 500)], timestamp=i) for i in range(3)]
    real_commit = led.store.transaction

    def failing_commit():
        cm = real_commit()

        class Wrapper:
            def __enter__(self):
                return cm.__enter__()

            def __exit__(self, *exc):
                if exc[0] is None:
                    cm.__exit__(StorageError, StorageError("disk full"), None)
                    raise StorageError("database write failed: disk full")
                return cm.__exit__(*exc)
        return Wrapper()

    monkeypatch.setattr(led.store, "transaction", failing_commit)
    with pytest.raises(StorageError), led.batch():
        for tx in txs:
            led.submit(tx.to_json())
    monkeypatch.setattr(led.store, "transaction", real_commit)
    assert announced == []
    assert led.seq == seq and led.reads.balance(a) == balance
    assert all(led.status_of(t.txid) is None for t in txs)
    assert all(led.pool.utxos.state(split.txid, i) == "Unspent" for i in range(3))
    # After the failure the node carries on.
    assert led.submit(txs[0].to_json()) == txs[0].txid
    with pytest.raises(LedgerError):
        led.submit(build([(split.txid, 0, ka)], [(a, 1)], timestamp=7).to_json())


def _drain(loop, gc, until) -> None:
    # Turns the loop until ``until()`` (the checker thread answers in between).
    async def wait():
        for _ in range(500):
            if until():
                return
            await asyncio.sleep(0.01)
    loop.run_until_complete(wait())


def test_signatures_are_checked_ahead_and_order_is_kept(tmp_path):
    led, ka, _a, split, _announced = _setup(tmp_path)
    loop = asyncio.new_event_loop()
    gc = GroupCommit(led, loop)
    order: list[str] = []
    txs = [build([(split.txid, i, ka)], [(new_wallet()[1], 500)], timestamp=i) for i in range(9)]
    # One carries its owner's signature of other bytes: it must still be refused.
    forged = build([(split.txid, 9, ka)], [(new_wallet()[1], 500)], timestamp=9)
    other = build([(split.txid, 9, ka)], [(new_wallet()[1], 400)], timestamp=10)
    bad = forged.to_json()
    bad["inputs"][0]["signature"] = other.inputs[0].signature
    for n, tx in enumerate(txs):
        obj = tx.to_json()
        prepared = parse(obj)
        gc.submit(lambda p=prepared: led.submit(p), lambda v, e, n=n: order.append(f"tx{n}"),
                  prepared)
        if n == 4:  # work with no transaction, between them
            gc.submit(lambda: led.height, lambda v, e: order.append("rpc"))
    prepared = parse(bad)
    errors = []
    gc.submit(lambda: led.submit(prepared), lambda v, e: errors.append(e), prepared)
    _drain(loop, gc, lambda: len(order) == 10 and errors)
    gc.close()
    loop.close()
    assert order == ["tx0", "tx1", "tx2", "tx3", "tx4", "rpc", "tx5", "tx6", "tx7", "tx8"]
    assert gc.checked_ahead >= 10
    assert isinstance(errors[0], LedgerError) and "bad signature" in errors[0].message
    assert all(led.status_of(t.txid) == "finalized" for t in txs)
    assert not led.mempool._checked  # what was checked ahead is dropped once used


def _junk(inputs: int) -> dict:
    """A transaction of made-up inputs with well-formed, wrong signatures."""
    ins = tuple(TxInput(secrets.token_hex(32), 0, secrets.token_hex(32),
                        secrets.token_hex(64)) for _ in range(inputs))
    outs = (TxOutput(1000, new_wallet()[1]),)
    return Transaction(Transaction("", 1, ins, outs, 0, 1).compute_txid(), 1, ins, outs, 0,
                       1).to_json()


def test_no_signature_is_checked_for_inputs_that_are_not_the_keys_coins(tmp_path,
                                                                         monkeypatch):
    # A wallet with no coins sent transactions of 283 made-up inputs with wrong
    # signatures: every signature was checked ahead (33 s of CPU for 1,000 of them)
    # before the ledger found the first input unknown.
    led, _ka, _a, split, _ = _setup(tmp_path)
    checked: list[int] = []
    real = commits.verify_batch
    monkeypatch.setattr(commits, "verify_batch",
                        lambda items: (checked.append(len(items)), real(items))[1])
    verified = []
    monkeypatch.setattr(mempool, "verify", lambda *a: verified.append(a) or False)
    stranger = new_wallet()[0]
    # An existing coin signed by a key that does not own it.
    not_owned = build([(split.txid, 0, stranger)], [(new_wallet()[1], 500)],
                      timestamp=1).to_json()
    loop = asyncio.new_event_loop()
    gc = GroupCommit(led, loop)
    errors = []
    for obj in [_junk(283) for _ in range(20)] + [not_owned]:
        prepared = parse(obj)
        assert prepared is not None and not led.mempool.spendable(prepared)
        gc.submit(lambda p=prepared: led.submit(p), lambda v, e: errors.append(e), prepared)
    _drain(loop, gc, lambda: len(errors) == 21)
    gc.close()
    loop.close()
    assert all(isinstance(e, LedgerError) for e in errors)
    assert sum("unknown outpoint" in e.message for e in errors) == 20
    assert "does not own" in errors[-1].message
    assert checked == [] and verified == []
