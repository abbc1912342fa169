"""The switch (timefast/p2p/switch.py): links end to end between masternode processes
on loopback (SPEC 7.2-7.4), and dispatch by message type driven without sockets."""

from __future__ import annotations

import contextlib
import io
import urllib.request

import pytest

from timefast import cli, crypto, wire
from timefast.ledger import Ledger
from timefast.p2p.addrs import AddrReactor
from timefast.p2p.switch import Peer, Reactor, Switch
from timefast.storage import Store

from .helpers import NodeThread, new_wallet, result, rpc
from .network import authenticate, send_sealed
from .p2p_net import (
    Wallet,
    closed_with,
    fake_peer,
    handshake,
    pay,
)


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


def test_bad_peers_are_closed_and_counted_and_the_node_carries_on(four):
    net = four
    before = net.rpc(0, "getinfo")
    net_id = wire.network_id(net.rpc(0, "getblock", 0)["hash"], net.pubs)
    # Another network id (another genesis or voting set): refused in the handshake.
    ws, _ = handshake(net, 0, crypto.new_key(), b"\x01" * 32)
    assert closed_with(ws) == 1008
    # A bad Auth: signed over another ephemeral than the node's.
    outsider = crypto.new_key()
    ws, link = handshake(net, 0, outsider, net_id)
    hello = wire.parse(ws.recv(timeout=10))
    assert isinstance(hello, wire.Hello)
    ws.send(wire.encode(wire.sign_auth(outsider, net_id, 0, link.ephemeral, b"\x00" * 32,
                                       hello.public_key)).decode())
    assert closed_with(ws) == 1008
    # An authenticated full node that then sends garbage, then a forged vote batch.
    for bad in (b"{not json", None):
        ws, link = handshake(net, 0, outsider, net_id)
        authenticate(ws, link)
        if bad is not None:
            send_sealed(ws, link, bad)
        else:
            forged = wire.sign_votes(crypto.new_key(), net_id, 1, [("ab" * 32, True)])
            forged = wire.Votes(net.pubs[1], 1, forged.votes, forged.signature)
            send_sealed(ws, link, forged)
        assert closed_with(ws) == 1008
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


class _Recorder(Reactor):
    def __init__(self, types: tuple[type[wire.Message], ...]) -> None:
        self.MESSAGES = types  # type: ignore[misc]
        self.got: list[wire.Message] = []

    def receive(self, peer: Peer, msg: wire.Message) -> None:
        if not isinstance(msg, self.MESSAGES):
            self.refuse(msg)
        self.got.append(msg)


def _switch(tmp_path) -> tuple[Switch, Store]:
    store = Store(tmp_path / "t.db")
    keys = [crypto.new_key() for _ in range(2)]
    led = Ledger(store, "regtest", keys[0], [crypto.public_key_hex(k) for k in keys])
    return Switch(led, keys[0], listen=None, advertise=None), store


def test_messages_go_to_the_reactor_registered_for_their_type(tmp_path):
    switch, store = _switch(tmp_path)
    try:
        txs, sync = _Recorder((wire.Tx, wire.GetPending)), _Recorder((wire.Status,))
        switch.add_reactor(txs)
        switch.add_reactor(sync)
        peer = fake_peer("ab" * 32, [])
        status = wire.Status(5, "cd" * 32)
        switch.dispatch(peer, status)
        switch.dispatch(peer, wire.GetPending(None))
        switch.dispatch(peer, wire.StartHeight(3))  # nobody took it: dropped
        assert sync.got == [status] and txs.got == [wire.GetPending(None)]
        # The switch keeps where the peer is (getpeerinfo) whoever takes the Status.
        assert (peer.height, peer.tip) == (5, "cd" * 32)
    finally:
        store.close()


def test_a_type_is_taken_by_one_reactor_and_a_reactor_refuses_what_it_did_not_declare(
        tmp_path):
    switch, store = _switch(tmp_path)
    try:
        switch.add_reactor(_Recorder((wire.Tx,)))
        with pytest.raises(ValueError, match="Tx"):
            switch.add_reactor(_Recorder((wire.Status, wire.Tx)))
        # Nothing of the refused reactor was registered.
        later = _Recorder((wire.Status,))
        switch.add_reactor(later)
        addrs = AddrReactor(switch)
        with pytest.raises(TypeError, match="Status"):
            addrs.receive(fake_peer("ab" * 32, []), wire.Status(1, "cd" * 32))
    finally:
        store.close()


def test_a_broadcast_is_encoded_once_and_skips_the_peer_it_came_from(tmp_path):
    switch, store = _switch(tmp_path)
    try:
        a, b, c = [], [], []
        for key, sent in (("aa" * 32, a), ("bb" * 32, b), ("cc" * 32, c)):
            switch.by_key[key] = fake_peer(key, sent)
        msg = wire.StartHeight(7)
        assert switch.broadcast(msg, but=switch.by_key["bb" * 32]) == 2
        assert a == c == [wire.encode(msg)] and b == []
        assert a[0] is c[0]  # encoded once for every peer (each link seals it)
    finally:
        store.close()
