"""Faults for a network of masternodes on loopback (issue 17): a proxy on every peer
link, and a checker of what the nodes then hold.

``FaultNetwork`` is a ``Network`` whose nodes dial each other only through a
``LinkProxy`` per ordered pair (i dials j through proxy (i, j)), with ``Addr``
discovery off, so a test can cut, delay, drop and heal any link, and partition the
nodes.  ``Scenario`` is the set-up every scenario below shares (the network, its
byzantine masternodes, funding, listening wallets, settling, gathering, checking).
``check`` reads every node after a scenario and returns the violations it
finds (an empty list: nothing split); ``History`` is what it reads, so a test can also
feed it a made-up history to show that each check catches what it is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .network import Network, free_ports

if TYPE_CHECKING:
    from .byzantine import Byzantine


class LinkProxy:
    """A TCP relay 127.0.0.1:``port`` → 127.0.0.1:``target`` that the test can cut
    (existing connections closed, new ones refused), delay (seconds per chunk each
    way) or make drop connections at random, and heal."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int, target: int) -> None:
        self.loop = loop
        self.port = port
        self.target = target
        self.cut = False
        self.delay = 0.0
        self.drop = 0.0  # chance per chunk that the connection is dropped
        self.rng = random.Random(port)
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await r.read(65536)
                    if not data or self.cut:
                        break
                    if self.drop and self.rng.random() < self.drop:
                        break
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                for x in (writer, up_w):
                    x.close()
                    self._conns.discard(x)

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def sever(self) -> None:
        """Cut: close what is open, refuse what comes."""
        self.cut = True
        for w in list(self._conns):
            w.close()
        self._conns.clear()

    def heal(self) -> None:
        self.cut, self.delay, self.drop = False, 0.0, 0.0


class FaultNetwork(Network):
    """A ``Network`` whose every peer link goes through a ``LinkProxy``."""

    def __init__(self, root: Path, n: int, **settings: Any) -> None:
        super().__init__(root, n, P2P_DISCOVERY=0, **settings)
        # The masternodes the test plays itself (tests/byzantine.py): never restarted.
        self.byzantine: set[int] = set()
        self.proxy_ports = {(i, j): p for (i, j), p in zip(
            [(i, j) for i in range(n) for j in range(n) if i != j],
            free_ports(n * (n - 1)), strict=True)}
        self.nodes = [self._node(i) for i in range(n)]
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.proxies: dict[tuple[int, int], LinkProxy] = {}
        for (i, j), port in self.proxy_ports.items():
            proxy = LinkProxy(self.loop, port, self.ports[j])
            asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)
            self.proxies[(i, j)] = proxy

    def _node(self, i: int, **extra: Any) -> Any:
        ports = getattr(self, "proxy_ports", None)
        if ports is not None and "PEERS" not in extra:
            extra["PEERS"] = ",".join(f"127.0.0.1:{ports[(i, j)]}"
                                      for j in range(len(self.ports)) if j != i)
        return super()._node(i, **extra)

    def _on_loop(self, fn: Any) -> None:
        self.loop.call_soon_threadsafe(fn)

    def cut(self, a: Iterable[int], b: Iterable[int]) -> None:
        """Cut every link between a node of ``a`` and one of ``b`` (both ways)."""
        for i in a:
            for j in b:
                if i != j:
                    for key in ((i, j), (j, i)):
                        self._on_loop(self.proxies[key].sever)

    def partition(self, *groups: Iterable[int]) -> None:
        """Only nodes of one group reach each other."""
        gs = [list(g) for g in groups]
        for x, a in enumerate(gs):
            for b in gs[x + 1:]:
                self.cut(a, b)

    def heal(self) -> None:
        """Every link whole again."""
        for p in self.proxies.values():
            self._on_loop(p.heal)

    def slow(self, i: int, j: int, delay: float = 0.0, drop: float = 0.0) -> None:
        """Delay (seconds per chunk) and drop (chance per chunk) on the i-j link."""
        for key in ((i, j), (j, i)):
            p = self.proxies[key]

            def set_(p: LinkProxy = p) -> None:
                p.delay, p.drop = delay, drop
            self._on_loop(set_)

    def close(self) -> None:
        super().close()
        self.loop.call_soon_threadsafe(self.loop.stop)


# -- the checker -----------------------------------------------------------------------


@dataclass
class NodeView:
    """What one node holds: its chain, its transactions' statuses, its unspent sum,
    and for each watched address the events its wallet heard (seq, type, txid)."""

    chain: list[str] = field(default_factory=list)
    status: dict[str, str | None] = field(default_factory=dict)
    unspent_total: int | None = None
    heard: dict[str, list[tuple[int, str, str | None]]] = field(default_factory=dict)
    finalized_unconfirmed: int = 0


@dataclass
class History:
    """Every node's view after a scenario, and what the scenario knows: the payments
    acknowledged by some node, the sets of spends of one coin (conflicts), the
    genesis supply."""

    nodes: dict[int, NodeView]
    acknowledged: list[str]
    conflicts: list[set[str]]
    supply: int | None = None


def check(h: History) -> list[str]:
    """Every violation of SPEC 7.6 that ``h`` shows (empty: nothing split)."""
    bad: list[str] = []
    # 1. No two conflicting transactions finalized (or confirmed) on any nodes.
    for group in h.conflicts:
        won = {t for v in h.nodes.values() for t in group
               if v.status.get(t) in ("finalized", "confirmed")}
        if len(won) > 1:
            bad.append(f"double spend: {sorted(won)} all finalized")
    # 2. The same block at every height on every node.
    chains = [v.chain for v in h.nodes.values()]
    for height in range(max((len(c) for c in chains), default=0)):
        seen = {c[height] for c in chains if len(c) > height}
        if len(seen) > 1:
            bad.append(f"fork at height {height}: {sorted(seen)}")
            break
    # 3. A status reported to a wallet never goes back: nothing heard finalized is
    # later heard rejected.
    for i, v in h.nodes.items():
        for address, events in v.heard.items():
            final = {t for _, kind, t in events if kind == "TransactionFinalized"}
            for _, kind, t in events:
                if kind == "TransactionRejected" and t in final:
                    bad.append(f"node {i}: {t} reported finalized, then rejected")
            seqs = [s for s, _, _ in events]
            if seqs != sorted(set(seqs)):
                bad.append(f"node {i}: events to {address} out of seq order or repeated")
    # 4. Every acknowledged payment ends the same way on every node: finalized (or
    # confirmed) or rejected everywhere, or pending everywhere when it is one of a set
    # of conflicting spends.
    in_conflict = set().union(*h.conflicts) if h.conflicts else set()
    rivals = _rivals(h.conflicts)
    for t in h.acknowledged:
        ends = {_end_at(v.status.get, t, rivals) for v in h.nodes.values()}
        if len(ends) > 1:
            bad.append(f"{t} ends differently: {sorted(map(str, ends))}")
        elif ends == {"pending"} and t not in in_conflict:
            bad.append(f"{t} without a conflicting spend is still pending")
        elif ends == {None}:
            bad.append(f"{t} was acknowledged and then lost")
    # 5. Once nothing is finalized but unconfirmed, the unspent outputs add up to the
    # genesis supply.
    if h.supply is not None:
        for i, v in h.nodes.items():
            if (v.unspent_total is not None and v.finalized_unconfirmed == 0
                    and v.unspent_total != h.supply):
                bad.append(f"node {i}: unspent total {v.unspent_total} != supply {h.supply}")
    return bad


