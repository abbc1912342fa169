"""The peer-port attack suite's harness (issue 29), shared by
``tests/test_p2p_attacks.py`` (a few seconds an attack) and
``bench/test_p2p_attacks_bench.py`` (40 s, beside a control run).

``Siege(root)`` is four masternode processes on loopback whose voting set holds a
fifth key that no node runs: the attacker's (n = 5, q = 4, so every honest vote
counts).  ``run(attack, settings, duration)`` starts ``tests.attacker`` in its own
process and, while it runs, pays from node 0 every second and times each payment
until ``finalized`` on all four (wallets subscribed at every node say when); it
samples every node's RSS (``/proc/<pid>/status``), CPU seconds (``/proc/<pid>/stat``),
data directory and peers (``getpeerinfo``, and the ``peer up`` lines of its log).
After the attack it waits up to ``after`` seconds for RSS to come back within 50 MB
of where it was, and checks that the nodes are alive and hold one chain.  The
figures are a plain dict (``Figures``); ``verdict`` holds them to the done-when
thresholds of the issue.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import connect

from timefast import crypto
from timefast.transaction import build

from .helpers import new_wallet
from .network import Network

ROOT = Path(__file__).resolve().parent.parent
HONEST = [0, 1, 2, 3]
ATTACKER = 4
PEER_UP = re.compile(r"peer up: (\w+) at [\d.]+:(\d+)")
# Done when (issue 29), per attack: honest payments' median and max to finality on
# all four, each node's RSS and data-directory growth during the attack, how far
# above its level before the attack RSS may be 30 s after it.
MEDIAN_S, MAX_S = 0.2, 2.0
RSS_GROWTH_MB, DIR_GROWTH_MB, RSS_BACK_MB = 150.0, 20.0, 50.0
GIVE_UP_S = 30.0  # a payment not finalized everywhere by then counts as never

Figures = dict[str, Any]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_mb(path: Path) -> float:
    """Bytes of every file under ``path``, in MB."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a WAL file checkpointed away
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total / 1e6


