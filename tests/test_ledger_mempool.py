"""Tests of timefast.ledger.mempool: admission, conflicts, relayed spends and orphans."""

from __future__ import annotations

import pytest

from timefast.ledger import LedgerError, SpentConflict
from timefast.transaction import build

from .helpers import batch_vote, commit_next, new_wallet
from .ledger_helpers import _net, _own_vote, kinds, make_ledger


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


def test_a_spend_of_a_coin_spent_for_good_is_refused_unstored(tmp_path):
    # SPEC 7.3 Budgets: whoever sends it, a spend of an output a finalized or
    # confirmed transaction spent is refused (TX_CONFLICT), stored nowhere, announced
    # to nobody; the peer layer learns the confirming block's height.
    led, events, keys, _, ka, coin = _net(tmp_path)
    t1 = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    led.submit(t1.to_json())
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, t1.txid, True))
    assert led.status_of(t1.txid) == "finalized"
    events.clear()
    seq = led.seq
    respends = [build([(coin, 0, ka)], [(new_wallet()[1], 2000 + i)], timestamp=2 + i)
                for i in range(3)]
    for t in respends:
        with pytest.raises(SpentConflict) as e:
            led.submit(t.to_json(), relayed=True)
        assert e.value.code == "TX_CONFLICT" and e.value.confirmed_at is None
        with pytest.raises(LedgerError, match="TX_CONFLICT"):
            led.submit(t.to_json())  # from a wallet: the same answer
        assert led.status_of(t.txid) is None
    assert (led.seq, events) == (seq, [])
    txs, _ = led.pending_for(None, 1 << 20)
    assert not {t.txid for t in respends} & {t.txid for t in txs}
    # Once a block confirms the spend, the refusal names its height.
    block = commit_next([led], keys)
    assert led.status_of(t1.txid) == "confirmed"
    with pytest.raises(SpentConflict) as e:
        led.submit(respends[0].to_json(), relayed=True)
    assert e.value.confirmed_at == block["height"]


def test_a_spend_refused_for_a_final_rival_has_its_signatures_unchecked(tmp_path,
                                                                         monkeypatch):
    # Refused before any signature is checked: a flood of them costs no ed25519.
    led, _, keys, _, ka, coin = _net(tmp_path)
    t1 = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    led.submit(t1.to_json())
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, t1.txid, True))
    checked = []
    monkeypatch.setattr(led.mempool, "good_signature", lambda *a: checked.append(a))
    with pytest.raises(SpentConflict):
        led.submit(build([(coin, 0, ka)], [(new_wallet()[1], 7)], timestamp=9).to_json(),
                   relayed=True)
    assert checked == []


def test_kept_rejections_are_bounded_in_count_and_bytes(monkeypatch):
    from timefast.ledger import pool as pool_module
    from timefast.ledger.pool import Pool
    from timefast.tables import Rows
    monkeypatch.setattr(pool_module, "RECENT_REJECTED", 3)
    monkeypatch.setattr(pool_module, "RECENT_REJECTED_BYTES", 100)
    pool = Pool(Rows(), None)  # type: ignore[arg-type]
    for i in range(5):
        pool.remember_rejected(f"{i:064x}", b"x" * 10)
    assert list(pool.recent_rejected) == [f"{i:064x}" for i in (2, 3, 4)]
    pool.remember_rejected("ff" * 32, b"y" * 85)
    assert list(pool.recent_rejected) == [f"{4:064x}", "ff" * 32]
    assert pool.recent_rejected_bytes == 95


def test_a_spend_of_a_coin_taken_in_a_peers_answer_is_stored_rejected(tmp_path):
    # Pending at another node before the winner finalized there, and passed on in its
    # answer to GetPending: every node ends with it rejected, and its wallets with the
    # same events (SPEC 7.4); its signatures are checked first.
    led, events, keys, _, ka, coin = _net(tmp_path)
    t1 = build([(coin, 0, ka)], [(new_wallet()[1], 1000)], timestamp=1)
    t2 = build([(coin, 0, ka)], [(new_wallet()[1], 2000)], timestamp=2)
    led.submit(t1.to_json())
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, t1.txid, True))
    events.clear()
    forged = t2.to_json()
    forged["inputs"][0]["signature"] = "00" * 64
    with pytest.raises(LedgerError, match="signature"):
        led.submit(forged, relayed=True, answered=True)
    assert led.submit(t2.to_json(), relayed=True, answered=True) == t2.txid
    assert led.status_of(t2.txid) == "rejected"
    assert kinds(events) == [("TransactionPending",), ("TransactionRejected",)]
    assert led.reads.get_transaction(t2.txid)["reason"] == "conflict"
    txs, _ = led.pending_for(None, 1 << 20)
    assert t2.txid in [t.txid for t in txs]
    assert led.submit(t2.to_json(), relayed=True) == t2.txid and len(events) == 2