def _end(status: str | None) -> str | None:
    return "finalized" if status == "confirmed" else status


def _rivals(conflicts: list[set[str]]) -> dict[str, set[str]]:
    """Each payment of a set of conflicting spends, to the others of its set."""
    return {t: group - {t} for group in conflicts for t in group}


def _end_at(status_of: Any, t: str, rivals: dict[str, set[str]]) -> str | None:
    """How ``t`` ended at a node (``status_of``: its status of a txid). A node that
    held a conflicting spend finalized when ``t`` came refused it unstored (SPEC 7.3
    Budgets: a wallet asking gets TX_CONFLICT): unknown there, it ended rejected."""
    end = _end(status_of(t))
    if end is None and any(_end(status_of(r)) == "finalized" for r in rivals.get(t, ())):
        return "rejected"
    return end


# -- driving a scenario ---------------------------------------------------------------


class Listener(threading.Thread):
    """A wallet on node ``i`` subscribed to ``addresses``: it resumes by ``seq`` after
    every disconnection (the node killed, restarted on another port) and keeps
    ``(seq, type, txid)`` of each event."""

    def __init__(self, net: Network, i: int, addresses: list[str]) -> None:
        super().__init__(daemon=True)
        self.net, self.i, self.addresses = net, i, addresses
        self.events: list[tuple[int, str, str | None]] = []
        self.stopped = threading.Event()
        self.start()

    def run(self) -> None:
        import orjson
        from websockets.sync.client import connect
        last: int | None = None
        while not self.stopped.is_set():
            node = self.net.nodes[self.i]
            if not node.ws_url or node.proc is None or node.proc.poll() is not None:
                self.stopped.wait(0.1)
                continue
            data: dict[str, Any] = {"addresses": self.addresses, "snapshot": False}
            if last is not None:
                data["since_seq"] = last
            try:
                with connect(node.ws_url, open_timeout=2, max_size=None) as ws:
                    ws.send(orjson.dumps({"type": "Subscribe", "data": data}).decode())
                    while not self.stopped.is_set():
                        try:
                            frame = ws.recv(timeout=0.5)
                        except TimeoutError:
                            continue
                        msg = orjson.loads(frame)
                        d = msg.get("data") or {}
                        seq = d.get("seq")
                        if msg["type"] == "Subscribed" or not isinstance(seq, int):
                            continue
                        txid = d.get("txid") or (d.get("tx") or {}).get("txid")
                        if msg["type"] == "UtxoStateChange":
                            txid = None
                        self.events.append((seq, msg["type"], txid))
                        last = seq
            except Exception:
                self.stopped.wait(0.2)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


class Payments:
    """Coins of one funded wallet, spent one payment at a time at chosen nodes; some
    spent twice at once at two nodes (a conflict set).  Keeps what was acknowledged."""

    def __init__(self, net: Network, rng: random.Random, coins: int) -> None:
        from timefast.transaction import build

        from .helpers import new_wallet
        self.net, self.rng, self.build = net, rng, build
        self.key, self.address = new_wallet()
        self.receivers = [new_wallet()[1] for _ in range(4)]
        funded = net.rpc(0, "faucet", self.address, coins * 1000)
        net.wait_status(funded, "finalized", timeout=30)
        split = build([(funded, 0, self.key)], [(self.address, 1000)] * coins, timestamp=1)
        net.rpc(0, "sendrawtransaction", split.to_json())
        net.wait_status(split.txid, "finalized", timeout=30)
        self.coins = [(split.txid, v) for v in range(coins)]
        self.acknowledged: list[str] = []
        self.conflicts: list[set[str]] = []
        self.sent = 0

    def _send(self, i: int, tx: Any) -> bool:
        from .helpers import rpc
        try:
            reply = rpc(self.net.nodes[i].rpc_url, "sendrawtransaction", tx.to_json())
        except Exception:
            return False
        if "error" in reply:
            return False
        self.acknowledged.append(tx.txid)
        return True

    def send_at_once(self, *sends: tuple[int, Any]) -> None:
        """Each ``(node, tx)`` sent from its own thread, started in the order given,
        all at once (spends of one coin racing at several nodes)."""
        threads = [threading.Thread(target=self._send, args=s) for s in sends]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def pay(self, nodes: list[int], conflict: float = 0.1) -> None:
        """One payment at a random node of ``nodes`` (with chance ``conflict``, two
        spends of one coin at two of them at once)."""
        if not self.coins or not nodes:
            return
        coin = self.coins.pop()
        self.sent += 1
        to = self.rng.choice(self.receivers)
        a = self.build([(*coin, self.key)], [(to, 990)], timestamp=self.sent * 2)
        if len(nodes) > 1 and self.rng.random() < conflict:
            b = self.build([(*coin, self.key)], [(to, 980)], timestamp=self.sent * 2 + 1)
            i, j = self.rng.sample(nodes, 2)
            self.conflicts.append({a.txid, b.txid})
            self.send_at_once((i, a), (j, b))
        else:
            self._send(self.rng.choice(nodes), a)

    def watched(self) -> list[str]:
        return [self.address, *self.receivers]

    def txids(self) -> list[str]:
        return list(dict.fromkeys([*self.acknowledged, *(t for g in self.conflicts
                                                           for t in g)]))


def unspent_total(net: Network, i: int) -> int:
    """The sum of node ``i``'s unspent outputs (read beside the running node)."""
    import sqlite3
    db = sqlite3.connect(f"file:{net.nodes[i].data_dir / 'timefast.db'}?mode=ro", uri=True)
    try:
        (total,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM utxos WHERE state IN "
                              "('Unspent', 'Locked', 'SpentPending')").fetchone()
        return int(total)
    finally:
        db.close()


