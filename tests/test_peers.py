"""The peer network end to end (SPEC 7.2-7.4): masternodes as processes on loopback."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import threading
import time
import urllib.request

import orjson
import pytest
from websockets.sync.client import connect

from timefast import cli, crypto, wire
from timefast.p2p.link import Link
from timefast.transaction import build

from .helpers import NodeThread, new_wallet, result, rpc
from .network import Network


@pytest.fixture
def four(tmp_path):
    net = Network(tmp_path, 4)
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


def test_a_payment_at_one_node_finalizes_on_all_and_a_wallet_elsewhere_hears(four):
    net = four
    key, _, coin = net.fund(0, 5000)
    _, to = new_wallet()
    wallet = Wallet(net.nodes[2].ws_url, to)
    try:
        txid = pay(net, 0, key, coin, to, 4000)
        net.wait_status(txid, "finalized")
        net.wait_for(lambda: "TransactionFinalized" in wallet.types(txid), 10,
                     "the wallet on node 2 told")
        assert wallet.types(txid).index("TransactionPending") < \
            wallet.types(txid).index("TransactionFinalized")
    finally:
        wallet.close()
    # gettransaction agrees everywhere, each counting q approvals or more.
    views = [net.rpc(i, "gettransaction", txid) for i in range(4)]
    assert {v["status"] for v in views} == {"finalized"}
    assert all(v["votes"] >= 3 and v["quorum"] == 3 for v in views)
    # time-cli shows the links.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--rpc-addr", net.nodes[1].rpc_url.split("/")[2], "peers"]) == 0
    shown = out.getvalue()
    assert "masternodes connected: 4 of 4" in shown
    assert all(p[:16] in shown for j, p in enumerate(net.pubs) if j != 1)
    # Every masternode is connected to every other; nothing misbehaved.
    for i in range(4):
        info = net.rpc(i, "getpeerinfo")
        assert sorted(p["public_key"] for p in info) == sorted(
            p for j, p in enumerate(net.pubs) if j != i)
        assert all(p["masternode"] and p["misbehaviour"] == 0 for p in info)
        listed = net.rpc(i, "masternodelist")
        assert all(m["connected"] for m in listed)
        assert all(m["last_vote"] is not None for m in listed)


def test_one_down_still_finalizes_two_down_waits_for_one_back(four):
    net = four
    key, address, coin = net.fund(0, 5000)
    net.kill(3)
    _, to = new_wallet()
    txid = pay(net, 0, key, coin, to, 1000)
    net.wait_status(txid, "finalized", [0, 1, 2])
    # With two of four down no quorum (3) is possible: pending, coins locked, also
    # long past FINALITY_TIMEOUT (2 s here).
    net.kill(2)
    _, to2 = new_wallet()
    coin2 = net.rpc(0, "faucet", address, 700)
    net.wait_for(lambda: net.status(1, coin2) == "pending", 10)
    time.sleep(5)
    assert [net.status(i, coin2) for i in (0, 1)] == ["pending", "pending"]
    assert net.rpc(0, "gettransaction", coin2)["votes"] == 2
    net.restart(2)
    net.wait_status(coin2, "finalized", [0, 1, 2], timeout=30)
    # And the node that came back agrees on the earlier payment it had seen.
    assert net.status(2, txid) == "finalized"
    txid2 = pay(net, 1, key, coin2, to2, 600)
    net.wait_status(txid2, "finalized", [0, 1, 2])


def test_conflicting_spends_at_two_nodes_never_both_finalize(four):
    net = four
    key, _, coin = net.fund(0, 5000)
    _, a = new_wallet()
    _, b = new_wallet()
    t1 = build([(coin, 0, key)], [(a, 1000)], timestamp=1)
    t2 = build([(coin, 0, key)], [(b, 2000)], timestamp=2)
    taken = {}

    def send(i, tx):
        taken[tx.txid] = "error" not in rpc(net.nodes[i].rpc_url, "sendrawtransaction",
                                            tx.to_json())
    threads = [threading.Thread(target=send, args=(0, t1)),
               threading.Thread(target=send, args=(1, t2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A node that already locked the coin for the other spend refuses its wallet's
    # (TX_CONFLICT): that one is then known nowhere.
    assert any(taken.values())

    def settled():
        views = [(net.status(i, t1.txid), net.status(i, t2.txid)) for i in range(4)]
        known = all((s is not None) == taken[t.txid]
                    for t, s in zip((t1, t2), views[0], strict=True))
        return views if len(set(views)) == 1 and known else None
    views = net.wait_for(settled, 20, "every node agrees on both")
    s1, s2 = views[0]
    assert (s1, s2) != ("finalized", "finalized")
    assert (s1, s2) in {("finalized", "rejected"), ("rejected", "finalized"),
                        ("pending", "pending"), ("finalized", None), (None, "finalized")}


def test_a_restarted_masternode_keeps_the_vote_it_gave(tmp_path):
    net = Network(tmp_path, 4)
    try:
        net.start()
        key, _, coin = net.fund(0, 5000)
        for i in (0, 1, 2):
            net.kill(i)
        _, a = new_wallet()
        _, b = new_wallet()
        t1 = build([(coin, 0, key)], [(a, 1000)], timestamp=1)
        t2 = build([(coin, 0, key)], [(b, 2000)], timestamp=2)
        net.rpc(3, "sendrawtransaction", t1.to_json())
        net.wait_for(lambda: (net.pubs[3], True) in stored_votes(net, 3, t1.txid), 10,
                     "node 3 approved t1")
        net.kill(3)  # kill -9, then back on the same data directory
        net.restart(3)
        # A peer brings node 3 the conflicting spend: stored, and voted against.
        net_id = wire.network_id(net.rpc(3, "getblock", 0)["hash"], net.pubs)
        ws, link = _handshake(net, 3, crypto.new_key(), net_id)
        link.receive_frame(ws.recv(timeout=10), 0)
        for frame in link.data_to_send():
            ws.send(frame.decode())
        link.receive_frame(ws.recv(timeout=10), 0)
        assert link.authenticated
        ws.send(wire.encode(wire.Tx(t2)).decode())
        net.wait_for(lambda: net.pubs[3] in dict(stored_votes(net, 3, t2.txid)), 20,
                     "node 3 voted on t2")
        ws.close()
        assert dict(stored_votes(net, 3, t1.txid))[net.pubs[3]] is True
        assert dict(stored_votes(net, 3, t2.txid))[net.pubs[3]] is False
        assert net.status(3, t1.txid) == net.status(3, t2.txid) == "pending"
        # Its batch numbers went on after the restart: one content per number.
        db = sqlite3.connect(f"file:{net.nodes[3].data_dir / 'timefast.db'}?mode=ro",
                             uri=True)
        numbers = [n for (n,) in db.execute(
            "SELECT batch FROM batches WHERE voter=?", (net.pubs[3],))]
        db.close()
        assert len(numbers) == len(set(numbers)) >= 2
    finally:
        net.close()


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


def _handshake(net: Network, i: int, key, network: bytes):
    """A raw peer link to node ``i`` signed by ``key`` for ``network``: (ws, link)."""
    ws = connect(f"ws://127.0.0.1:{net.ports[i]}/p2p")
    link = Link(key, network, net.pubs, outbound=True, now=0, height=0, tip="00" * 32,
                listen=None)
    for frame in link.data_to_send():
        ws.send(frame.decode())
    return ws, link


def _closed_with(ws) -> int | None:
    try:
        while True:
            ws.recv(timeout=10)
    except Exception:
        return ws.close_code


def test_bad_peers_are_closed_and_counted_and_the_node_carries_on(four):
    net = four
    before = net.rpc(0, "getinfo")
    net_id = wire.network_id(net.rpc(0, "getblock", 0)["hash"], net.pubs)
    # Another network id (another genesis or voting set): refused in the handshake.
    ws, _ = _handshake(net, 0, crypto.new_key(), b"\x01" * 32)
    assert _closed_with(ws) == 1008
    # A bad Auth: signed over the wrong nonce.
    outsider = crypto.new_key()
    ws, link = _handshake(net, 0, outsider, net_id)
    hello = wire.parse(ws.recv(timeout=10))
    assert isinstance(hello, wire.Hello)
    ws.send(wire.encode(wire.sign_auth(outsider, net_id, b"\x00" * 32)).decode())
    assert _closed_with(ws) == 1008
    # An authenticated full node that then sends garbage, then a forged vote batch.
    for bad in (b"{not json", None):
        ws, link = _handshake(net, 0, outsider, net_id)
        link.receive_frame(ws.recv(timeout=10), 0)
        for frame in link.data_to_send():
            ws.send(frame.decode())
        link.receive_frame(ws.recv(timeout=10), 0)
        assert link.authenticated
        if bad is not None:
            ws.send(bad.decode())
        else:
            forged = wire.sign_votes(crypto.new_key(), net_id, 1, [("ab" * 32, True)])
            forged = wire.Votes(net.pubs[1], 1, forged.votes, forged.signature)
            ws.send(wire.encode(forged).decode())
        assert _closed_with(ws) == 1008
    text = urllib.request.urlopen(
        net.nodes[0].ws_url.replace("ws://", "http://") + "/metrics", timeout=10).read()
    metrics = {line.split()[0]: float(line.split()[1]) for line in text.decode().splitlines()
               if line and not line.startswith("#")}
    assert metrics["timefast_peer_misbehaviour_total"] >= 4
    # The node carries on: its masternode links are up and payments finalize.
    assert net.rpc(0, "getinfo")["peers"] == before["peers"] == 3
    key, _, coin = net.fund(0, 100)
    _, to = new_wallet()
    net.wait_status(pay(net, 0, key, coin, to, 50), "finalized")


def test_a_single_masternode_has_no_peer_port_and_says_so(tmp_path):
    node = NodeThread(tmp_path).start()
    try:
        assert node.node.peers is None and node.node.p2p_addresses == []
        assert result(node.rpc_url, "getpeerinfo") == []
        assert result(node.rpc_url, "getinfo")["peers"] == 0
        err = rpc(node.rpc_url, "addnode", "127.0.0.1:9")["error"]
        assert "no peer network" in err["message"]
        err = rpc(node.rpc_url, "addnode", "nowhere")["error"]
        assert "HOST:PORT" in err["message"]
        # And finality is as it always was: its own vote, inline.
        _, a = new_wallet()
        txid = result(node.rpc_url, "faucet", a, 10)
        assert result(node.rpc_url, "gettransaction", txid)["status"] == "finalized"
    finally:
        node.stop()


def test_a_node_given_one_peer_finds_the_others_by_addr(tmp_path):
    net = Network(tmp_path, 3)
    # Node 2 knows only node 0; nodes 0 and 1 know each other.
    net.nodes[2] = net._node(2, PEERS=f"127.0.0.1:{net.ports[0]}")
    net.nodes[1] = net._node(1, PEERS=f"127.0.0.1:{net.ports[0]}")
    net.nodes[0] = net._node(0, PEERS="")
    try:
        net.start(linked=False)
        net.wait_linked(timeout=30)
        assert {p["public_key"] for p in net.rpc(2, "getpeerinfo")} == {net.pubs[0],
                                                                       net.pubs[1]}
    finally:
        net.close()


def test_a_spend_accepted_and_rejected_in_one_commit_is_relayed_all_the_same(tmp_path):
    """A wallet's payment that lost its coin to a conflicting spend within one group
    commit (a loaded node) was acknowledged to the wallet, so the other nodes must
    hear of it too, to store it rejected as this node did.  Relaying only what was
    still pending when the commit was announced left them never knowing it (the
    fault bench found it: one node with the payment unknown, two with it rejected)."""
    from types import SimpleNamespace

    from timefast.ledger import Ledger
    from timefast.p2p.peers import Peer, PeerNetwork
    from timefast.storage import Store

    from .helpers import batch_vote
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led = Ledger(Store(tmp_path / "t.db"), "regtest", keys[0], pubs)
    owner, address = new_wallet()
    coin = led.faucet.pay(address, 5000)
    led.sign_batch()  # its own vote, as the peer layer signs it
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, coin, True))
    assert led.status_of(coin) == "finalized"
    peers = PeerNetwork(led, None, keys[0], listen=None, advertise=None)  # type: ignore[arg-type]
    led.watch(peers._changes)  # as start() does
    sent: list[bytes] = []
    peers.by_key[pubs[1]] = Peer(SimpleNamespace(authenticated=True, peer_key=pubs[1]),
                                 "127.0.0.1:1", False, sent.append)
    mine = build([(coin, 0, owner)], [(new_wallet()[1], 1000)], timestamp=1)
    theirs = build([(coin, 0, owner)], [(new_wallet()[1], 2000)], timestamp=2)
    with led.batch():  # one group commit: accepted, outvoted, rejected
        led.submit(mine.to_json())
        led.submit(theirs.to_json(), relayed=True)
        for k in keys[1:4]:
            led.votes.submit_vote(batch_vote(led, k, theirs.txid, True))
    assert led.status_of(mine.txid) == "rejected"
    relayed = {m.tx.txid for m in map(wire.parse, sent) if isinstance(m, wire.Tx)}
    assert mine.txid in relayed
