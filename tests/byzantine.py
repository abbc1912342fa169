"""A masternode driven by the test: a real key of the voting set, speaking the peer
protocol itself (SPEC 7.2-7.5), to send what an honest node never would: conflicting
approvals, a vote both ways, a proposal no validator may accept, old or forged
messages; and, as a catch-up peer, a lying ``Status`` and ``Blocks`` answers that
withhold blocks or carry forged commits (``answer``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from nacl.signing import SigningKey
from websockets.sync.client import ClientConnection, connect

from timefast.p2p import wire
from timefast.p2p.link import Link

from .network import Network


class Byzantine:
    """Links to chosen nodes of ``net`` under ``key`` (one of ``net.keys``)."""

    def __init__(self, net: Network, key: SigningKey) -> None:
        self.net = net
        self.key = key
        self.public_key = key.verify_key.encode().hex()
        self.network_id = wire.network_id(net.rpc(net.up()[0], "getblock", 0)["hash"],
                                          net.pubs)
        self.links: dict[int, tuple[ClientConnection, Link]] = {}
        self.received: dict[int, list[wire.Message]] = {}
        # Set when node i closed the link (or it broke).
        self.closed: dict[int, threading.Event] = {}
        # Called (node, message) on the reader's thread for each message received:
        # how the test answers a node itself (a GetBlocks, say).
        self.answer: Callable[[int, wire.Message], None] | None = None
        self._lock = threading.Lock()

    def connect(self, nodes: list[int], height: int = 0, tip: str = "00" * 32
                ) -> Byzantine:
        """Open an authenticated link to each of ``nodes`` (a new one where one is
        open), claiming ``height`` and ``tip`` in its ``Hello``; what they send is
        kept."""
        for i in nodes:
            ws = connect(f"ws://127.0.0.1:{self.net.ports[i]}/p2p", max_size=None).__enter__()
            link = Link(self.key, self.network_id, self.net.pubs, outbound=True, now=0,
                        height=height, tip=tip, listen=None)
            for frame in link.data_to_send():
                ws.send(frame.decode())
            while not link.authenticated:
                link.receive_frame(ws.recv(timeout=10), 0)
                for frame in link.data_to_send():
                    ws.send(frame.decode())
            self.links[i] = (ws, link)
            self.received[i] = []
            self.closed[i] = threading.Event()
            threading.Thread(target=self._read, args=(i, ws, self.closed[i]),
                             daemon=True).start()
        return self

    def _read(self, i: int, ws: ClientConnection, closed: threading.Event) -> None:
        try:
            for frame in ws:
                msg = wire.parse(frame)
                # Answered before it is kept: whoever waits for it (wait_message)
                # finds the answer already sent.
                if self.answer is not None:
                    self.answer(i, msg)
                with self._lock:
                    self.received[i].append(msg)
        except Exception:
            pass
        finally:
            closed.set()

    def wait_message(self, i: int, kind: type, timeout: float = 10) -> Any:
        """The first message of type ``kind`` node ``i`` sent on the current link
        (waiting for it); ``TimeoutError`` if none comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for msg in self.received[i]:
                    if isinstance(msg, kind):
                        return msg
            time.sleep(0.02)
        raise TimeoutError(f"no {kind.__name__} from node {i} within {timeout} s")

    def fetch_blocks(self, i: int, first: int, count: int) -> dict[int, wire.Block]:
        """Real blocks ``first``.. (with their commits) asked of node ``i``, by height."""
        with self._lock:
            self.received[i] = [m for m in self.received[i]
                                if not isinstance(m, wire.Blocks)]
        self.send(i, wire.GetBlocks(first, count))
        got: wire.Blocks = self.wait_message(i, wire.Blocks)
        return {b.height: b for b in got.blocks}

    def send(self, i: int, msg: Any) -> None:
        """One message (a ``wire`` message, or raw text) to node ``i``."""
        ws, _ = self.links[i]
        ws.send(msg if isinstance(msg, str) else wire.encode(msg).decode())

    def send_all(self, msg: Any) -> None:
        for i in self.links:
            self.send(i, msg)

    def votes(self, batch: int, votes: list[tuple[str, bool]]) -> wire.Votes:
        """A vote batch signed by this masternode."""
        return wire.sign_votes(self.key, self.network_id, batch, votes)

    def close(self) -> None:
        for ws, _ in self.links.values():
            ws.close()