class Listener:
    """A wallet subscribed to ``address`` at one node: when each transaction was
    first announced there finalized (or confirmed)."""

    def __init__(self, ws_url: str, address: str) -> None:
        self.ws = connect(ws_url, max_size=None).__enter__()
        self.ws.send(orjson.dumps({"type": "Subscribe", "data": {
            "addresses": [address], "snapshot": False}}).decode())
        self.finalized: dict[str, float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for frame in self.ws:
                m = orjson.loads(frame)
                if m.get("type") in ("TransactionFinalized", "TransactionConfirmed"):
                    self.finalized.setdefault(m["data"]["txid"], time.monotonic())
        except Exception:
            pass

    def close(self) -> None:
        self.ws.close()


class Sampler(threading.Thread):
    """Every ``interval`` s: each node's RSS (the peak kept) and its peers."""

    def __init__(self, net: Network, interval: float) -> None:
        super().__init__(daemon=True)
        self.net, self.interval = net, interval
        self.peak = {i: 0.0 for i in HONEST}
        self.peers: set[tuple[int, str, str]] = set()  # (node, key, address)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            for i in HONEST:
                self.peak[i] = max(self.peak[i], rss_mb(self.net.nodes[i].proc.pid))
                try:
                    for p in self.net.rpc(i, "getpeerinfo"):
                        self.peers.add((i, p["public_key"], p["address"]))
                except Exception:
                    pass

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


class Siege:
    """Four masternodes, the attacker's key the fifth of the set, a funded payer with
    ``coins`` coins and a wallet at every node listening to it (see the module
    docstring).  ``settings`` go to every node."""

    def __init__(self, root: Path, coins: int = 60, **settings: Any) -> None:
        # generate(k) gives up after FINALITY_TIMEOUT x k, and a round of the
        # attacker's (it never proposes honestly) costs TIMEOUT_PROPOSE.
        self.net = Network(root, 5, **{"FINALITY_TIMEOUT": 10, **settings})
        self.coins = coins
        self.key: Any = None
        self.address = ""
        self.unspent: list[tuple[str, int]] = []
        self.listeners: list[Listener] = []

    def __enter__(self) -> Siege:
        try:
            for i in HONEST:
                self.net.nodes[i].start()
            self.net.wait_linked(HONEST)
            self.key, self.address = new_wallet()
            self.unspent = self.split(self.key, self.address, self.coins)
            self.listeners = [Listener(self.net.nodes[i].ws_url, self.address)
                              for i in HONEST]
        except BaseException:
            self.net.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for x in self.listeners:
            x.close()
        self.net.close()

    # -- set-up the attacks need --------------------------------------------------------

    def split(self, key: Any, address: str, n: int, per: int = 1000) -> list[tuple[str, int]]:
        """``n`` coins of ``per`` for ``address``, finalized on every node."""
        coin = self.net.rpc(0, "faucet", address, n * per)
        self.net.wait_status(coin, "finalized", HONEST)
        tx = build([(coin, 0, key)], [(address, per)] * n, timestamp=1)
        self.net.rpc(0, "sendrawtransaction", tx.to_json())
        self.net.wait_status(tx.txid, "finalized", HONEST)
        return [(tx.txid, v) for v in range(n)]

    def fill_pending(self, total_bytes: int) -> int:
        """Finalized, unconfirmed wide payments (1,000 outputs, about 75 KB each) of
        about ``total_bytes`` in all, so that ``GetPending`` has much to answer;
        returns how many."""
        key, address = new_wallet()
        n = max(1, total_bytes // 75_000)
        txids = []
        for _ in range(n):
            # The faucet pays again once its change from the last payment finalized.
            coin = self.net.rpc(0, "faucet", address, 1000 * 1000)
            self.net.wait_status(coin, "finalized", HONEST)
            txids.append(self.net.rpc(0, "sendrawtransaction", build(
                [(coin, 0, key)], [(address, 1000)] * 1000, timestamp=1).to_json()))
        for t in txids:
            self.net.wait_status(t, "finalized", HONEST, timeout=60)
        return n

    def generate(self, blocks: int = 1) -> None:
        """Commit ``blocks`` blocks (every finalized transaction goes into the first)."""
        self.net.rpc(0, "generate", blocks)

    def confirmed_spend(self, inputs: int = 1) -> dict[str, Any]:
        """Coins of a fresh wallet spent by a confirmed transaction: what the
        ``respend`` attack spends again (its settings)."""
        key, address = new_wallet()
        if inputs > 1:
            coins = self.split(key, address, inputs)
        else:
            coins = [(self.net.rpc(0, "faucet", address, 1000), 0)]
            self.net.wait_status(coins[0][0], "finalized", HONEST)
        spend = build([(t, v, key) for t, v in coins], [(new_wallet()[1], 1000 * inputs)],
                      timestamp=1)
        self.net.rpc(0, "sendrawtransaction", spend.to_json())
        self.net.wait_status(spend.txid, "finalized", HONEST)
        self.generate(1)
        self.net.wait_status(spend.txid, "confirmed", HONEST, timeout=60)
        return {"coin_key": crypto.format_private_key(key), "coins": coins,
                "amount": 1000 * inputs, "spend": spend.txid}

    # -- one measured run ----------------------------------------------------------------

    def _pay(self, start: dict[str, float]) -> None:
        coin = self.unspent.pop()
        tx = build([(coin[0], coin[1], self.key)], [(new_wallet()[1], 1000)], timestamp=1)
        t0 = time.monotonic()
        start[tx.txid] = t0
        with contextlib.suppress(Exception):  # refused: counted as never finalized
            self.net.rpc(0, "sendrawtransaction", tx.to_json())

    def run(self, attack: str, settings: dict[str, Any] | None = None,
            duration: float = 40.0, after: float = 30.0, sample_s: float = 0.5) -> Figures:
        """One attack (a name of ``tests.attacker.ATTACKS``) for ``duration`` seconds,
        payments every second meanwhile, RSS and peers sampled every ``sample_s``;
        its figures."""
        net = self.net
        pids = {i: net.nodes[i].proc.pid for i in HONEST}
        logs = {i: len(net.nodes[i].log) for i in HONEST}
        before = {i: (rss_mb(p), cpu_s(p), dir_mb(net.nodes[i].data_dir)) for i, p in pids.items()}
        common = {"ports": [net.ports[i] for i in HONEST], "pubs": net.pubs,
                  "rpc": [net.nodes[i].rpc_url for i in HONEST],
                  "key": crypto.format_private_key(net.keys[ATTACKER]), "duration": duration}
        sampler = Sampler(net, sample_s)
        sampler.start()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.attacker", attack,
             orjson.dumps({**common, **(settings or {})}).decode()],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        sent: dict[str, float] = {}
        # Payments from a second in until the attack's end (each a second apart).
        while proc.poll() is None and time.monotonic() < started + duration + 60:
            time.sleep(max(0.0, started + len(sent) + 1 - time.monotonic()))
            if time.monotonic() < started + duration and self.unspent:
                self._pay(sent)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        ended = time.monotonic()
        lines = out.strip().splitlines()
        report = orjson.loads(lines[-1]) if lines else {"failed": err[-2000:]}
        if "failed" in report:
            report["stderr"] = err[-2000:]
        during = {i: (rss_mb(p), cpu_s(p), dir_mb(net.nodes[i].data_dir))
                  for i, p in pids.items()}
        sampler.stop()
        latencies = self._latencies(sent)
        back = self._rss_back(pids, {i: b[0] for i, b in before.items()}, after)
        fig: Figures = {
            "attack": attack, "settings": settings or {}, "duration_s": round(ended - started, 1),
            "attacker": report,
            "payments": len(sent), "finalized": sum(x is not None for x in latencies),
            "median_s": _r(statistics.median(x for x in latencies if x is not None)
                           if any(x is not None for x in latencies) else None),
            "max_s": _r(max((x for x in latencies if x is not None), default=None)),
            "nodes": {}, "alive": [i for i in HONEST if net.nodes[i].proc.poll() is None]}
        for i in HONEST:
            fig["nodes"][i] = {
                "rss_before_mb": round(before[i][0], 1),
                "rss_growth_mb": round(max(sampler.peak[i], during[i][0]) - before[i][0], 1),
                "rss_end_mb": round(during[i][0], 1),
                "rss_after_mb": round(back[i][0], 1), "rss_back_s": back[i][1],
                "cpu_s": round(during[i][1] - before[i][1], 2),
                "dir_growth_mb": round(during[i][2] - before[i][2], 2),
                "log_lines": len(net.nodes[i].log) - logs[i]}
        fig["impersonated"] = self._impersonated(sampler, logs, report.get("ports", []))
        fig["one_chain"] = self.one_chain()
        return fig

    def _latencies(self, sent: dict[str, float]) -> list[float | None]:
        """Seconds from each payment's submission until every node announced it
        finalized (None: not within ``GIVE_UP_S``)."""
        def done() -> bool:
            return all(all(t in x.finalized for x in self.listeners) for t in sent)
        deadline = max(sent.values(), default=0.0) + GIVE_UP_S
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)
        out: list[float | None] = []
        for txid, t0 in sent.items():
            at = [x.finalized.get(txid) for x in self.listeners]
            out.append(None if None in at else max(a for a in at if a is not None) - t0)
        return out

    def _rss_back(self, pids: dict[int, int], before: dict[int, float], after: float
                  ) -> dict[int, tuple[float, float | None]]:
        """Each node's RSS once it is within ``RSS_BACK_MB`` of ``before`` (and how
        many seconds after the attack), or after ``after`` seconds (None)."""
        t0 = time.monotonic()
        out: dict[int, tuple[float, float | None]] = {}
        while True:
            for i, p in pids.items():
                if i not in out:
                    rss = rss_mb(p)
                    if rss - before[i] <= RSS_BACK_MB:
                        out[i] = (rss, round(time.monotonic() - t0, 1))
            if len(out) == len(pids) or time.monotonic() - t0 >= after:
                break
            time.sleep(0.5)
        for i, p in pids.items():
            out.setdefault(i, (rss_mb(p), None))
        return out

    def _impersonated(self, sampler: Sampler, logs: dict[int, int],
                      ports: list[list[int]]) -> list[str]:
        """Links a node accepted on one of the attacker's relayed connections
        (``ports``: each one's local port and the node's port it reached). Only an
        inbound link can be one (the attacker listens nowhere); it is the attacker's
        when its peer's port and this node's port are such a pair."""
        mine = {(str(local), str(remote)) for local, remote in ports}
        found = {f"node {i} listed {k[:16]} at {a}" for i, k, a in sampler.peers
                 if (a.rpartition(":")[2], str(self.net.ports[i])) in mine}
        for i in HONEST:
            for line in self.net.nodes[i].log[logs[i]:]:
                m = PEER_UP.search(line)
                if m and "inbound" in line and (m.group(2), str(self.net.ports[i])) in mine:
                    found.add(f"node {i} up with {m.group(1)} at port {m.group(2)}")
        return sorted(found)

    def one_chain(self) -> bool:
        """Whether every node holds the same block at every height they all have."""
        heights = [self.net.rpc(i, "getinfo")["height"] for i in HONEST]
        for h in range(min(heights) + 1):
            if len({self.net.rpc(i, "getblock", h)["hash"] for i in HONEST}) != 1:
                return False
        return True

    def status(self, i: int, txid: str) -> str | None:
        """A transaction's status at node ``i`` (None: not stored there)."""
        return self.net.status(i, txid)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def verdict(fig: Figures) -> dict[str, bool]:
    """The issue's done-when criteria for one attack run: each True when met."""
    nodes = fig["nodes"].values()
    return {
        f"payments median <= {MEDIAN_S} s": fig["median_s"] is not None
        and fig["median_s"] <= MEDIAN_S,
        f"every payment finalized, none over {MAX_S} s": fig["finalized"] == fig["payments"]
        and fig["max_s"] is not None and fig["max_s"] <= MAX_S,
        f"RSS growth <= {RSS_GROWTH_MB:g} MB": all(n["rss_growth_mb"] <= RSS_GROWTH_MB
                                                  for n in nodes),
        f"data dir growth <= {DIR_GROWTH_MB:g} MB": all(n["dir_growth_mb"] <= DIR_GROWTH_MB
                                                       for n in nodes),
        f"RSS back within {RSS_BACK_MB:g} MB in 30 s": all(n["rss_back_s"] is not None
                                                          for n in nodes),
        "no impersonated link": not fig["impersonated"],
        "nodes alive, one chain": len(fig["alive"]) == len(HONEST) and fig["one_chain"]}


def summary(name: str, fig: Figures, control: Figures | None = None) -> str:
    """One attack's line: its figures, the control's beside them, PASS or FAIL."""
    v = verdict(fig)

    def part(f: Figures) -> str:
        ns = f["nodes"].values()
        return (f"pay median {f['median_s']} s max {f['max_s']} s "
                f"({f['finalized']}/{f['payments']}), RSS +{max(n['rss_growth_mb'] for n in ns)}"
                f" MB, dir +{max(n['dir_growth_mb'] for n in ns)} MB, CPU "
                f"{max(n['cpu_s'] for n in ns)} s/node, attacker {f['attacker'].get('cpu_s')} s")
    text = f"{name}: {'PASS' if all(v.values()) else 'FAIL'} | attack: {part(fig)}"
    if control is not None:
        text += f" | control: {part(control)}"
    failed = [k for k, ok in v.items() if not ok]
    return text + (f" | failed: {'; '.join(failed)}" if failed else "")