def gather(net: Network, pay: Payments, listeners: dict[int, Listener],
           supply: int | None) -> History:
    """Every running node's view, for ``check``."""
    views: dict[int, NodeView] = {}
    for i in net.up():
        v = NodeView()
        height = net.rpc(i, "getblockcount")
        v.chain = [net.rpc(i, "getblock", h)["hash"] for h in range(height + 1)]
        v.status = {t: net.status(i, t) for t in pay.txids()}
        v.finalized_unconfirmed = net.rpc(i, "getinfo")["unconfirmed"]
        v.unspent_total = unspent_total(net, i)
        if i in listeners:
            v.heard = {"watched": list(listeners[i].events)}
        views[i] = v
    return History(views, list(pay.acknowledged), list(pay.conflicts), supply)


def settle(net: Network, pay: Payments, timeout: float = 60) -> None:
    """Wait until every node agrees on every payment and nothing finalized is left
    unconfirmed (blocks come by BLOCK_INTERVAL), or the timeout."""
    conflicted = set().union(*pay.conflicts) if pay.conflicts else set()
    rivals = _rivals(list(pay.conflicts))

    def done() -> bool:
        nodes = net.up()
        for t in pay.txids():
            ends = {_end_at(lambda x, i=i: net.status(i, x), t, rivals) for i in nodes}
            if len(ends) > 1 or (ends == {"finalized"} and any(
                    net.status(i, t) != "confirmed" for i in nodes)):
                return False
            if ends == {"pending"} and t not in conflicted:
                return False
        return all(net.rpc(i, "getinfo")["unconfirmed"] == 0 for i in nodes)
    with contextlib.suppress(TimeoutError):  # the checker then says what is wrong
        net.wait_for(done, timeout, "the network settled")


# -- scenarios (each returns its figures; ``violations`` must be empty) -----------------


class Scenario:
    """What every scenario shares, around its body: ``n`` masternodes on a
    ``FaultNetwork`` (a block a second, ``settings`` on top; ``nodes`` maps a node to
    settings of its own), started and linked.  The last ``byzantine`` of them are the
    test's: never started as nodes, each a ``Byzantine`` peer (``byz``, in key order)
    linked to the ``honest`` ones.  ``peer()`` links a further full node of the
    test's; every peer is closed when the scenario ends.

    ``run(coins, body)`` is the rest: a funded wallet split into ``coins`` coins
    (``Payments``), a listening wallet on every node, the body, then every link
    healed, every killed honest node restarted, the network settled, every node's
    view gathered and checked; it returns the figures."""

    def __init__(self, root: Path, seed: int, n: int = 4, *, byzantine: int = 0,
                 nodes: dict[int, dict[str, Any]] | None = None, **settings: Any) -> None:
        self.root, self.seed, self.n = root, seed, n
        self.honest = list(range(n - byzantine))
        self.byzantine = list(range(n - byzantine, n))
        self.byz: list[Byzantine] = []
        self._nodes = nodes or {}
        self._settings = settings
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Scenario:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def _start(self) -> None:
        net = self.net = self._exit.enter_context(
            FaultNetwork(self.root, self.n, BLOCK_INTERVAL=1, **self._settings))
        for i, extra in self._nodes.items():
            net.nodes[i] = net._node(i, **extra)
        if not self.byzantine:
            net.start()
            return
        for i in self.honest:
            net.nodes[i].start()
        net.wait_linked(self.honest)
        net.byzantine = set(self.byzantine)
        self.byz = [self.peer(net.keys[k]).connect(self.honest) for k in self.byzantine]

    def peer(self, key: Any = None) -> Byzantine:
        """A peer of the test's under ``key`` (a byzantine masternode's), or a full node
        of its own key (relays, never votes), not linked yet; closed at the end."""
        from timefast import crypto

        from .byzantine import Byzantine
        b = Byzantine(self.net, key if key is not None else crypto.new_key())
        self._exit.callback(b.close)
        return b

    def run(self, coins: int, body: Any, supply: int | None = None) -> dict[str, Any]:
        """Fund, listen, ``body(net, rng, pay)`` (it returns its count of faults), heal,
        restart, settle, gather and check: the scenario's figures."""
        from timefast.rules import GENESIS_SUPPLY
        net, seed = self.net, self.seed
        rng = random.Random(seed)
        pay = Payments(net, rng, coins)
        listeners = {i: Listener(net, i, pay.watched()) for i in range(len(net))}
        faults = body(net, rng, pay)
        net.heal()
        t0 = time.monotonic()
        for i in range(len(net)):
            if i not in net.up() and i not in net.byzantine:
                net.restart(i)
        settle(net, pay)
        recover = time.monotonic() - t0
        time.sleep(0.5)  # the wallets' last events
        for x in listeners.values():
            x.stop()
        h = gather(net, pay, listeners, GENESIS_SUPPLY if supply is None else supply)
        return {"seed": seed, "payments": len(pay.acknowledged),
                "conflicts": len(pay.conflicts), "faults": faults, "violations": check(h),
                "recover_s": round(recover, 1),
                "height": min(len(v.chain) for v in h.nodes.values()) - 1}

    def __exit__(self, *exc: Any) -> bool:
        return self._exit.__exit__(*exc)


def kill_cycles(root: Path, seed: int, cycles: int = 5) -> dict[str, Any]:
    """kill -9 of a random one of four, again and again, during payments and blocks.

    A cycle: kill, payments at the others, restart after a random while, and the
    next kill a random while after that start, whether or not the node has linked
    and caught up again (so a kill may also land in a restart's recovery)."""
    with Scenario(root, seed) as sc:

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            for _ in range(cycles):
                victim = rng.randrange(4)
                net.kill(victim)
                for _ in range(rng.randint(1, 3)):
                    pay.pay(net.up())
                time.sleep(rng.uniform(0.0, 0.4))
                net.restart(victim)
                time.sleep(rng.uniform(0.0, 0.4))
                pay.pay(net.up())
            return cycles
        return sc.run(cycles * 4 + 4, body)


