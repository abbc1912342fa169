"""Finality across a network of masternodes, all on this machine (SPEC 7.4).

Four masternodes run as processes on loopback (tests/network.py), each one's PEERS
the others.  Pre-signed payments are submitted over the wallet WebSocket, spread over
the four nodes; each is timed from its send at one node to the
``TransactionFinalized`` that a wallet subscribed to its receiver hears on *another*
node.  Two runs: as fast as the network takes them (``IN_FLIGHT`` in flight), and
paced at ``PACED_RATE`` tx/s for the latency at a steady load.  A one-masternode node
takes the same kind of payments in the same run, for comparison.

NETWORK_BENCH_TX=N sets the payments of the fast run (default 4,000).
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
from tests.helpers import NodeProcess, new_wallet, result, wait_for
from tests.network import Network
from timefast.transaction import build

N_TX = int(os.environ.get("NETWORK_BENCH_TX", "4000"))
PACED_RATE = 500  # tx/s (SPEC's target load)
LIGHT_RATE = 100  # tx/s, a load this machine's four nodes keep up with
PACED_SECONDS = 6
IN_FLIGHT = 256
RECEIVERS = 16
SPLIT = 500  # outputs per funding transaction


def _fund(rpc_urls: list[str], wait_all, n: int):
    """``n`` coins of 1,000 for a fresh wallet, known (finalized) on every node."""
    ka, a = new_wallet()
    coins: list[tuple[str, int]] = []
    last = None
    while len(coins) < n:
        coin = result(rpc_urls[0], "faucet", a, 1000 * SPLIT)
        wait_all(coin, rpc_urls[:1])
        split = build([(coin, 0, ka)], [(a, 1000)] * SPLIT, timestamp=len(coins))
        last = result(rpc_urls[0], "sendrawtransaction", split.to_json())
        coins += [(split.txid, v) for v in range(SPLIT)]
    wait_all(last, rpc_urls)
    return ka, a, coins[:n]


def _finalized_everywhere(txid: str, urls: list[str], timeout: float = 60) -> None:
    wait_for(lambda: all(result(u, "gettransaction", txid)["status"] in ("finalized", "confirmed")
                         for u in urls), timeout, f"{txid} finalized on every node")


async def _run(ws_urls: list[str], txs, receivers: list[str], rate: float | None,
               blocks: list[tuple[float, int, int]] | None = None
               ) -> tuple[float, list[float]]:
    """Submit ``txs`` (tx i pays receivers[i % RECEIVERS]); receiver r listens on node
    r % k, and a payment to it is submitted on the next node.  Returns the elapsed
    seconds and each payment's delay to finality as its receiver's wallet heard it;
    ``blocks`` gets (arrival unix time, height, timestamp) of each NewBlock heard on
    the first node."""
    k = len(ws_urls)
    sent: dict[str, float] = {}
    delays: list[float] = []
    window = asyncio.Semaphore(IN_FLIGHT)
    done = asyncio.get_running_loop().create_future()
    listeners = []
    for node in range(k):
        mine = [r for i, r in enumerate(receivers) if i % k == node]
        if not mine:
            continue
        ws = await connect(ws_urls[node], max_queue=None, max_size=None)
        await ws.send(orjson.dumps({"type": "Subscribe", "data": {
            "addresses": mine, "snapshot": False}}).decode())
        listeners.append(ws)

    async def listen(ws) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            if msg["type"] == "NewBlock" and blocks is not None and ws is listeners[0]:
                blocks.append((time.time(), msg["data"]["height"], msg["data"]["timestamp"]))
            if msg["type"] == "TransactionFinalized":
                t0 = sent.pop(msg["data"]["txid"], None)
                if t0 is not None:
                    delays.append(time.perf_counter() - t0)
                    window.release()
                    if len(delays) == len(txs) and not done.done():
                        done.set_result(None)

    readers = [asyncio.create_task(listen(ws)) for ws in listeners]
    submitters = [await connect(u, max_queue=None, max_size=None) for u in ws_urls]
    drains = [asyncio.create_task(_drain(ws)) for ws in submitters]
    start = time.perf_counter()
    for i, tx in enumerate(txs):
        if rate is not None:
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        await window.acquire()
        node = ((i % RECEIVERS) % k + 1) % k
        sent[tx.txid] = time.perf_counter()
        await submitters[node].send(orjson.dumps({"type": "SubmitTransaction",
                                                  "data": {"tx": tx.to_json()}}).decode())
    await asyncio.wait_for(done, 300)
    elapsed = time.perf_counter() - start
    for t in readers + drains:
        t.cancel()
    for ws in listeners + submitters:
        await ws.close()
    return elapsed, delays


async def _drain(ws) -> None:
    async for raw in ws:
        msg = orjson.loads(raw)
        if msg["type"] == "Error":
            raise AssertionError(msg)


def _stats(elapsed: float, delays: list[float]) -> dict[str, float]:
    delays = sorted(delays)
    return {"tx_per_s": len(delays) / elapsed, "p50_ms": statistics.median(delays) * 1e3,
            "p99_ms": delays[max(0, int(len(delays) * 0.99) - 1)] * 1e3}


def _payments(coins, key, address, receivers, start: int, n: int):
    return [build([(*coins[start + i], key)],
                  [(receivers[i % RECEIVERS], 600), (address, 400)], timestamp=start + i)
            for i in range(n)]


def _block_delays(blocks: list[tuple[float, int, int]], interval: float) -> list[float]:
    """Seconds from each height's start (the block before's timestamp + the
    interval) to its NewBlock at a wallet."""
    by_height = {h: (at, ts) for at, h, ts in blocks}
    return [at - (by_height[h - 1][1] + interval) for h, (at, _) in sorted(by_height.items())
            if h - 1 in by_height]


@pytest.mark.timeout(1800)
def test_four_masternodes_finality(benchmark, tmp_path):
    n_paced = PACED_RATE * PACED_SECONDS
    out: dict[str, dict[str, float]] = {}
    net = Network(tmp_path / "net", 4, FINALITY_TIMEOUT=30)
    try:
        net.start()
        rpcs = [n.rpc_url for n in net.nodes]
        n_light = LIGHT_RATE * PACED_SECONDS
        ka, a, coins = _fund(rpcs, _finalized_everywhere, N_TX + n_paced + n_light)
        receivers = [new_wallet()[1] for _ in range(RECEIVERS)]
        fast = _payments(coins, ka, a, receivers, 0, N_TX)
        paced = _payments(coins, ka, a, receivers, N_TX, n_paced)
        light = _payments(coins, ka, a, receivers, N_TX + n_paced, n_light)
        ws = [n.ws_url for n in net.nodes]

        def run():
            out["network"] = _stats(*asyncio.run(_run(ws, fast, receivers, None)))
            print(f"\nnetwork: {out['network']}", flush=True)
            out["paced"] = _stats(*asyncio.run(_run(ws, paced, receivers, PACED_RATE)))
            print(f"paced: {out['paced']}", flush=True)
            out["light"] = _stats(*asyncio.run(_run(ws, light, receivers, LIGHT_RATE)))
            print(f"light: {out['light']}", flush=True)
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        net.close()
    # The same, while the network makes a block every second.
    net = Network(tmp_path / "blocks", 4, FINALITY_TIMEOUT=30, BLOCK_INTERVAL=1)
    try:
        net.start()
        rpcs = [n.rpc_url for n in net.nodes]
        n_light = LIGHT_RATE * PACED_SECONDS
        ka, a, coins = _fund(rpcs, _finalized_everywhere, n_light + n_paced + N_TX)
        receivers = [new_wallet()[1] for _ in range(RECEIVERS)]
        light = _payments(coins, ka, a, receivers, 0, n_light)
        paced = _payments(coins, ka, a, receivers, n_light, n_paced)
        fast = _payments(coins, ka, a, receivers, n_light + n_paced, N_TX)
        ws = [n.ws_url for n in net.nodes]
        quiet: list[tuple[float, int, int]] = []
        busy: list[tuple[float, int, int]] = []
        out["light_blocks"] = _stats(*asyncio.run(_run(ws, light, receivers, LIGHT_RATE,
                                                       quiet)))
        out["paced_blocks"] = _stats(*asyncio.run(_run(ws, paced, receivers, PACED_RATE,
                                                       busy)))
        out["network_blocks"] = _stats(*asyncio.run(_run(ws, fast, receivers, None, busy)))
        for name, blocks in (("block_commit_light", quiet), ("block_commit", busy)):
            delays = sorted(_block_delays(blocks, 1.0))
            out[name] = {"blocks": len(delays), "p50_ms": statistics.median(delays) * 1e3,
                         "p99_ms": delays[max(0, int(len(delays) * 0.99) - 1)] * 1e3}
    finally:
        net.close()
    single = NodeProcess(tmp_path / "single").start()
    try:
        ka, a, coins = _fund([single.rpc_url], _finalized_everywhere, N_TX)
        receivers = [new_wallet()[1] for _ in range(RECEIVERS)]
        txs = _payments(coins, ka, a, receivers, 0, N_TX)
        out["single"] = _stats(*asyncio.run(_run([single.ws_url], txs, receivers, None)))
    finally:
        single.terminate()
    benchmark.extra_info.update({f"{k}_{m}": v for k, r in out.items() for m, v in r.items()})
    for name, r in out.items():
        print(f"\n{name}: {r.get('tx_per_s', 0):,.0f} tx/s, p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms")
    rows = [
        f"| four masternodes, as fast as taken ({N_TX:,}, {IN_FLIGHT} in flight) | "
        f"{out['network']['tx_per_s']:,.0f} | {out['network']['p50_ms']:.1f} | "
        f"{out['network']['p99_ms']:.1f} |",
        f"| four masternodes, paced at {PACED_RATE} tx/s ({n_paced:,}) | "
        f"{out['paced']['tx_per_s']:,.0f} | {out['paced']['p50_ms']:.1f} | "
        f"{out['paced']['p99_ms']:.1f} |",
        f"| four masternodes, paced at {LIGHT_RATE} tx/s ({LIGHT_RATE * PACED_SECONDS:,}) | "
        f"{out['light']['tx_per_s']:,.0f} | {out['light']['p50_ms']:.1f} | "
        f"{out['light']['p99_ms']:.1f} |",
        f"| four masternodes making a block a second, paced at {LIGHT_RATE} tx/s | "
        f"{out['light_blocks']['tx_per_s']:,.0f} | {out['light_blocks']['p50_ms']:.1f} | "
        f"{out['light_blocks']['p99_ms']:.1f} |",
        f"| four masternodes making a block a second, paced at {PACED_RATE} tx/s | "
        f"{out['paced_blocks']['tx_per_s']:,.0f} | {out['paced_blocks']['p50_ms']:.1f} | "
        f"{out['paced_blocks']['p99_ms']:.1f} |",
        f"| four masternodes making a block a second, as fast as taken | "
        f"{out['network_blocks']['tx_per_s']:,.0f} | "
        f"{out['network_blocks']['p50_ms']:.1f} | {out['network_blocks']['p99_ms']:.1f} |",
        f"| one masternode, as fast as taken ({N_TX:,}) | {out['single']['tx_per_s']:,.0f} | "
        f"{out['single']['p50_ms']:.1f} | {out['single']['p99_ms']:.1f} |"]
    bc, bq = out["block_commit"], out["block_commit_light"]
    bound = out["single"]["tx_per_s"] * (os.cpu_count() or 1) / 4
    report.set_section("network", "\n".join([
        "## Finality across four masternodes", "",
        f"{report.stamp()} Four masternode processes on this machine (quorum 3), each "
        "one's PEERS the others; pre-signed payments submitted over the wallet WebSocket, "
        "spread over the four nodes, each timed from its send at one node to the "
        "`TransactionFinalized` a wallet on another node hears. Every payment is "
        "checked (signatures) and stored on all four nodes and voted on by each: the "
        "four processes share this machine's cores.", "",
        "| run | tx/s | p50 ms | p99 ms |", "|---|---:|---:|---:|", *rows, "",
        f"What this machine allows four masternodes at best: each payment is checked, "
        f"stored and voted on by all four, so at most the one-node rate times the cores "
        f"over four: {out['single']['tx_per_s']:,.0f} x {os.cpu_count()} / 4 = "
        f"{bound:,.0f} tx/s (the four reach {out['network']['tx_per_s'] / bound:.0%} of "
        "it).", "",
        f"Blocks (BLOCK_INTERVAL=1), from a height's start (the block before's timestamp "
        f"+ 1 s) to its `NewBlock` at a wallet: during the {LIGHT_RATE} tx/s run "
        f"{bq['blocks']} heights, p50 {bq['p50_ms']:.0f} ms, p99 {bq['p99_ms']:.0f} ms; "
        f"during the {PACED_RATE} tx/s and unpaced runs (the nodes saturated) "
        f"{bc['blocks']} heights, p50 {bc['p50_ms']:.0f} ms, p99 {bc['p99_ms']:.0f} ms."]))
