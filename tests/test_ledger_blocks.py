"""Tests of timefast.ledger.blocks: blocks proposed, validated and applied, coinbase, supply."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from timefast import crypto, wire
from timefast.ledger import FAUCET_KEY, GENESIS_SUPPLY, Ledger, LedgerError
from timefast.rules import coinbase, proposer
from timefast.transaction import build

from .helpers import accept, batch_vote, commit_for, commit_next, new_wallet, propose, validate
from .ledger_helpers import Clock, _paid_with_fee, kinds, make_ledger


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


def _rehash(block, **changes):
    """``block`` with ``changes`` and the hash of its new header."""
    from timefast.rules import block_hash
    b = block | changes
    if "txs" in changes and "txids" not in changes:
        b["txids"] = [t["txid"] for t in b["txs"]]
    b["hash"] = block_hash(b["height"], b["prev_hash"], b["timestamp"], b["txids"],
                           b["producer"], b["round"])
    return b


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
