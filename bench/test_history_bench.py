"""Address history: a page of a long history, and what the index costs the ledger.

1. An address with 100,000 transactions (their rows written straight into the
   tables, in the shape the ledger writes them): ``GetHistory`` pages of 50, from the
   newest and from deep cursors, p50/p99 over 2,000 calls.
2. The ledger's rate, payments submitted and finalized in batches of 256 on a
   one-masternode ledger, with the history index written and without it, each round
   in a process of its own, taken in
   turn (A B A B A B) in one run.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

from bench import report
from tests.helpers import ledger_with_coins, new_wallet
from timefast import crypto
from timefast.ledger import Ledger
from timefast.ledger.index import AddressIndex
from timefast.storage import Store
from timefast.transaction import build

HISTORY = 100_000
PAGES = 2_000
PAYMENTS = 4_000
BATCH = 256


def _long_history(tmp_path) -> tuple[Ledger, str]:
    led = Ledger(Store(tmp_path / "h.db"), "regtest", crypto.new_key())
    _, a = new_wallet()
    ka, other = new_wallet()
    sample = build([("ab" * 32, 0, ka)], [(a, 600), (other, 400)], timestamp=1).to_json()
    rows, hist = [], []
    for k in range(1, HISTORY + 1):
        txid = f"{k:064x}"
        raw = orjson.dumps(sample | {"txid": txid})
        status, height = ("confirmed", 0) if k % 3 else ("finalized", None)
        rows.append((txid, raw, status, 1.8e9 + k, height, b"[]"))
        hist.append((a, k, txid, 600, 0))
    with led.store.transaction() as db:
        db.executemany("INSERT INTO txs (txid, raw, status, accepted_at, block_height,"
                       " addresses) VALUES (?,?,?,?,?,?)", rows)
        db.executemany("INSERT INTO history VALUES (?,?,?,?,?)", hist)
    return led, a


def test_a_page_of_a_long_history(tmp_path):
    led, a = _long_history(tmp_path)
    rnd = random.Random(1)
    times = []
    for i in range(PAGES):
        before = None if i % 2 else rnd.randint(51, HISTORY)
        t0 = time.perf_counter()
        page = led.reads.history(a, 50, before)
        times.append(time.perf_counter() - t0)
        assert len(page["txs"]) == 50 and page["tx_count"] == HISTORY
    times.sort()
    p50, p99 = statistics.median(times) * 1e3, times[int(len(times) * 0.99) - 1] * 1e3
    print(f"\nGetHistory page of 50, address with {HISTORY:,} transactions: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({PAGES} pages)")
    _section("page", f"| page of 50 of {HISTORY:,} transactions | p50 {p50:.2f} ms | "
                     f"p99 {p99:.2f} ms |")


def _rate(path: Path, indexed: bool) -> float:
    """Payments per second of a fresh ledger in ``path``, with or without the index."""
    led, ka, a, _ = ledger_with_coins(path)
    coins = []
    for _ in range(PAYMENTS // 100):
        t = led.faucet.pay(a, 100_000)
        split = build([(t, 0, ka)], [(a, 1000)] * 100, timestamp=2)
        led.submit(split.to_json())
        coins += [(split.txid, v) for v in range(100)]
    payees = [new_wallet()[1] for _ in range(16)]
    txs = [build([(*coins[i], ka)], [(payees[i % 16], 600), (a, 400)], timestamp=i)
           for i in range(PAYMENTS)]
    if not indexed:
        AddressIndex.add = lambda self, s, tx, spent: None  # type: ignore[method-assign]
    start = time.perf_counter()
    for i in range(0, len(txs), BATCH):
        with led.batch():
            for tx in txs[i:i + BATCH]:
                led.submit(tx)
    elapsed = time.perf_counter() - start
    assert all(led.status_of(tx.txid) == "finalized" for tx in txs[:: 97])
    led.store.close()
    return PAYMENTS / elapsed


def test_what_the_index_costs_the_ledger(tmp_path):
    # Each round in a process of its own, so that no round inherits another's heap.
    runs: dict[bool, list[float]] = {True: [], False: []}
    for i, indexed in enumerate([True, False] * 3):
        out = subprocess.run([sys.executable, "-m", "bench.test_history_bench",
                              str(tmp_path / f"r{i}.db"), "1" if indexed else "0"],
                             capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parent.parent)
        runs[indexed].append(float(out.stdout.split()[-1]))
    with_, without = statistics.mean(runs[True]), statistics.mean(runs[False])
    cost = 1 - with_ / without
    print(f"\nledger, {PAYMENTS:,} payments in batches of {BATCH}: with the history index "
          f"{with_:,.0f} tx/s ({', '.join(f'{r:,.0f}' for r in runs[True])}), without "
          f"{without:,.0f} tx/s ({', '.join(f'{r:,.0f}' for r in runs[False])}): "
          f"cost {cost:.1%}")
    _section("cost", f"| ledger rate, {PAYMENTS:,} payments in batches of {BATCH} | "
                     f"with index {with_:,.0f} tx/s | without {without:,.0f} tx/s "
                     f"(cost {cost:.1%}) |")


_ROWS: dict[str, str] = {}


def _section(key: str, row: str) -> None:
    _ROWS[key] = row
    report.set_section("history", "\n".join([
        "## Address history", "",
        f"{report.stamp()} In-process ledger; page timings over {PAGES:,} calls; the "
        "ledger's rates with and without the index taken in turn (A B A B A B).", "",
        "| what | figure | figure |", "|---|---:|---:|", *(_ROWS[k] for k in sorted(_ROWS))]))




if __name__ == "__main__":  # one round of test_what_the_index_costs_the_ledger
    print(_rate(Path(sys.argv[1]), sys.argv[2] == "1"))
