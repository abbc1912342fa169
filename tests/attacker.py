"""The attacking process of the peer-port attack suite (issue 29): run as

    python -m tests.attacker <attack> '<json settings>'

it attacks the four masternodes of a ``tests.siege.Siege`` for ``duration`` seconds
and prints one JSON line, its report (what it sent, what came back, ``cpu_s``: the
CPU seconds it spent).  It runs in its own process so that it shares the machine's
cores with the nodes, as an attacker on the box would, and so that its CPU can be
measured and burnt again in a control run (``burn``).

Settings every attack gets (``Siege.run`` writes them): ``ports`` and ``rpc`` of the
four running nodes, ``pubs`` (the voting set: the four nodes' keys and the
attacker's), ``key`` (the attacker's member key, ``crypto.format_private_key``),
``duration``.  As the member it speaks through ``tests.byzantine.Byzantine``; as a
full node, through a ``Byzantine`` of a fresh key (keys are free); as an outsider
with no key, through raw WebSocket connections (``impersonate``, ``json_bomb``).

The attacks (``ATTACKS``), each at the rates of the issue unless settings say less:

- ``impersonate``: for every pair of nodes, dial both and forward each one's frames
  to the other, unchanged and unread (text or binary), for ``relay_s``; then swallow
  what they send for ``hold_s`` and start again.  Reports the local ``ports``: a node
  listing a peer key at one of them accepted an impersonated link.
- ``high_height``: connections of full-node keys whose ``Hello`` and ``Status`` say a
  far height, closed at once, as fast as ``threads`` threads go.
- ``unread``: ``links`` full-node links that send ``GetPending`` at ``rate`` a second
  and never read; one the node closes is opened again under a fresh key.
- ``proposals``: the member's signed proposals for its own rounds of the next height
  with ~``block_mib`` MiB junk blocks, a fresh block each time, taking its first
  ``rounds`` rounds in turn, at ``rate`` a second; a full node's link to node 0
  counts the big frames node 0 relays (``relayed``).
- ``addr_flood``: ``records`` signed ``Addr`` records with fresh timestamps, half for
  fresh keys and half for the member's own key, each at a port of the attacker's
  (``listening`` of them listen, count connections and close them).
- ``json_bomb``: raw connections that send, before ``Hello``, one ~8 MiB frame of
  ``[[],[],...]`` each, ``mib_per_s`` in all.
- ``amplify``: ``links`` full-node links that send ``GetPending`` and ``GetBlocks``
  at ``rate`` a second each and read what comes back slowly, unparsed
  (``read_delay``), counting the answers (frames over 64 KiB).
- ``respend``: distinct signed spends of ``coins`` (outputs a confirmed transaction
  spent) to ``nodes``, at ``rate`` a second, over full-node links; ``sample`` lists
  some of their txids.
- ``votes``: the member's vote batches: ``mode`` ``wide`` (256 votes for unknown
  txids, fresh numbers), ``same_number`` (different batches all numbered 1) or
  ``single`` (one vote, fresh numbers), at ``rate`` batches a second.
- ``consensus``: the member's distinct signed prevotes and precommits for the height
  node 0 decides (a fresh block hash each, over ``rounds`` rounds) at ``rate`` a second; a
  full node's link to node 0 counts what node 0 relays per (height, round, step).
- ``burn``: the control: ``cpu_s`` CPU seconds in a busy loop spread over
  ``duration``, nothing sent.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import secrets
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from nacl.signing import SigningKey
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from timefast import crypto, wire
from timefast.transaction import Transaction, TxInput, TxOutput, build

from .byzantine import Byzantine
from .helpers import new_wallet, rpc
from .network import free_ports

BIG_FRAME = 64 << 10  # an answer to GetPending/GetBlocks, not a relayed vote or Status
FAR_HEIGHT = 10 ** 12


class Remote:
    """The network as the attacker's process sees it: what ``Byzantine`` reads of a
    ``tests.network.Network`` (ports, keys, RPC), from the settings."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.ports: list[int] = settings["ports"]
        self.pubs: list[str] = settings["pubs"]
        self.urls: list[str] = settings["rpc"]

    def up(self) -> list[int]:
        """The nodes to attack: every running one."""
        return list(range(len(self.ports)))

    def rpc(self, i: int, method: str, *params: Any) -> Any:
        """Node ``i``'s RPC (the attacker reads only the genesis hash through it)."""
        reply = rpc(self.urls[i], method, *params)
        if "error" in reply:
            raise RuntimeError(f"node {i} {method}: {reply['error']}")
        return reply["result"]