def partition_halves(root: Path, seed: int) -> dict[str, Any]:
    """2|2: no payment finalizes and no block commits while it lasts; healed, both do."""
    with Scenario(root, seed) as sc:

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            net.partition([0, 1], [2, 3])
            time.sleep(2)
            heights = [net.rpc(i, "getblockcount") for i in range(4)]
            before = len(pay.acknowledged)
            for _ in range(6):
                pay.pay([rng.choice([0, 1]), rng.choice([2, 3])], conflict=0.3)
            time.sleep(rng.uniform(2, 4))
            stuck = [t for t in pay.acknowledged[before:]
                     if any(net.status(i, t) in ("finalized", "confirmed") for i in range(4))]
            grown = [i for i in range(4) if net.rpc(i, "getblockcount") > heights[i] + 1]
            if stuck or grown:
                raise AssertionError(f"progress in a 2|2 partition: {stuck} {grown}")
            return 1
        return sc.run(16, body)


def isolated_proposer(root: Path, seed: int) -> dict[str, Any]:
    """1|3 with the next height's proposer alone: the three go on (a later round)."""
    from timefast.rules import proposer
    with Scenario(root, seed) as sc:

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            h = net.rpc(0, "getblockcount") + 1
            alone = net.pubs.index(proposer(net.pubs, h, 0))
            rest = [i for i in range(4) if i != alone]
            net.partition([alone], rest)
            for _ in range(8):
                pay.pay(rest)
                time.sleep(rng.uniform(0.05, 0.3))
            net.wait_for(lambda: min(net.rpc(i, "getblockcount") for i in rest) >= h + 1,
                         30, "the three commit past the isolated proposer's height")
            return 1
        return sc.run(12, body)


def paused_proposer(root: Path, seed: int) -> dict[str, Any]:
    """SIGSTOP the next height's proposer for a while, then SIGCONT."""
    import signal

    from timefast.rules import proposer
    with Scenario(root, seed) as sc:

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            h = net.rpc(0, "getblockcount") + 1
            paused = net.pubs.index(proposer(net.pubs, h, 0))
            proc = net.nodes[paused].proc
            assert proc is not None
            proc.send_signal(signal.SIGSTOP)
            rest = [i for i in range(4) if i != paused]
            try:
                for _ in range(6):
                    pay.pay(rest)
                time.sleep(rng.uniform(4, 6))
            finally:
                proc.send_signal(signal.SIGCONT)
            return 1
        return sc.run(10, body)


def votes_both_ways(root: Path, seed: int) -> dict[str, Any]:
    """A lying masternode approves a payment to one node and rejects it to the others
    under one batch number: every honest node still finalizes and confirms it."""
    with Scenario(root, seed, byzantine=1) as sc:
        liar = sc.byz[0]  # linked straight to the nodes, not through the proxies

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            from timefast.transaction import build
            coin = pay.coins.pop()
            tx = build([(*coin, pay.key)], [(pay.receivers[0], 990)], timestamp=99_999)
            first = rng.randrange(3)
            liar.send(first, liar.votes(7, [(tx.txid, True)]))
            for i in range(3):
                if i != first:
                    liar.send(i, liar.votes(7, [(tx.txid, False)]))
            pay._send(rng.randrange(3), tx)
            net.wait_status(tx.txid, "finalized", [0, 1, 2], timeout=20)
            net.wait_for(lambda: all(
                next(m for m in net.rpc(i, "masternodelist")
                     if m["public_key"] == net.pubs[3])["equivocations"] >= 1
                for i in range(3)), 20, "the evidence on every honest node")
            return 1
        return sc.run(6, body)


def network_of(root: Path, seed: int, n: int) -> dict[str, Any]:
    """n masternodes (q differs from 2f+1 for 3, 5, 6, 8, 9): payments and blocks
    with f of them killed for a while."""
    from timefast.rules import faults
    with Scenario(root, seed, n) as sc:

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            f = faults(n)
            down = rng.sample(range(n), f)
            for i in down:
                net.kill(i)
            for _ in range(6):
                pay.pay(net.up())
            time.sleep(2)
            return f
        return sc.run(10, body)


def conflicting_approvals(root: Path, seed: int) -> dict[str, Any]:
    """A lying masternode approves two spends of one coin, each approval sent to
    different nodes, while the owner sends the two spends to different nodes: at
    most one is finalized anywhere."""
    with Scenario(root, seed, byzantine=1) as sc:
        liar = sc.byz[0]

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            from timefast.transaction import build
            for n in range(3):
                coin = pay.coins.pop()
                a = build([(*coin, pay.key)], [(pay.receivers[0], 990)], timestamp=10 * n)
                b = build([(*coin, pay.key)], [(pay.receivers[1], 980)], timestamp=10 * n + 1)
                pay.conflicts.append({a.txid, b.txid})
                order = rng.sample(range(3), 3)
                liar.send(order[0], liar.votes(100 + 2 * n, [(a.txid, True)]))
                for i in order[1:]:
                    liar.send(i, liar.votes(101 + 2 * n, [(b.txid, True)]))
                pay.send_at_once((order[0], a), (order[1], b))
            time.sleep(2)
            return 3
        return sc.run(6, body)


def flapping_link(root: Path, seed: int) -> dict[str, Any]:
    """One link cut and healed again and again, another slow and lossy, during
    payments and blocks."""
    with Scenario(root, seed) as sc:

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            i, j, k, m = rng.sample(range(4), 4)
            net.slow(k, m, delay=rng.uniform(0.01, 0.05), drop=0.02)
            flaps = 0
            for _ in range(6):
                net.cut([i], [j])
                pay.pay(list(range(4)))
                time.sleep(rng.uniform(0.2, 0.8))
                net.heal()
                net.slow(k, m, delay=rng.uniform(0.01, 0.05), drop=0.02)
                pay.pay(list(range(4)))
                time.sleep(rng.uniform(0.2, 0.8))
                flaps += 1
            return flaps
        return sc.run(16, body)


def child_before_parent(root: Path, seed: int) -> dict[str, Any]:
    """A payment spending the output of one not yet finalized reaches a node (through
    a peer) before its parent's votes: it waits there as an orphan and finalizes on
    every node after its parent."""
    with Scenario(root, seed) as sc:
        relay = sc.peer()  # a full node: relays, never votes

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            from timefast import wire
            from timefast.transaction import build

            from .helpers import new_wallet
            n = 0
            for _ in range(3):
                coin = pay.coins.pop()
                kb, b = new_wallet()
                parent = build([(*coin, pay.key)], [(b, 990)], timestamp=500 + n)
                child = build([(parent.txid, 0, kb)], [(pay.receivers[2], 980)],
                              timestamp=501 + n)
                i, j = rng.sample(range(4), 2)
                if j not in relay.links:
                    relay.connect([j])
                relay.send(j, wire.Tx(child))  # first the child...
                time.sleep(rng.uniform(0, 0.2))
                pay._send(i, parent)  # ...then its parent, at another node
                pay.acknowledged.append(child.txid)
                n += 2
            return n
        return sc.run(8, body)


