"""What the peer-layer tests share: a four-masternode network fixture, a subscribed
wallet, payments, raw peer links, and reads of a node's database beside it."""

from __future__ import annotations

import sqlite3
import threading

import orjson
from websockets.sync.client import connect

from timefast import crypto, wire
from timefast.p2p.link import Link
from timefast.p2p.switch import Peer
from timefast.transaction import build

from .network import Network, authenticate


def four_network(tmp_path, **settings):
    """Four masternodes started and linked (the ``four`` fixtures), closed after."""
    net = Network(tmp_path, 4, **settings)
    try:
        yield net.start()
    finally:
        net.close()


class Wallet:
    """A wallet subscribed to ``address`` at a node, keeping what it is told."""

    def __init__(self, ws_url: str, address: str) -> None:
        self.ws = connect(ws_url).__enter__()
        self.ws.send(orjson.dumps({"type": "Subscribe", "data": {"addresses": [address]}})
                     .decode())
        self.messages: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for frame in self.ws:
                with self._lock:
                    self.messages.append(orjson.loads(frame))
        except Exception:
            pass

    def types(self, txid: str) -> list[str]:
        with self._lock:
            return [m["type"] for m in self.messages
                    if txid in (m.get("data", {}).get("txid"),
                                (m.get("data", {}).get("tx") or {}).get("txid"))]

    def close(self) -> None:
        self.ws.close()


def pay(net: Network, i: int, key, coin: str, to: str, amount: int, vout: int = 0,
        timestamp: int = 1) -> str:
    tx = build([(coin, vout, key)], [(to, amount)], timestamp=timestamp)
    return net.rpc(i, "sendrawtransaction", tx.to_json())


def stored_votes(net: Network, i: int, txid: str) -> list[tuple[str, bool]]:
    """The votes on ``txid`` in node ``i``'s database (read beside the running node)."""
    db = sqlite3.connect(f"file:{net.nodes[i].data_dir / 'timefast.db'}?mode=ro", uri=True)
    try:
        rows = [(v, bool(a)) for v, a in db.execute(
            "SELECT voter, approve FROM votes WHERE txid=?", (txid,))]
        inline = db.execute("SELECT inline_votes FROM txs WHERE txid=?", (txid,)).fetchone()
        if inline and inline[0] is not None:
            rows += [(v[0], bool(v[1])) for v in orjson.loads(inline[0])]
        return rows
    finally:
        db.close()


def handshake(net: Network, i: int, key, network: bytes):
    """A raw peer link to node ``i`` signed by ``key`` for ``network``: (ws, link)."""
    ws = connect(f"ws://127.0.0.1:{net.ports[i]}/p2p")
    link = Link(key, network, net.pubs, outbound=True, now=0, height=0, tip="00" * 32,
                listen=None)
    for frame in link.data_to_send():
        ws.send(frame)
    return ws, link


def closed_with(ws) -> int | None:
    try:
        while True:
            ws.recv(timeout=10)
    except Exception:
        return ws.close_code


def hashes(net: Network, i: int, upto: int) -> list[str]:
    return [net.rpc(i, "getblock", h)["hash"] for h in range(upto + 1)]


def same_chain(net: Network, nodes: list[int], upto: int) -> list[str]:
    chains = [hashes(net, i, upto) for i in nodes]
    assert all(c == chains[0] for c in chains), "the chains differ"
    return chains[0]


def raw_peer(net: Network, i: int, port: int):
    """A raw authenticated link to node ``i`` (listening on ``port``) as a full node
    (a key outside the set)."""
    net_id = wire.network_id(net.rpc(i, "getblock", 0)["hash"], net.pubs)
    ws = connect(f"ws://127.0.0.1:{port}/p2p").__enter__()
    link = Link(crypto.new_key(), net_id, net.pubs, outbound=True, now=0, height=0,
                tip="00" * 32, listen=None)
    authenticate(ws, link)
    return ws, link


def closed(ws) -> int | None:
    try:
        while True:
            ws.recv(timeout=10)
    except Exception:
        return ws.close_code


class FakeLink:
    """An authenticated link without a socket or a stream (reactor and switch tests):
    what is handed to it to send comes out of ``data_to_send`` unsealed."""

    def __init__(self, key: str, masternode: bool = True) -> None:
        self.peer_key = key
        self.peer_masternode = masternode
        self.authenticated = True
        self.closed = False
        self._out: list[bytes] = []

    def send(self, msg: wire.Message) -> None:
        self._out.append(wire.encode(msg))

    def send_encoded(self, message: bytes) -> None:
        self._out.append(message)

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out


def fake_peer(key: str, sent: list[bytes], masternode: bool = True) -> Peer:
    """A peer on a ``FakeLink``: the encoded messages sent to it land in ``sent``."""
    return Peer(FakeLink(key, masternode), "127.0.0.1:1", False,  # type: ignore[arg-type]
                sent.append)
