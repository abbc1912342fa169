"""Tests of timefast.ledger.reads: coins, snapshot and history pages, kept events."""

from __future__ import annotations

import gc
import tracemalloc

import orjson
import pytest

from timefast import crypto
from timefast.ledger import LedgerError
from timefast.transaction import build

from .helpers import batch_vote, ledger_with_coins, new_wallet
from .ledger_helpers import Clock, make_ledger


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