# -- the byzantine masternode in consensus: two blocks for one round, votes for both,
# replays, garbage; a block re-proposed in a later round (issue 17) -------------------


def metrics(net: Network, i: int) -> dict[str, float]:
    """Node ``i``'s ``/metrics`` as {name: value}."""
    import urllib.request
    url = net.nodes[i].ws_url.replace("ws://", "http://") + "/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def lying_proposers(root: Path, seed: int, n: int = 4, liars: int = 1) -> dict[str, Any]:
    """``liars`` byzantine masternodes of ``n`` (one of four, two of seven), each a
    ``Liar``: as a proposer two blocks for one round to different honest nodes, votes
    for both and for nil, approvals of both spends of a coin, replays of old
    messages, malformed and badly signed ones; meanwhile the honest nodes take
    payments, some of them two spends of one coin at two nodes.  Blocks keep
    committing, and each honest node keeps the evidence."""
    from .byzantine import Liar
    with Scenario(root, seed, n, byzantine=liars) as sc:
        net, honest, byzs = sc.net, sc.honest, sc.byz
        lying: list[Liar] = []

        def height() -> int:
            return min(net.rpc(i, "getblockcount") for i in honest)

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            lying.extend(Liar(b, random.Random(rng.random())) for b in byzs)
            start = height()
            for x in lying:
                x.start()
            try:
                for _ in range(8):
                    pay.pay(honest, conflict=0.4)
                    time.sleep(rng.uniform(0.1, 0.4))
                net.wait_for(lambda: all(x.counts["double_proposals"] >= 1 for x in lying),
                             40, "every liar proposed two blocks for one of its rounds")
                h = height()  # and the heights after its lies commit
                net.wait_for(lambda: height() >= h + 2, 30, "blocks after the lies")
            finally:
                for x in lying:
                    x.stop()
            if height() < start + 3:
                raise AssertionError(f"no progress: height {start} to {height()}")
            # The lies (approving every spend it hears of is not one in itself).
            return sum(v for x in lying for k, v in x.counts.items() if k != "approvals")
        figures = sc.run(10, body)
        # What every honest node recorded: evidence kept (masternodelist: double
        # proposals and votes, approvals of two spends), double proposals and
        # votes seen since start-up (/metrics), links closed for garbage.
        seen = [metrics(net, i) for i in honest]
        listed = [{m["public_key"]: m["equivocations"]
                   for m in net.rpc(i, "masternodelist")} for i in honest]
        producers = [net.rpc(0, "getblock", h)["producer"]
                     for h in range(1, figures["height"] + 1)]
        counts = {k: sum(x.counts[k] for x in lying) for k in lying[0].counts}
        kept = [sum(x[b.public_key] for b in byzs) for x in listed]
        consensus = [int(m["timefast_consensus_equivocations_total"]) for m in seen]
        if min(kept) < 1 or min(consensus) < 1:
            raise AssertionError(f"an honest node kept no evidence: {kept} {consensus}")
        figures.update(
            lies=counts, evidence=min(kept), consensus_evidence=min(consensus),
            misbehaviour=int(sum(m["timefast_peer_misbehaviour_total"] for m in seen)),
            liar_blocks=sum(p in {b.public_key for b in byzs} for p in producers))
        return figures


def reproposed_block(root: Path, seed: int) -> dict[str, Any]:
    """A block re-proposed in a later round by another proposer (the paper's
    validValue): the honest nodes' links are cut, the byzantine masternode is their
    only path and forwards everything but the precommits of round 0 of a chosen
    height (each node hears one other's, and its own nil), so a polka for the round-0
    proposer's block B forms on every node without a commit.  The round-1 proposer
    re-proposes B unchanged (valid_round 0) and B commits: its ``producer`` is the
    round-0 proposer, its ``round`` 0, its commit's precommits of a later round."""
    from timefast import wire

    from .byzantine import Router
    with Scenario(root, seed, byzantine=1) as sc:
        honest, byz = sc.honest, sc.byz[0]
        found: dict[str, Any] = {}
        router: list[Router] = []

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            for _ in range(3):
                pay.pay(honest)
                time.sleep(rng.uniform(0.05, 0.3))
            target = [-1]
            # Node j hears only the next node's precommit of (target, 0).
            hears = {j: net.pubs[honest[(n + 1) % 3]] for n, j in enumerate(honest)}

            def withhold(i: int, j: int, m: wire.Message) -> bool:
                return (isinstance(m, wire.Precommit) and m.round == 0
                        and m.height == target[0] and m.voter != hears[j])
            router.append(Router(byz, withhold))
            net.partition(*([i] for i in honest))
            # A loaded machine may let round 0's proposal miss its timeout on some
            # node (no polka): then the next height of two honest proposers is tried.
            for attempt in range(1, 4):
                now = max(net.rpc(i, "getblockcount") for i in honest)
                h = target[0] = next(
                    h for h in range(now + 2, now + 10)
                    if byz.public_key not in (byz.proposer(h, 0), byz.proposer(h, 1)))
                net.wait_for(lambda h=h: byz.proposals(h, 0), 30,
                             f"the proposal of height {h}")
                byz.send_all(byz.precommit(h, 0, None))
                net.wait_for(lambda h=h: all(
                    net.rpc(i, "getblockcount") >= h for i in honest), 30,
                    f"height {h} committed")
                first = byz.proposals(h, 0)
                again = [p for p in byz.proposals(h, 1) if p.valid_round == 0]
                blocks = [net.rpc(i, "getblock", h) for i in honest]
                b = blocks[0]
                found.update(height=h, attempts=attempt,
                             round0=[p.block.hash for p in first],
                             round1=[(p.block.hash, p.valid_round)
                                     for p in byz.proposals(h, 1)],
                             committed=b["hash"], producer=b["producer"], round=b["round"],
                             commit_rounds=sorted({c["round"] for c in b["commit"]}))
                if (len(first) == 1 and again
                        and again[0].block.hash == first[0].block.hash
                        and all(x["hash"] == first[0].block.hash for x in blocks)
                        and b["producer"] == byz.proposer(h, 0) and b["round"] == 0
                        and min(found["commit_rounds"]) >= 1):
                    return attempt
            raise AssertionError(f"no block was re-proposed in a later round: {found}")
        try:
            figures = sc.run(4, body)
        finally:  # before the scenario closes the byzantine masternode's links
            for r in router:
                r.stop()
        figures["reproposed"] = found
        return figures


# -- a lying catch-up peer, a co-signer's double spend, clock skew ---------------------


