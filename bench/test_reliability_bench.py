"""Reliability figures (issue "Reliability"): the long runs behind docs/RELIABILITY.md.

Sizes can be raised with environment variables: CRASH_SUBMISSIONS, CRASH_KILLS,
FUZZ_MESSAGES, SOAK_SECONDS.
"""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request

import orjson
import pytest

from bench.progress import Progress
from bench.test_fanout_bench import Server, loadclient, run_client, start_timefast
from tests import crash_harness
from timefast import _core, crypto
from timefast.ledger import Ledger
from timefast.rpc import RpcDispatcher
from timefast.session import Limits, WalletSession
from timefast.storage import Store

__all__ = ["loadclient"]

RESULTS: dict[str, object] = {}


def _record(name: str, value: object) -> None:
    RESULTS[name] = value
    print(f"\n{name}: {value}", flush=True)
    path = os.path.join(os.path.dirname(__file__), "results", "reliability.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = {}
    if os.path.exists(path):
        with open(path, "rb") as f:
            old = orjson.loads(f.read())
    old[name] = value
    with open(path, "wb") as f:
        f.write(orjson.dumps(old, option=orjson.OPT_INDENT_2))


def test_crash_long(tmp_path):
    n = int(os.environ.get("CRASH_SUBMISSIONS", "10000"))
    k = int(os.environ.get("CRASH_KILLS", "50"))
    t = time.time()
    with Progress("crash", k, "kill cycles") as bar:
        rep = crash_harness.run(tmp_path, submissions=n, kills=k, seed=11, progress=bar.set)
    _record("crash", {"submissions_planned": n, "kills": rep.kills,
                      "kills_in_recovery": rep.kills_in_recovery,
                      "acknowledged": rep.acknowledged, "stored": rep.stored,
                      "max_seq": rep.max_seq, "problems": len(rep.problems),
                      "seconds": round(time.time() - t, 1)})
    assert rep.problems == []


SEEDS = [
    b'{"type":"Subscribe","data":{"addresses":["TIME0abc"],"since_seq":3}}',
    b'{"type":"SubmitTransaction","id":1,"data":{"tx":{"txid":"' + b"a" * 64 + b'",'
    b'"version":1,"inputs":[],"outputs":[{"amount":1,"address":"x"}],"timestamp":1}}}',
    b'{"type":"GetUtxos","data":{"addresses":["a","b"]}}',
    b'{"type":"Ping"}', b'{"type":"Hello","id":"h"}',
    b'{"type":"GetTransaction","data":{"txid":"00"}}',
]
RPC_SEEDS = [
    b'{"jsonrpc":"2.0","id":1,"method":"getblock","params":[0]}',
    b'{"jsonrpc":"2.0","id":1,"method":"gettxout","params":["ab",0]}',
    b'{"jsonrpc":"2.0","id":1,"method":"submitvote","params":[{"txid":"x"}]}',
    b'[{"jsonrpc":"2.0","id":1,"method":"getinfo"},{"method":"faucet","params":[1,2]}]',
]


def _mutate(rnd: random.Random, seed: bytes) -> bytes:
    b = bytearray(seed)
    for _ in range(rnd.randint(1, 6)):
        op = rnd.random()
        i = rnd.randrange(len(b) + 1)
        if op < 0.4 and b:
            b[min(i, len(b) - 1)] = rnd.randrange(256)
        elif op < 0.7:
            b[i:i] = bytes(rnd.choice([b'"', b"{", b"[", b"}", b"1e999", b"null", b"\\u0000",
                                       b"-", b"99999999999999999999", b'"type"']))
        elif b:
            del b[i:i + rnd.randint(1, 8)]
    return bytes(b)


def test_churn_thousand(tmp_path):
    from tests.test_reliability import churn
    t = time.time()
    with Progress("churn", 120, "payments") as bar:
        checked = churn(tmp_path, clients=int(os.environ.get("CHURN_CLIENTS", "1000")),
                        progress=bar.set)
    _record("churn", {"clients": int(os.environ.get("CHURN_CLIENTS", "1000")),
                      "events_checked": checked, "gaps_or_repeats": 0,
                      "seconds": round(time.time() - t, 1)})


def test_fuzz_million(tmp_path):
    n = int(os.environ.get("FUZZ_MESSAGES", "1000000"))
    led = Ledger(Store(tmp_path / "f.db"), "regtest", crypto.new_key())

    class Sink:
        size = 0

        def write(self, d):
            Sink.size += len(d)

        def get_write_buffer_size(self):
            return 0

        def is_closing(self):
            return False

    fan = _core.Fanout(1 << 30)
    slot = fan.open(Sink())
    session = WalletSession(led, fan, slot, Limits(max_subscriptions=100),
                            clock=lambda: time.monotonic() * 1e6)
    rnd = random.Random(3)
    t = time.time()
    bar = Progress("fuzz", 2 * n, "messages")
    for i in range(n):
        session.handle_text(_mutate(rnd, SEEDS[i % len(SEEDS)]))
        if i % 4096 == 0:
            fan.flush()
            fan.index.drop(slot)  # keep the subscription count bounded
            bar.set(i)
    wallet_s = time.time() - t
    rpc = RpcDispatcher(led)
    t = time.time()
    internal = 0
    for i in range(n):
        reply = rpc.handle_bytes(_mutate(rnd, RPC_SEEDS[i % len(RPC_SEEDS)]))
        if reply is not None and b"internal error" in reply:
            internal += 1
        if i % 4096 == 0:
            bar.set(n + i)
    bar.set(2 * n)
    bar.close()
    _record("fuzz", {"wallet_messages": n, "wallet_seconds": round(wallet_s, 1),
                     "rpc_requests": n, "rpc_seconds": round(time.time() - t, 1),
                     "internal_errors": internal, "reply_bytes": Sink.size})
    assert internal == 0


def _metric(server: Server, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.ws_port}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_slow_consumers(loadclient, tmp_path):
    server = start_timefast(tmp_path)
    try:
        base = run_client(loadclient, server, "broadcast", 2000, 1, 300, 16)
        slow = run_client(loadclient, server, "broadcast", 2000, 1, 10000, 16, "--slow", "100",
                          timeout=240)
        rss_mb = server.rss_kb() / 1024
        closes = _metric(server, "timefast_slow_client_closes_total")
    finally:
        server.stop()
    _record("slow_consumers", {
        "readers": 1900, "slow": 100, "events": 10000,
        "p99_ms_without_slow": base["p99_ms"], "p99_ms_with_slow": slow["p99_ms"],
        "msgs_per_s_with_slow": slow["msgs_per_s"], "complete": slow["complete"],
        "slow_closed_with_lagged": closes, "server_rss_mb": round(rss_mb, 1)})
    assert slow["complete"] and closes == 100
    assert rss_mb < 512


SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))


# The soak runs as long as asked, past the suite's 300-s test timeout.
@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_soak(loadclient, tmp_path):
    seconds = SOAK_SECONDS
    rate = 100
    # Blocks every 10 s, as a node runs: finalized transactions get confirmed.
    server = start_timefast(tmp_path, BLOCK_INTERVAL="10")
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(5):
            samples.append(server.rss_kb())

    try:
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        r = run_client(loadclient, server, "routed", 2000, 40000, int(seconds * rate), 8,
                       "--per-conn", "20", "--rate", str(rate), timeout=seconds + 120)
        stop.set()
        t.join()
    finally:
        server.stop()
    warm = samples[len(samples) // 4:] or samples
    growth = (max(warm) - min(warm)) / min(warm) if warm else 0.0
    _record("soak", {"seconds": seconds, "wallets": 2000, "addresses_per_wallet": 20,
                     "tx_per_s": rate, "delivered": r["delivered"], "complete": r["complete"],
                     "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
                     "rss_mb_min": round(min(warm) / 1024, 1),
                     "rss_mb_max": round(max(warm) / 1024, 1),
                     "rss_growth_after_warmup": round(growth, 3)})
    assert r["complete"]
