"""SIGKILL the node at random moments during a burst, restart, check nothing is lost.

Used by tests/test_reliability.py (a short run in CI) and by bench/ (the long run:
10,000 submissions, 50 kills).  After every restart:

* every transaction the node acknowledged is there, in the state it reached
  (finalized: one node is its own quorum);
* the UTXO set is the one the stored history gives: a transaction is either
  wholly stored (its input SpentFinalized, its outputs Unspent) or not at all (its
  input Unspent);
* ``seq`` never goes back.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tests.helpers import NodeProcess, base_env, fund_coins, new_wallet
from timefast.transaction import build

SPLIT = 200  # outputs per funding split (tests.helpers.fund_coins)


@dataclass
class CrashReport:
    kills: int = 0
    kills_in_recovery: int = 0
    submissions: int = 0
    acknowledged: int = 0
    stored: int = 0
    max_seq: int = 0
    problems: list[str] = field(default_factory=list)


def _post(url: str, method: str, *params: object) -> dict:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
        return orjson.loads(r.read())


def run(data_dir: Path, submissions: int = 1000, kills: int = 5, seed: int = 1,
        progress: Callable[[int], None] | None = None) -> CrashReport:
    """Kill the node ``kills`` times during ``submissions``; ``progress(cycles)``
    is called after each kill cycle."""
    rnd = random.Random(seed)
    rep = CrashReport()
    node = NodeProcess(data_dir).start()
    ka, a = new_wallet()
    _, b = new_wallet()
    coins = fund_coins(node.rpc_url, ka, a, submissions, SPLIT)
    txs = [build([(*coins[i], ka)], [(b, 600)], timestamp=i) for i in range(submissions)]
    acked: set[str] = set()
    next_i = 0

    for cycle in range(kills):
        if node.proc is None or node.proc.poll() is not None:
            node = NodeProcess(data_dir).start()
        url = node.rpc_url
        seq = _post(url, "getinfo")["result"]["seq"]
        if seq < rep.max_seq:
            rep.problems.append(f"cycle {cycle}: seq went back from {rep.max_seq} to {seq}")
        rep.max_seq = max(rep.max_seq, seq)
        _check(url, txs, acked, rep, sample=rnd.sample(range(submissions),
                                                       min(200, submissions)))
        stop = threading.Event()
        due = threading.Event()
        start_i = next_i
        # The kill lands after a random number of this cycle's submissions (on
        # average the burst's share per kill, so the kills spread over all of it),
        # plus a few random milliseconds: mid-request, mid-commit or in between.
        kill_after = start_i + rnd.randint(1, max(1, 2 * submissions // kills - 1))

        def burst(start: int, stop: threading.Event = stop, url: str = url,
                  due: threading.Event = due, kill_after: int = kill_after) -> None:
            nonlocal next_i
            i = start
            while i < len(txs) and not stop.is_set():
                if i >= kill_after:
                    due.set()
                try:
                    reply = _post(url, "sendrawtransaction", txs[i].to_json())
                except (OSError, urllib.error.URLError):
                    return
                rep.submissions += 1
                if "result" in reply:
                    acked.add(reply["result"])
                i += 1
                next_i = i
                if i % 50 == 0:
                    try:
                        rep.max_seq = max(rep.max_seq, _post(url, "getinfo")["result"]["seq"])
                    except (OSError, urllib.error.URLError):
                        return

        sender = threading.Thread(target=burst, args=(start_i,), daemon=True)
        sender.start()
        due.wait(10)
        time.sleep(rnd.uniform(0, 0.01))
        node.kill()
        rep.kills += 1
        stop.set()
        sender.join(10)
        if rnd.random() < 0.3:
            # Kill it again while it rebuilds its state from the database.
            env = {**base_env(data_dir)}
            p = subprocess.Popen([sys.executable, "-m", "timefast"],
                                 env={**__import__("os").environ, **env},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.05, 0.3))
            p.kill()
            p.wait(10)
            rep.kills += 1
            rep.kills_in_recovery += 1
        if progress is not None:
            progress(cycle + 1)
        if next_i >= len(txs):
            break
    node = NodeProcess(data_dir).start()
    try:
        seq = _post(node.rpc_url, "getinfo")["result"]["seq"]
        if seq < rep.max_seq:
            rep.problems.append(f"final: seq went back from {rep.max_seq} to {seq}")
        _check(node.rpc_url, txs, acked, rep, sample=range(len(txs)))
        rep.acknowledged = len(acked)
        balance = _post(node.rpc_url, "getbalance", b)["result"]
        if balance != 600 * rep.stored:
            rep.problems.append(f"balance {balance} != 600 x {rep.stored} stored")
    finally:
        node.terminate()
    return rep


def _check(url: str, txs: list, acked: set[str], rep: CrashReport, sample) -> None:
    stored = 0
    for i in sample:
        tx = txs[i]
        status = _post(url, "gettransaction", tx.txid).get("result", {}) or {}
        inp = _post(url, "gettxout", tx.inputs[0].prev_txid, tx.inputs[0].vout)["result"]
        out = _post(url, "gettxout", tx.txid, 0)["result"]
        if status.get("status") == "finalized":
            stored += 1
            if inp["state"] != "SpentFinalized" or out is None or out["state"] != "Unspent":
                rep.problems.append(f"{tx.txid}: stored but input {inp} output {out}")
        else:
            if tx.txid in acked:
                rep.problems.append(f"{tx.txid}: acknowledged but {status or 'missing'}")
            if inp["state"] != "Unspent" or out is not None:
                rep.problems.append(f"{tx.txid}: not stored but input {inp} output {out}")
    rep.stored = stored