def _lies(real: dict[int, Any], quorum: int, network_id: bytes, pubs: list[str]
          ) -> dict[str, tuple[bool, Any]]:
    """What a lying catch-up peer answers to ``GetBlocks`` from height h: by name,
    (whether the node must refuse it as misbehaviour, a function of h giving the
    ``Blocks`` to send or None).  ``real`` holds the real blocks by height."""
    from dataclasses import replace

    from timefast import crypto, wire
    from timefast.rules import block_hash

    def commit_by(keys: list[Any], names: list[str], b: Any) -> tuple[Any, ...]:
        return tuple(wire.CommitSig(name, b.round, wire.sign_precommit(
            k, network_id, b.height, b.round, b.hash).signature)
            for k, name in zip(keys, names, strict=True))

    def outsiders(h: int) -> Any:
        keys = [crypto.new_key() for _ in range(quorum)]
        names = [crypto.public_key_hex(k) for k in keys]
        return wire.Blocks((replace(real[h], commit=commit_by(keys, names, real[h])),))

    def impostors(h: int) -> Any:  # members' names, signatures by another key
        keys = [crypto.new_key() for _ in range(quorum)]
        return wire.Blocks((replace(real[h], commit=commit_by(keys, pubs[:quorum],
                                                              real[h])),))

    def too_few(h: int) -> Any:
        b = real[h]
        return wire.Blocks((replace(b, commit=b.commit[:quorum - 1]),))

    def other_hash(h: int) -> Any:  # the real commit on a block changed (its timestamp)
        b = real[h]
        ts = b.timestamp + 1
        return wire.Blocks((replace(b, timestamp=ts, hash=block_hash(
            b.height, b.prev_hash, ts, b.txids, b.producer, b.round)),))

    def other_height(h: int) -> Any:  # the next block's commit on this one
        return wire.Blocks((replace(real[h], commit=real[h + 1].commit),))

    def true_then_forged(h: int) -> Any:  # the first is kept, the second refused
        return wire.Blocks((real[h], too_few(h + 1).blocks[0]))

    return {
        "none": (False, lambda h: None),
        "a gap": (False, lambda h: wire.Blocks((real[h + 1],))),
        "fewer": (False, lambda h: wire.Blocks((real[h],))),
        "signers outside the voting set": (True, outsiders),
        "signatures not by the named voters": (True, impostors),
        "too few precommits": (True, too_few),
        "a commit for another hash": (True, other_hash),
        "a commit for another height": (True, other_height),
        "a true block, then a forged one": (True, true_then_forged),
    }


def catchup_liar(root: Path, seed: int) -> dict[str, Any]:
    """A node down for some blocks restarts with only a lying peer (a full node) to
    catch up from: it withholds blocks (none, a gap, fewer than asked), sends blocks
    with forged commits, and claims a height far ahead and a wrong tip.  The node
    refuses every forged block (counted, the link closed), and once its links to the
    honest masternodes are back it catches up from them while the liar goes on
    lying: nothing forks."""
    from timefast import wire
    from timefast.rules import quorum
    figures: dict[str, Any] = {}
    with Scenario(root, seed) as sc:
        net = sc.net
        fetcher = sc.peer()  # a full node that fetches the true blocks the lies use

        def height(i: int) -> int:
            return int(net.rpc(i, "getblockcount"))

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            v = rng.randrange(4)
            rest = [i for i in range(4) if i != v]
            net.kill(v)
            start = max(height(i) for i in rest)
            for _ in range(4):
                pay.pay(rest)
                time.sleep(rng.uniform(0.05, 0.3))
            # The lies below use the blocks of the next three heights (two of them
            # true blocks the node takes), and of the one after.
            lies_needed = 4
            net.wait_for(lambda: min(height(i) for i in rest) >= start + lies_needed, 30,
                         "the three commit while one is down")
            net.cut([v], rest)
            net.restart(v)
            behind = height(v)
            src = rng.choice(rest)
            fetcher.connect([src])
            real = fetcher.fetch_blocks(src, behind + 1, lies_needed)
            lies = _lies(real, quorum(len(net)), fetcher.network_id, net.pubs)
            far, wrong = behind + rng.randint(1_000, 1_000_000), rng.randbytes(32).hex()
            for name in rng.sample(sorted(lies), len(lies)):
                refuse, make = lies[name]
                h = height(v) + 1
                answer = make(h)
                # A fresh key for each lie, as a liar would (keys are free): a full
                # node's key that sent a forged block is refused for 10 minutes.
                liar = sc.peer()

                def respond(i: int, msg: wire.Message, answer: Any = answer,
                            liar: Any = liar) -> None:
                    if i == v and isinstance(msg, wire.GetBlocks) and answer is not None:
                        liar.send(v, answer)
                liar.answer = respond
                liar.connect([v], height=far, tip=wrong)
                liar.send(v, wire.Status(far, wrong))
                liar.wait_message(v, wire.GetBlocks)
                if refuse:
                    if not liar.closed[v].wait(10):
                        raise AssertionError(f"{name}: the link stayed open")
                else:
                    liar.links[v][0].close()
                if name in ("fewer", "a true block, then a forged one"):
                    net.wait_for(lambda h=h: height(v) >= h, 10, "the true block applied")
            if height(v) != behind + 2:
                raise AssertionError(f"node {v} at {height(v)}, not {behind + 2}: "
                                     "it took a block it should not have")
            m = metrics(net, v)
            forged = sum(refuse for refuse, _ in lies.values())
            figures.update(refused=int(m["timefast_blocks_refused_total"]),
                           misbehaviour=int(m["timefast_peer_misbehaviour_total"]))
            if figures["refused"] != forged or figures["misbehaviour"] != forged:
                raise AssertionError(f"{forged} forged blocks, {figures} counted")
            # The liar stays, withholding and claiming a height far ahead; the honest
            # links come back: the node catches up from them.
            liar = sc.peer()
            liar.connect([v], height=far, tip=wrong)
            net.heal()
            target = max(height(i) for i in rest)
            t0 = time.monotonic()

            def caught() -> bool:
                if not liar.closed[v].is_set():
                    liar.send(v, wire.Status(far, wrong))
                return height(v) >= target
            net.wait_for(caught, 40, f"node {v} caught up past the liar")
            figures["catchup_s"] = round(time.monotonic() - t0, 1)
            return len(lies)
        return sc.run(6, body) | figures