class Attack:
    """One attack's settings, deadline and counters."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.net = Remote(settings)
        self.nodes = self.net.up()
        self.member = crypto.parse_private_key(settings["key"])
        self.deadline = time.monotonic() + float(settings["duration"])
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self._network_id: bytes | None = None

    def get(self, name: str, default: Any) -> Any:
        return self.settings.get(name, default)

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def paced(self, rate: float) -> Iterator[int]:
        """0, 1, 2... at ``rate`` a second until the deadline (no catching up after a
        stall: a blocked send costs its slots)."""
        step = 1.0 / rate
        due = time.monotonic()
        for n in itertools.count():
            now = time.monotonic()
            if now >= self.deadline:
                return
            if due > now:
                time.sleep(min(due - now, self.deadline - now))
            due = max(due + step, time.monotonic() - 1.0)
            yield n

    def url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.net.ports[i]}/p2p"

    def byzantine(self, key: SigningKey | None, nodes: list[int], cls: type[Byzantine] =
                  Byzantine, height: int = 0) -> Byzantine:
        """A linked ``Byzantine`` (``cls``) under ``key`` (None: a fresh full-node key)."""
        b = cls(self.net, key if key is not None else crypto.new_key())  # type: ignore[arg-type]
        self._network_id = b.network_id
        return b.connect(nodes, height=height)

    @property
    def network_id(self) -> bytes:
        if self._network_id is None:
            self._network_id = wire.network_id(self.net.rpc(0, "getblock", 0)["hash"],
                                               self.net.pubs)
        return self._network_id

    def threads(self, target: Callable[..., None], args: list[tuple[Any, ...]]) -> None:
        """Run ``target(*a)`` for each ``a`` on its own thread until the deadline (a
        thread stuck in a send past it is left behind: the process exits)."""
        ts = [threading.Thread(target=self._guarded, args=(target, a), daemon=True)
              for a in args]
        for t in ts:
            t.start()
        for t in ts:
            t.join(max(0.0, self.deadline + 5 - time.monotonic()))

    def _guarded(self, target: Callable[..., None], a: tuple[Any, ...]) -> None:
        try:
            target(*a)
        except Exception as e:  # one thread's failure is a figure, not the end
            self.count(f"error {type(e).__name__}")


class Sink(Byzantine):
    """Links that never read: what a node sends piles up in the socket's buffers and
    the node's (websockets stops reading the socket once 16 frames wait)."""

    def _read(self, i: int, ws: ClientConnection, *rest: Any) -> None:
        return


class RawReader(Byzantine):
    """Links that read every frame unparsed and unopened, counting the big ones
    (``big[i]``) and all bytes, waiting ``read_delay`` after each frame."""

    read_delay = 0.0

    def _read(self, i: int, ws: ClientConnection, *rest: Any) -> None:
        self.big: collections.Counter[int] = getattr(self, "big", collections.Counter())
        self.bytes: collections.Counter[int] = getattr(self, "bytes", collections.Counter())
        try:
            for frame in ws:
                self.bytes[i] += len(frame)
                self.big[i] += len(frame) > BIG_FRAME
                if self.read_delay:
                    time.sleep(self.read_delay)
        except Exception:
            pass
        self.dead.add(i)


def _send_or_replace(a: Attack, links: list[Byzantine], k: int, i: int, msg: Any,
                     cls: type[Byzantine] = Byzantine) -> None:
    """Send on full-node link ``k`` (to node ``i``); a link the node closed or refused
    is replaced by one of a fresh key (keys are free)."""
    if links[k].send(i, msg) and i not in links[k].dead:
        return
    a.count("links closed by the node")
    try:
        links[k].close()
        links[k] = a.byzantine(None, [i], cls)
        a.count("links opened again")
    except Exception:
        a.count("links refused")
        time.sleep(0.2)


# -- the attacks ---------------------------------------------------------------------


