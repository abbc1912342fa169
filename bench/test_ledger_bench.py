"""Transactions per second from submission to finalized on one regtest node.

A node runs as its own process; this process submits pre-signed transactions over
the wallet WebSocket (``SubmitTransaction``, many in flight) and times each one
from its send to the ``TransactionFinalized`` event the node pushes.  Two sizes: a
short burst, and a longer run in which the database outgrows the page cache (the
sustained rate).  LEDGER_BENCH_TX=N runs one size instead.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import orjson
import pytest
from websockets.asyncio.client import connect

from bench import report
from bench.progress import Progress
from tests.helpers import NodeProcess, fund_coins, new_wallet
from timefast.transaction import build

SIZES = ([int(os.environ["LEDGER_BENCH_TX"])] if os.environ.get("LEDGER_BENCH_TX")
         else [4000, 20000])
IN_FLIGHT = 256
# Outputs per split transaction that funds the run (tests.helpers.fund_coins): wide
# splits would fill the event log with megabytes the timed part then has to age out.
SPLIT = 100


def _prepare(node, n_tx: int, receivers: int = 16):
    """Pre-signed transactions; transaction i pays receiver i % receivers."""
    ka, a = new_wallet()
    bs = [new_wallet()[1] for _ in range(receivers)]
    coins = fund_coins(node.rpc_url, ka, a, n_tx, SPLIT)
    txs = [build([(*coins[i], ka)], [(bs[i % receivers], 600), (a, 400)], timestamp=i)
           for i in range(n_tx)]
    return bs, txs


async def _one_connection(url: str, b: str, txs, window_size: int,
                          delays: list[float], bar: Progress) -> None:
    sent: dict[str, float] = {}
    window = asyncio.Semaphore(window_size)
    finished = asyncio.get_running_loop().create_future()
    async with connect(url, max_queue=None, max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "Subscribe",
                                    "data": {"addresses": [b], "snapshot": False}}).decode())
        mine = {tx.txid for tx in txs}
        left = [len(txs)]

        async def reader():
            try:
                async for raw in ws:
                    msg = orjson.loads(raw)
                    if msg["type"] == "TransactionFinalized":
                        t0 = sent.pop(msg["data"]["txid"], None)
                        if t0 is not None:
                            delays.append(time.perf_counter() - t0)
                            bar.set(len(delays))
                            window.release()
                            left[0] -= 1
                            if not left[0]:
                                finished.set_result(None)
                                return
                    elif msg["type"] == "Error":
                        raise AssertionError(msg)
            except BaseException as e:
                if not finished.done():
                    finished.set_exception(e)

        task = asyncio.create_task(reader())
        for tx in txs:
            await window.acquire()
            if finished.done():
                break
            sent[tx.txid] = time.perf_counter()
            await ws.send(orjson.dumps({"type": "SubmitTransaction",
                                        "data": {"tx": tx.to_json()}}).decode())
        await asyncio.wait_for(finished, 120)
        task.cancel()
        assert not mine & set(sent)


async def _drive(url: str, bs: list[str], txs) -> tuple[float, list[float]]:
    """One connection per receiver, each submitting the transactions that pay it."""
    delays: list[float] = []
    n = len(bs)
    start = time.perf_counter()
    with Progress("submission -> finalized", len(txs), "tx") as bar:
        await asyncio.gather(*[_one_connection(url, bs[i], txs[i::n], IN_FLIGHT // n, delays,
                                               bar) for i in range(n)])
    return time.perf_counter() - start, delays


RESULTS: dict[int, dict[str, float]] = {}


@pytest.mark.parametrize("n_tx", SIZES)
def test_submission_to_finalized(benchmark, tmp_path, n_tx):
    node = NodeProcess(tmp_path).start()
    try:
        b, txs = _prepare(node, n_tx)
        out: dict[str, float] = {}

        def run():
            elapsed, delays = asyncio.run(_drive(node.ws_url, b, txs))
            delays.sort()
            out.update(tx_per_s=len(delays) / elapsed,
                       p50_ms=statistics.median(delays) * 1e3,
                       p99_ms=delays[int(len(delays) * 0.99) - 1] * 1e3)

        benchmark.pedantic(run, rounds=1, iterations=1)
        benchmark.extra_info.update(out)
        print(f"\nsubmission -> finalized: {out['tx_per_s']:.0f} tx/s, "
              f"p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms "
              f"({n_tx} tx, {IN_FLIGHT} in flight, one regtest node)")
    finally:
        node.terminate()
    RESULTS[n_tx] = out
    rows = [f"| {n:,} | {r['tx_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
            for n, r in sorted(RESULTS.items())]
    report.set_section("ledger", "\n".join([
        "## Submission to finality", "",
        f"{report.stamp()} One regtest node (quorum 1); pre-signed payments over 16 wallet "
        f"connections, {IN_FLIGHT} in flight; each timed from its send to the "
        "`TransactionFinalized` the node pushes.", "",
        "| transactions | tx/s | p50 ms | p99 ms |", "|---:|---:|---:|---:|", *rows]))