def co_signer_double_spend(root: Path, seed: int) -> dict[str, Any]:
    """Two wallets sign one payment with an input each while one of them sends a
    spend of his input alone to another node at once: at most one of the two
    finalizes anywhere, and every node ends them the same way."""
    from timefast.transaction import build

    from .helpers import new_wallet
    made: list[tuple[str, str]] = []
    with Scenario(root, seed) as sc:

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            pairs = 3
            kb, b = new_wallet()  # the co-owner
            funded = []
            for n in range(pairs):
                t = build([(*pay.coins.pop(), pay.key)], [(b, 990)], timestamp=700 + n)
                pay._send(rng.randrange(4), t)
                funded.append(t)
            for t in funded:
                net.wait_status(t.txid, "finalized", timeout=30)
            for n, t in enumerate(funded):
                shared = build([(*pay.coins.pop(), pay.key), (t.txid, 0, kb)],
                               [(pay.receivers[0], 1900)], timestamp=800 + n)
                alone = build([(t.txid, 0, kb)], [(pay.receivers[1], 980)],
                              timestamp=900 + n)
                pay.conflicts.append({shared.txid, alone.txid})
                made.append((shared.txid, alone.txid))
                i, j = rng.sample(range(4), 2)
                pay.send_at_once(*rng.sample([(i, shared), (j, alone)], 2))
                time.sleep(rng.uniform(0, 0.3))
            return pairs
        out = sc.run(8, body)
        net = sc.net
        # Which of each pair won, on node 0 (the checker saw every node agree).
        won = {"shared": 0, "alone": 0, "neither": 0}
        for shared, alone in made:
            if _end(net.status(0, shared)) == "finalized":
                won["shared"] += 1
            elif _end(net.status(0, alone)) == "finalized":
                won["alone"] += 1
            else:
                won["neither"] += 1
        return out | {"won": won}


def clock_skew(root: Path, seed: int, skew: int) -> dict[str, Any]:
    """One of four masternodes with its clock ``skew`` seconds off (libfaketime
    preloaded in its process) during payments and blocks, until a height it is the
    first proposer of has committed, and two more: nothing forks.  A block's
    timestamp may be at most 30 s ahead of a validator's clock (SPEC 7.5), so at +31
    the others refuse its proposal and another proposer's round commits; behind, it
    prevotes nil or starts its heights late, and the three others (q) commit without
    it.  (A proposal made before the others start its height is judged when they do:
    a proposer ahead by up to 30 s + the time between, BLOCK_INTERVAL at most, passes.)
    Figures: per height from the one before that turn, the round that committed
    it, the seconds between commits as an honest node saw them, and the blocks the
    skewed node produced."""
    import itertools

    import libfaketime

    from timefast.rules import proposer
    _, env = libfaketime.get_reload_information()
    preload = str(Path(env["LD_LIBRARY_PATH"]) / env["LD_PRELOAD"])
    s = random.Random(seed).randrange(4)
    figures: dict[str, Any] = {"skew_s": skew}
    # Its wall clock only: the monotonic one times its timeouts.
    faked = {"LD_PRELOAD": preload, "DONT_FAKE_MONOTONIC": 1, "FAKETIME": f"{skew:+d}s"}
    with Scenario(root, seed, nodes={s: faked}) as sc:
        net = sc.net
        honest = [i for i in range(4) if i != s]
        seen: dict[int, float] = {}  # height -> when an honest node first had it

        def height() -> int:
            h = int(net.rpc(honest[0], "getblockcount"))
            seen.setdefault(h, time.monotonic())
            return h

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            first = height()
            turn = next(h for h in itertools.count(first + 2)
                        if proposer(net.pubs, h, 0) == net.pubs[s])
            figures["turn"] = turn
            for _ in range(6):
                pay.pay(list(range(4)))
                height()
                time.sleep(rng.uniform(0.05, 0.3))
            net.wait_for(lambda: height() >= turn + 2, 40 + max(skew, 0),
                         f"heights up to {turn + 2} with node {s}'s clock {skew:+d} s off")
            return 1
        out = sc.run(8, body)
        turn = figures["turn"]
        blocks = [net.rpc(honest[0], "getblock", h) for h in range(turn - 1, turn + 3)]
        figures["rounds"] = {b["height"]: b["round"] for b in blocks}
        figures["skewed_produced"] = [b["height"] for b in blocks
                                      if b["producer"] == net.pubs[s]]
        figures["skewed_in_commits"] = sum(any(c["voter"] == net.pubs[s] for c in b["commit"])
                                           for b in blocks)
        figures["timestamp_gaps"] = [b["timestamp"] - a["timestamp"]
                                     for a, b in itertools.pairwise(blocks)]
        figures["commit_gaps_s"] = [round(seen[h + 1] - seen[h], 1)
                                    for h in range(turn - 1, turn + 2)
                                    if h in seen and h + 1 in seen]
        return out | figures


# -- kill -9 at a persistence point while a vote or a round is split -----------------
#
# The node under test runs with TIMEFAST_CRASH_AT (timefast/crashpoints.py) and SIGKILLs
# itself at the chosen point; the others go on, the links heal, it restarts on its
# data directory.  Beyond the checker: it died at that point; no node holds evidence
# against anyone; none of its batch numbers carries two contents anywhere; it approved
# at most one spend of each coin; at ``precommit``, it never precommitted anything else
# for that height and round, and the height committed.


def _died_at(net: FaultNetwork, i: int, point: str, timeout: float = 30) -> None:
    """Wait for node ``i`` to die by its own SIGKILL at ``point`` (AssertionError if
    it does not, or dies otherwise)."""
    import signal
    import subprocess
    proc = net.nodes[i].proc
    assert proc is not None
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"node {i} never reached crash point {point}") from None
    if rc != -signal.SIGKILL:
        raise AssertionError(f"node {i} exited with {rc}, not SIGKILL, before {point}")
    line = f"crash point {point} reached"
    net.wait_for(lambda: any(line in x for x in net.nodes[i].log), 5,
                 f"node {i} logged {line!r}")


def _db(net: Network, i: int) -> Any:
    import sqlite3
    return sqlite3.connect(f"file:{net.nodes[i].data_dir / 'timefast.db'}?mode=ro", uri=True)