def impersonate(a: Attack) -> dict[str, Any]:
    relay_s, hold_s = float(a.get("relay_s", 2.0)), float(a.get("hold_s", 3.0))
    ports: list[int] = []

    def pipe(src: ClientConnection, dst: ClientConnection, forward_until: float,
             end: float) -> None:
        while time.monotonic() < end:
            try:
                frame = src.recv(timeout=0.2)
            except TimeoutError:
                continue
            except ConnectionClosed:
                return
            if time.monotonic() < forward_until:
                try:
                    dst.send(frame)  # text stays text, binary binary: unread
                except ConnectionClosed:
                    return
                a.count("frames relayed")

    def pair(x: int, y: int) -> None:
        while a.running():
            try:
                wx = connect(a.url(x), max_size=None, open_timeout=5).__enter__()
                wy = connect(a.url(y), max_size=None, open_timeout=5).__enter__()
            except Exception:
                a.count("dials failed")
                time.sleep(0.5)
                continue
            with a.lock:
                # Each relayed connection as (its local port, the node's port): a port
                # number alone is no proof, Linux reuses a local port towards other
                # destinations (an honest link's port may be one the attacker used).
                ports.extend((w.socket.getsockname()[1], w.socket.getpeername()[1])
                             for w in (wx, wy))
            now = time.monotonic()
            end = min(now + relay_s + hold_s, a.deadline)
            ts = [threading.Thread(target=pipe, args=(s, d, now + relay_s, end))
                  for s, d in ((wx, wy), (wy, wx))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            a.count("relays")
            a.count("relays the nodes closed", all(w.close_code is not None
                                                   for w in (wx, wy)))
            for w in (wx, wy):
                w.close()

    pairs = list(itertools.combinations(a.nodes, 2))
    a.threads(pair, pairs)
    return {"ports": sorted(set(ports))}


def high_height(a: Attack) -> dict[str, Any]:
    def worker(t: int) -> None:
        byz = Byzantine(a.net, crypto.new_key())  # type: ignore[arg-type]
        for n in itertools.count():
            if not a.running():
                return
            i = a.nodes[(t + n) % len(a.nodes)]
            try:
                byz.connect([i], height=FAR_HEIGHT)
                byz.send(i, wire.Status(FAR_HEIGHT, secrets.token_hex(32)))
                a.count("connections")
            except Exception:
                a.count("connections refused")
                byz = Byzantine(a.net, crypto.new_key())  # type: ignore[arg-type]
            finally:
                link = byz.links.pop(i, None)
                if link is not None:
                    link[0].close()

    a.threads(worker, [(t,) for t in range(int(a.get("threads", 4)))])
    return {}


def unread(a: Attack) -> dict[str, Any]:
    n = int(a.get("links", 12))
    links = [a.byzantine(None, [a.nodes[k % len(a.nodes)]], Sink) for k in range(n)]

    def worker(k: int) -> None:
        i = a.nodes[k % len(a.nodes)]
        for _ in a.paced(float(a.get("rate", 20))):
            _send_or_replace(a, links, k, i, wire.GetPending(None), Sink)
            a.count("requests")

    a.threads(worker, [(k,) for k in range(n)])
    return {}


def _junk_txs(size: int) -> bytes:
    """The JSON array of well-formed transactions of made-up inputs (wrong
    signatures, unknown coins), about ``size`` bytes."""
    txs: list[bytes] = []
    total = 0
    address = new_wallet()[1]
    while total < size:
        ins = tuple(TxInput(secrets.token_hex(32), 0, secrets.token_hex(32),
                            secrets.token_hex(64)) for _ in range(250))
        outs = (TxOutput(1000, address),)
        tx = Transaction("", 1, ins, outs, 0, 1)
        body = orjson.dumps(Transaction(tx.compute_txid(), 1, ins, outs, 0, 1).to_json())
        txs.append(body)
        total += len(body) + 1
    return b"[" + b",".join(txs) + b"]"


def _next_height(byz: Byzantine, i: int) -> tuple[int, str]:
    """The height node ``i`` decides now (or next) and its tip, from its newest
    ``Status``."""
    byz.wait_message(i, wire.Status)
    status = [m for m in list(byz.received[i]) if isinstance(m, wire.Status)][-1]
    return status.height + 1, status.tip


def proposals(a: Attack) -> dict[str, Any]:
    byz = a.byzantine(a.member, a.nodes)
    observer = a.byzantine(None, [a.nodes[0]], RawReader)
    h, prev = _next_height(byz, a.nodes[0])
    mine = [r for r in range(1000) if byz.proposer(h, r) == byz.public_key]
    rounds = mine[:int(a.get("rounds", 16))]
    txs = _junk_txs(int(float(a.get("block_mib", 5.3)) * (1 << 20)))
    for n in a.paced(float(a.get("rate", 2.35))):
        r = rounds[n % len(rounds)]
        block_hash = secrets.token_hex(32)
        a.count("proposals made")
        sig = byz.key.sign(wire.proposal_bytes(byz.network_id, h, r, -1, block_hash))
        block = {"height": h, "prev_hash": prev, "timestamp": int(time.time()),
                 "txids": [], "producer": byz.public_key, "round": r, "hash": block_hash,
                 "txs": "@TXS@"}
        frame = orjson.dumps({"type": "Proposal", "data": {
            "height": h, "round": r, "valid_round": -1, "block": block,
            "certificates": [], "signature": sig.signature.hex()}})
        text = frame.replace(b'"@TXS@"', txs).decode()
        for i in a.nodes:
            if byz.send(i, text):
                a.count("proposals sent")
            elif i in byz.dead:
                byz.reconnect(i)
    time.sleep(1)  # what node 0 relays last
    return {"height": h, "rounds": rounds, "block_bytes": len(txs),
            "relayed": sum(getattr(observer, "big", {}).values())}


def addr_flood(a: Attack) -> dict[str, Any]:
    n = int(a.get("records", 4096))
    listening = int(a.get("listening", 64))
    ports = free_ports(n)
    # Records alternate: even ones for fresh keys (never in the set), odd ones for the
    # member's own key (in the set: each replaces the one before).
    keys = [crypto.new_key() if k % 2 == 0 else a.member for k in range(n)]
    listen_ports = set(ports[:listening])
    conns: collections.Counter[int] = collections.Counter()
    sel = selectors.DefaultSelector()
    socks = []
    for p in listen_ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p))
        s.listen(128)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, p)
        socks.append(s)

    def accept() -> None:
        while a.running():
            for ev, _ in sel.select(0.2):
                try:
                    c, _ = ev.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                conns[ev.data] += 1
                c.close()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    links = [a.byzantine(None, a.nodes)]
    # Each record a second newer than the one before, all within the day a record
    # lives: every one of the member's replaces the one before it.
    oldest = int(time.time()) - 80_000
    for k in a.paced(float(a.get("rate", 400))):
        x = k % n
        rec = wire.sign_addr(keys[x], a.network_id, f"127.0.0.1:{ports[x]}", oldest + k)
        for i in a.nodes:
            _send_or_replace(a, links, 0, i, rec)
        a.count("records sent")
    acceptor.join(1)
    member_ports = {p for k, p in enumerate(ports) if k % 2 == 1}
    return {"connections_member_key": sum(c for p, c in conns.items() if p in member_ports),
            "connections_fresh_keys": sum(c for p, c in conns.items()
                                          if p not in member_ports),
            "ports_dialled": len(conns)}


