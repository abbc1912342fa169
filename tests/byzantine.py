"""A masternode driven by the test: a real key of the voting set, speaking the peer
protocol itself (SPEC 7.2-7.5), to send what an honest node never would: conflicting
approvals, a vote both ways, a proposal no validator may accept, old or forged
messages."""

from __future__ import annotations

import threading
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
        self._lock = threading.Lock()

    def connect(self, nodes: list[int]) -> Byzantine:
        """Open an authenticated link to each of ``nodes``; what they send is kept."""
        for i in nodes:
            ws = connect(f"ws://127.0.0.1:{self.net.ports[i]}/p2p", max_size=None).__enter__()
            link = Link(self.key, self.network_id, self.net.pubs, outbound=True, now=0,
                        height=0, tip="00" * 32, listen=None)
            for frame in link.data_to_send():
                ws.send(frame.decode())
            while not link.authenticated:
                link.receive_frame(ws.recv(timeout=10), 0)
                for frame in link.data_to_send():
                    ws.send(frame.decode())
            self.links[i] = (ws, link)
            self.received[i] = []
            threading.Thread(target=self._read, args=(i,), daemon=True).start()
        return self

    def _read(self, i: int) -> None:
        ws, _ = self.links[i]
        try:
            for frame in ws:
                msg = wire.parse(frame)
                with self._lock:
                    self.received[i].append(msg)
        except Exception:
            pass

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