def _no_equivocation(net: FaultNetwork, victim: int, pay: Payments) -> list[str]:
    """Evidence anywhere, a batch number of ``victim`` with two contents, or two
    spends of one coin it approved: each a violation."""
    import orjson
    bad: list[str] = []
    bodies: dict[int, set[bytes]] = {}
    approved: set[str] = set()
    for i in net.up():
        entry = next(m for m in net.rpc(i, "masternodelist")
                     if m["public_key"] == net.pubs[victim])
        if entry["equivocations"]:
            bad.append(f"node {i}: {entry['equivocations']} equivocations by node {victim}")
        db = _db(net, i)
        try:
            (evidence,) = db.execute("SELECT COUNT(*) FROM evidence").fetchone()
            if evidence:
                bad.append(f"node {i}: {evidence} evidence rows")
            for n, body in db.execute("SELECT batch, body FROM batches WHERE voter=?",
                                      (net.pubs[victim],)):
                msg = orjson.loads(body)
                bodies.setdefault(n, set()).add(orjson.dumps(msg["votes"]))
                approved.update(t for t, yes in msg["votes"] if yes)
        finally:
            db.close()
    bad += [f"batch {n} of node {victim} with {len(c)} contents"
            for n, c in sorted(bodies.items()) if len(c) > 1]
    bad += [f"node {victim} approved both of {sorted(g)}"
            for g in pay.conflicts if len(g & approved) > 1]
    return bad


def crash_at_vote(root: Path, seed: int, point: str) -> dict[str, Any]:
    """Two spends of one coin at once, one at the victim and one at a node cut off
    from the other three; the victim dies at ``point`` (approval, batch or send) of
    the batch that approves its spend, which then has two of the three approvals it
    needs (its approval is on its disk at ``send`` only, asserted); healed and
    restarted, its decision stands (its spend finalizes, the other is rejected) and
    it never approves the other."""
    with Scenario(root, seed) as sc:
        net = sc.net
        chosen: dict[str, Any] = {}

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            import orjson

            from timefast.transaction import build
            victim, alone = rng.sample(range(4), 2)
            chosen.update(victim=victim, pay=pay)
            side = [i for i in range(4) if i != alone]
            before = rng.randint(0, 1)  # batches the victim signs and sends first
            net.restart(victim, TIMEFAST_CRASH_AT=f"{point}:{before + 1}")
            net.wait_linked(timeout=30)
            for _ in range(before):
                pay.pay([victim], conflict=0)
                net.wait_status(pay.acknowledged[-1], "finalized", timeout=20)
            net.partition(side, [alone])
            coin = pay.coins.pop()
            a = build([(*coin, pay.key)], [(pay.receivers[0], 990)], timestamp=70_000)
            b = build([(*coin, pay.key)], [(pay.receivers[1], 980)], timestamp=70_001)
            pay.conflicts.append({a.txid, b.txid})
            chosen.update(spends=(a.txid, b.txid))
            pay.send_at_once((victim, a), (alone, b))
            _died_at(net, victim, point)
            db = _db(net, victim)
            try:
                stored = any([a.txid, True] in orjson.loads(body)["votes"] for (body,) in
                             db.execute("SELECT body FROM batches WHERE voter=?",
                                        (net.pubs[victim],)))
            finally:
                db.close()
            if stored != (point == "send"):  # durable only past the batch's commit
                raise AssertionError(f"died at {point} with its approval stored: {stored}")
            for _ in range(2):
                pay.pay([i for i in side if i != victim])
            time.sleep(rng.uniform(0.1, 0.5))
            if rng.random() < 0.5:  # healed before the restart, or together (run)
                net.heal()
                time.sleep(rng.uniform(0.3, 1.5))
            return 1
        figures = sc.run(6, body)
        figures["violations"] += _no_equivocation(net, chosen["victim"], chosen["pay"])
        # How the two spends ended (the victim's first): the checker saw every node agree.
        figures["spends"] = "/".join(str(net.status(0, t)) for t in chosen["spends"])
        return figures


def crash_at_precommit(root: Path, seed: int) -> dict[str, Any]:
    """One node cut off, so every block needs the victim's precommit; the victim
    locks a block and dies with its lock persisted and its precommit unsent (the
    other two are locked on it, a precommit short).  Restarted and healed, it
    precommits that block again or nothing for that round, never another (what it
    sends, first-hand and relayed, is watched), and the height commits."""
    from timefast import wire
    # Short proposal timeouts: a victim restarted with a lock from before may wait
    # for its own turn to propose that block again (one round in four).
    with Scenario(root, seed, TIMEOUT_PROPOSE=1) as sc:
        net = sc.net
        watcher = sc.peer()  # a full node: hears every relay
        chosen: dict[str, Any] = {}

        def body(net: FaultNetwork, rng: random.Random, pay: Payments) -> int:
            import orjson
            victim, alone = rng.sample(range(4), 2)
            rest = [i for i in range(4) if i not in (victim, alone)]
            watcher.connect(rest)  # straight to them, not through the proxies
            net.partition([alone], [i for i in range(4) if i != alone])
            net.restart(victim, TIMEFAST_CRASH_AT="precommit")
            for _ in range(2):
                pay.pay(rest)
            _died_at(net, victim, "precommit", 60)
            db = _db(net, victim)
            try:
                (raw,) = db.execute("SELECT value FROM meta WHERE key='consensus'").fetchone()
            finally:
                db.close()
            record = orjson.loads(raw)
            pc = record["precommit"]
            if pc is None or pc["block_hash"] != record["locked_value"]:
                raise AssertionError(f"died at precommit without its lock stored: {record}")
            chosen.update(victim=victim, pay=pay, record=record, precommit=(
                pc["height"], pc["round"], pc["block_hash"]))
            time.sleep(rng.uniform(0.1, 1.0))
            if rng.random() < 0.5:  # healed before the restart, or after it (run)
                net.heal()
                time.sleep(rng.uniform(0.3, 1.5))
            net.restart(victim)
            # It resends its own messages of the height to a new peer: the watcher
            # hears them first-hand, beside what the others relay.
            watcher.connect([victim])
            return 1
        figures = sc.run(4, body)
        height, round_, block = chosen["precommit"]
        mine = {(m.height, m.round, m.block_hash)
                for msgs in watcher.received.values() for m in msgs
                if isinstance(m, wire.Precommit) and m.voter == net.pubs[chosen["victim"]]}
        figures["violations"] += [
            f"node {chosen['victim']} precommitted {m[2]} at height {height} round "
            f"{round_} after {block}"
            for m in mine if m[:2] == (height, round_) and m[2] != block]
        if figures["height"] < height:
            figures["violations"].append(f"height {height} never committed")
        figures["violations"] += [
            f"node {i}: consensus equivocation seen" for i in net.up()
            if metrics(net, i)["timefast_consensus_equivocations_total"]]
        figures["violations"] += _no_equivocation(net, chosen["victim"], chosen["pay"])
        figures["resent"] = (height, round_, block) in mine
        return figures
