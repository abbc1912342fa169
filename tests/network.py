"""A network of masternodes as real processes on loopback (SPEC 7): the harness the
peer, block and fault tests share.

``Network(root, n)`` makes ``n`` keys, gives every node the same ``MASTERNODES`` and
its own ``P2P_ADDR`` and sets each one's ``PEERS`` to the others; ``start`` runs
them (``time-masternode`` processes) and waits until every link is up.  Nodes can be
killed (``kill -9``), stopped and started again on the same data directory and
ports.  ``rpc(i, ...)`` calls node ``i``; ``wait_for`` polls a condition.
"""

from __future__ import annotations

import collections
import random
import socket
import threading
from pathlib import Path
from typing import Any

from timefast import crypto
from timefast.p2p.link import Received

from .helpers import NodeProcess, new_wallet, rpc, wait_for

DEFAULTS = {"FINALITY_TIMEOUT": "2", "LOG_LEVEL": "INFO"}


# Ports for listeners the harness must name before they bind (each node's PEERS names
# the others'): below Linux's ephemeral range (32768-60999), so that no outgoing
# connection of the nodes or the tests takes one between its choice and its bind.
PORT_RANGE = (20000, 32000)


# Ports handed out lately, never handed out again while they are this recent:
# networks started at once (the fault bench runs several seeds side by side) would
# otherwise each find a port free and both bind it.
_RECENT: collections.deque[int] = collections.deque(maxlen=4000)
_PORTS_LOCK = threading.Lock()


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free just now, outside the ephemeral range, none
    handed out lately in this process."""
    socks: list[socket.socket] = []
    rng = random.Random()
    with _PORTS_LOCK:
        try:
            while len(socks) < n:
                port = rng.randrange(*PORT_RANGE)
                if port in _RECENT:
                    continue
                s = socket.socket()
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    s.close()
                    continue
                socks.append(s)
                _RECENT.append(port)
            return [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()


class Network:
    """``n`` masternodes on loopback, each one's ``PEERS`` the others."""

    def __init__(self, root: Path, n: int, **settings: Any) -> None:
        self.root = root
        self.keys = [crypto.new_key() for _ in range(n)]
        self.pubs = [crypto.public_key_hex(k) for k in self.keys]
        self.ports = free_ports(n)
        self.settings = {**DEFAULTS, **{k: str(v) for k, v in settings.items()}}
        self.nodes: list[NodeProcess] = [self._node(i) for i in range(n)]

    def _node(self, i: int, **extra: Any) -> NodeProcess:
        peers = ",".join(f"127.0.0.1:{p}" for j, p in enumerate(self.ports) if j != i)
        env = {"MASTERNODE_KEY": crypto.format_private_key(self.keys[i]),
               "MASTERNODES": ",".join(self.pubs), "P2P_ADDR": f"127.0.0.1:{self.ports[i]}",
               "PEERS": peers, **self.settings, **extra}
        return NodeProcess(self.root / f"node{i}", **env)

    def __len__(self) -> int:
        return len(self.nodes)

    # -- life ------------------------------------------------------------------------

    def start(self, linked: bool = True, timeout: float = 30) -> Network:
        """Start every node; with ``linked``, wait until each has all others as peers."""
        for node in self.nodes:
            node.start()
        if linked:
            self.wait_linked(timeout=timeout)
        return self

    def up(self) -> list[int]:
        """Indexes of the nodes running now."""
        return [i for i, n in enumerate(self.nodes)
                if n.proc is not None and n.proc.poll() is None]

    def wait_linked(self, nodes: list[int] | None = None, timeout: float = 30) -> None:
        """Wait until each of ``nodes`` (default: those running) has every other of
        them as an authenticated peer."""
        nodes = self.up() if nodes is None else nodes
        want = len(nodes) - 1
        self.wait_for(lambda: all(self.rpc(i, "getinfo")["peers"] >= want for i in nodes),
                      timeout, f"nodes {nodes} linked")

    def kill(self, i: int) -> None:
        """``kill -9`` node ``i``."""
        self.nodes[i].kill()

    def stop(self, i: int) -> int:
        """SIGTERM node ``i``; its exit status."""
        return self.nodes[i].terminate()

    def restart(self, i: int, **extra: Any) -> NodeProcess:
        """Start node ``i`` again on its data directory and ports."""
        self.nodes[i].kill()
        self.nodes[i] = self._node(i, **extra)
        return self.nodes[i].start()

    def close(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------

    def rpc(self, i: int, method: str, *params: Any) -> Any:
        """Call node ``i``; the result, or ``RuntimeError`` with the error."""
        reply = rpc(self.nodes[i].rpc_url, method, *params)
        if "error" in reply:
            raise RuntimeError(f"node {i} {method}: {reply['error']}")
        return reply["result"]

    def status(self, i: int, txid: str) -> str | None:
        """A transaction's status at node ``i`` (None: unknown there)."""
        reply = rpc(self.nodes[i].rpc_url, "gettransaction", txid)
        return None if "error" in reply else reply["result"]["status"]

    # The one polling helper, as a method too: scenarios and tests call net.wait_for.
    wait_for = staticmethod(wait_for)

    def wait_status(self, txid: str, status: str, nodes: list[int] | None = None,
                    timeout: float = 30) -> None:
        """Wait until ``txid`` has ``status`` on every one of ``nodes`` (``finalized``
        is met by ``confirmed`` too: a block may take it at once)."""
        nodes = self.up() if nodes is None else nodes
        ok = {status, "confirmed"} if status == "finalized" else {status}
        self.wait_for(lambda: all(self.status(i, txid) in ok for i in nodes), timeout,
                      f"{txid[:16]} {status} on nodes {nodes}")

    def fund(self, i: int, amount: int, nodes: list[int] | None = None) -> tuple[Any, str, str]:
        """A fresh wallet paid ``amount`` by node ``i``'s faucet, finalized on ``nodes``;
        ``(key, address, txid)`` (the coin is output 0)."""
        key, address = new_wallet()
        txid = self.rpc(i, "faucet", address, amount)
        self.wait_status(txid, "finalized", nodes)
        return key, address, txid


def authenticate(ws: Any, link: Any) -> None:
    """Run ``link``'s handshake (a ``p2p.link.Link``) over the open peer socket ``ws``
    until it authenticates and the node's stream header arrived (a test's own peer:
    raw links, byzantine masternodes); then ``link.send`` seals what the test sends."""
    for frame in link.data_to_send():
        ws.send(frame)
    while not link.authenticated:
        link.receive_frame(ws.recv(timeout=10), 0)
        for frame in link.data_to_send():
            ws.send(frame)
        if link.closed:
            raise ConnectionError(f"handshake refused: {link.events_received()}")


def send_sealed(ws: Any, link: Any, msg: Any) -> None:
    """Send one message (a ``wire`` message, or raw bytes: a test's garbage) sealed on
    an authenticated ``link`` over ``ws``."""
    if isinstance(msg, bytes):
        link.send_encoded(msg)
    else:
        link.send(msg)
    for frame in link.data_to_send():
        ws.send(frame)


def read_sealed(ws: Any, link: Any, timeout: float = 10) -> list[Any]:
    """The messages in the next frame ``ws`` receives on an authenticated ``link``
    (none for the node's stream header or a Ping, answered here)."""
    link.receive_frame(ws.recv(timeout=timeout), 0)
    for frame in link.data_to_send():
        ws.send(frame)
    return [ev.message for ev in link.events_received() if isinstance(ev, Received)]