def json_bomb(a: Attack) -> dict[str, Any]:
    size = int(a.get("frame_bytes", wire.MAX_P2P_MESSAGE_BYTES - 16))
    bomb = "[" + "[]," * ((size - 4) // 3) + "[]]"
    rate = float(a.get("mib_per_s", 25)) * (1 << 20) / len(bomb) / len(a.nodes)
    codes: collections.Counter[str] = collections.Counter()

    def worker(i: int) -> None:
        for _ in a.paced(rate):
            try:
                ws = connect(a.url(i), max_size=None, open_timeout=5).__enter__()
            except Exception:
                a.count("dials failed")
                continue
            # Counted before it goes: a node may close the link after its first
            # bytes, and the send then fails.
            a.count("frames tried")
            try:
                ws.send(bomb)
                while True:
                    ws.recv(timeout=10)
            except TimeoutError:
                codes["left open"] += 1
            except (ConnectionClosed, OSError):
                pass
            codes[str(ws.close_code)] += 1
            ws.close()

    a.threads(worker, [(i,) for i in a.nodes])
    return {"close_codes": dict(codes), "frame_bytes": len(bomb)}


def amplify(a: Attack) -> dict[str, Any]:
    n = int(a.get("links", 8))
    RawReader.read_delay = float(a.get("read_delay", 0.05))
    links = [a.byzantine(None, [a.nodes[k % len(a.nodes)]], RawReader) for k in range(n)]
    asks = (wire.GetPending(None), wire.GetBlocks(1, 500))

    def worker(k: int) -> None:
        i = a.nodes[k % len(a.nodes)]
        for m in a.paced(float(a.get("rate", 12))):
            _send_or_replace(a, links, k, i, asks[m % 2], RawReader)
            a.count("requests")

    a.threads(worker, [(k,) for k in range(n)])
    return {"answers": sum(sum(getattr(b, "big", {}).values()) for b in links),
            "bytes_received": sum(sum(getattr(b, "bytes", {}).values()) for b in links),
            "links": n}


def respend(a: Attack) -> dict[str, Any]:
    key = crypto.parse_private_key(a.get("coin_key", ""))
    coins = [(c[0], int(c[1])) for c in a.get("coins", [])]
    amount = int(a.get("amount", 1000))
    nodes = list(a.get("nodes", a.nodes[:2]))
    links = [a.byzantine(None, nodes)]
    sample: list[str] = []
    for k in a.paced(float(a.get("rate", 1075))):
        tx = build([(t, v, key) for t, v in coins],
                   [(new_wallet()[1], amount - 1 - k % max(1, amount - 2))], timestamp=k + 2)
        for i in nodes:
            _send_or_replace(a, links, 0, i, wire.Tx(tx))
        a.count("spends sent")
        if k < 20 or k % 200 == 0:
            sample.append(tx.txid)
    return {"sample": sample}


def votes(a: Attack) -> dict[str, Any]:
    byz = a.byzantine(a.member, a.nodes)
    mode = a.get("mode", "wide")
    rate = float(a.get("rate", {"wide": 150, "same_number": 330, "single": 2250}[mode]))
    numbers = itertools.count(int(a.get("first_batch", 1_000_000)))
    for _ in a.paced(rate):
        if mode == "wide":
            msg = byz.votes(next(numbers), [(secrets.token_hex(32), True)
                                            for _ in range(256)])
        elif mode == "same_number":
            msg = byz.votes(1, [(secrets.token_hex(32), True) for _ in range(16)])
        else:
            msg = byz.votes(next(numbers), [(secrets.token_hex(32), True)])
        frame = wire.encode(msg).decode()
        for i in a.nodes:
            if not byz.send(i, frame) and i in byz.dead:
                byz.reconnect(i)
        a.count("batches sent")
    return {"mode": mode}


def consensus(a: Attack) -> dict[str, Any]:
    byz = a.byzantine(a.member, a.nodes)
    observer = a.byzantine(None, [a.nodes[0]])
    h, _ = _next_height(byz, a.nodes[0])
    span = int(a.get("rounds", 64))
    for k in a.paced(float(a.get("rate", 1200))):
        if k % 100 == 0:  # blocks go on: the height node 0 decides now
            h, _ = _next_height(byz, a.nodes[0])
        r, value = k % span, secrets.token_hex(32)
        msg = byz.prevote(h, r, value) if k // span % 2 == 0 else byz.precommit(h, r, value)
        frame = wire.encode(msg).decode()
        for i in a.nodes:
            if not byz.send(i, frame) and i in byz.dead:
                byz.reconnect(i)
        a.count("messages sent")
    time.sleep(1)  # what node 0 relays last
    relayed = collections.Counter(
        (m.height, m.round, m.TYPE) for m in list(observer.received.get(a.nodes[0], []))
        if isinstance(m, wire.Prevote | wire.Precommit) and m.voter == byz.public_key)
    return {"heights": len({k[0] for k in relayed}), "relayed": sum(relayed.values()),
            "relayed_most_per_step": max(relayed.values(), default=0)}


def burn(a: Attack) -> dict[str, Any]:
    """The control run: the attack's CPU, spent without sending anything."""
    total = float(a.get("cpu_s", 0.0))
    start, duration = time.monotonic(), float(a.settings["duration"])
    while a.running():
        due = total * min(1.0, (time.monotonic() - start) / duration)
        if _cpu() < due:
            spin = time.monotonic() + 0.01
            while time.monotonic() < spin:
                pass
        else:
            time.sleep(0.01)
    return {}


ATTACKS: dict[str, Callable[[Attack], dict[str, Any]]] = {
    f.__name__: f for f in (impersonate, high_height, unread, proposals, addr_flood,
                            json_bomb, amplify, respend, votes, consensus, burn)}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str]) -> None:
    name, settings = argv[1], orjson.loads(argv[2])
    random.seed()
    a = Attack(settings)
    try:
        report = ATTACKS[name](a)
    except Exception as e:
        report = {"failed": f"{type(e).__name__}: {e}"}
    report.update(dict(a.counts))
    report["cpu_s"] = round(_cpu(), 2)
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    sys.stdout.flush()
    # Threads stuck in a send to a node that stopped reading are left behind.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
