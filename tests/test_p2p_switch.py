"""The switch (timefast/p2p/switch.py): links end to end between masternode processes
on loopback (SPEC 7.2-7.4), and dispatch by message type driven without sockets."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import urllib.request
from types import SimpleNamespace

import pytest
from websockets.sync.client import connect

from timefast import cli, crypto, wire
from timefast.ledger import Ledger
from timefast.p2p.addrs import AddrReactor
from timefast.p2p.link import Link
from timefast.p2p.switch import Peer, Reactor, Switch
from timefast.storage import Store

from .helpers import NodeThread, new_wallet, result, rpc, wait_for
from .network import authenticate, free_ports, read_sealed, send_sealed
from .p2p_net import (
    FakeLink,
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
    # An authenticated full node that then sends garbage, then another (the first is
    # refused for 10 minutes now) a forged vote batch.
    for bad in (b"{not json", None):
        outsider = crypto.new_key()
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


# -- budgets (SPEC 7.3) ------------------------------------------------------------------

class _Pending(Reactor):
    """Answers GetPending through the switch, counting how often it encodes."""

    MESSAGES = (wire.GetPending,)

    def __init__(self, switch: Switch) -> None:
        self.switch = switch
        self.made = 0

    def receive(self, peer: Peer, msg: wire.Message) -> None:
        def make() -> bytes:
            self.made += 1
            return wire.encode(wire.Pending((), ()))
        self.switch.answer(peer, "pending", None, 0, make)


def _proven_peer(key: str, sent: list[bytes], member: bool = False) -> Peer:
    peer = Peer(FakeLink(key, member), "127.0.0.1:1", True,  # type: ignore[arg-type]
                sent.append)
    peer.proven = True
    return peer


def test_a_burst_of_requests_gets_two_answers_encoded_once_and_costs_points(tmp_path):
    switch, store = _switch(tmp_path)
    try:
        reactor = _Pending(switch)
        switch.add_reactor(reactor)
        a, b = [], []
        pa, pb = _proven_peer("aa" * 32, a), _proven_peer("bb" * 32, b)
        for _ in range(20):
            switch.dispatch(pa, wire.GetPending(None))
        switch.dispatch(pb, wire.GetPending(None))
        assert len(a) == 2 and len(b) == 1
        assert reactor.made == 1 and a[0] is b[0]  # one encoding for all of them
        assert switch.requests_dropped == 18 and switch.requests_answered == 3
        assert switch.refusals.score("aa" * 32, time.monotonic()) >= 17
    finally:
        store.close()


def test_a_peer_that_leaves_an_answer_unread_gets_no_other(tmp_path):
    switch, store = _switch(tmp_path)
    try:
        switch.add_reactor(_Pending(switch))
        sent: list[bytes] = []
        peer = _proven_peer("aa" * 32, sent)

        def send(frame: bytes) -> None:  # as the switch's socket side counts
            sent.append(frame)
            peer.sent += len(frame)
            peer.queued += len(frame)
        peer.send = send
        switch.dispatch(peer, wire.GetPending(None))
        switch.dispatch(peer, wire.GetPending(None))
        assert len(sent) == 1 and switch.requests_dropped == 1
        peer.queued = 0  # written: the peer read it
        time.sleep(0.5)
        switch.dispatch(peer, wire.GetPending(None))
        assert len(sent) == 2
    finally:
        store.close()


def test_a_link_replaced_as_a_duplicate_is_forgotten_by_every_reactor(tmp_path):
    switch, store = _switch(tmp_path)
    try:
        downs: list[Peer] = []
        switch.add_reactor(SimpleNamespace(  # type: ignore[arg-type]
            MESSAGES=(), peer_down=downs.append))
        old, new = _proven_peer("aa" * 32, []), _proven_peer("aa" * 32, [])
        old.up = new.up = True
        switch.by_key["aa" * 32] = new  # the new link took the key's place
        switch._gone(old)
        assert downs == [old] and switch.by_key["aa" * 32] is new
        switch._gone(old)  # heard of once
        assert downs == [old]
    finally:
        store.close()


def test_addr_of_keys_outside_the_voting_set_starts_no_dial_and_a_member_one_loop(
        tmp_path):
    switch, store = _switch(tmp_path)
    member = sorted(switch.masternodes - {switch.public_key})[0]

    async def run() -> None:
        for n in range(100):
            switch.discover(f"10.9.0.{n}:1", crypto.public_key_hex(crypto.new_key()))
        assert switch.dialer.loops == {}
        switch.discover("127.0.0.1:9", member)
        switch.discover("127.0.0.1:10", member)  # newer: the same loop dials there
        assert list(switch.dialer.loops) == [member]
        assert switch.dialer.targets == {member: "127.0.0.1:10"}
        await switch.stop()
    try:
        asyncio.run(run())
    finally:
        store.close()


def _per_peer_entries(switch: Switch) -> int:
    """Peers held anywhere in the switch's reactors (dict keys or values, sets, lists)."""
    n = 0
    for reactor in switch.reactors:
        for value in vars(reactor).values():
            items = (list(value) + list(value.values()) if isinstance(value, dict)
                     else list(value) if isinstance(value, set | list) else [])
            n += sum(isinstance(i, Peer) for i in items)
    return n


def test_closed_peers_leave_nothing_and_a_misbehaving_full_node_is_refused(tmp_path):
    keys = [crypto.new_key() for _ in range(2)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    (port,) = free_ports(1)
    node = NodeThread(tmp_path, MASTERNODE_KEY=crypto.format_private_key(keys[0]),
                      MASTERNODES=",".join(pubs), P2P_ADDR=f"127.0.0.1:{port}").start()
    try:
        switch = node.node.peers
        net_id = switch.network_id

        def peer(key):
            ws = connect(f"ws://127.0.0.1:{port}/p2p").__enter__()
            link = Link(key, net_id, pubs, outbound=True, now=0, height=0, tip="00" * 32,
                        listen=None)
            authenticate(ws, link)
            return ws, link

        # A full node asks 20 times at once and claims a far height (the node asks
        # it for blocks), then goes; the same key links twice (the second link, which
        # the smaller key dialled, replaces the first).
        outsider = crypto.new_key()
        while crypto.public_key_hex(outsider) > pubs[0]:
            outsider = crypto.new_key()
        ws, link = peer(outsider)
        send_sealed(ws, link, wire.Status(10**6, "ab" * 32))
        for _ in range(20):
            send_sealed(ws, link, wire.GetPending(None))
        answers = []
        with contextlib.suppress(TimeoutError):  # everything, until 2 s of quiet
            while True:
                answers += read_sealed(ws, link, timeout=2)
        assert 1 <= sum(isinstance(m, wire.Pending) for m in answers) <= 3
        again, _ = peer(outsider)
        ws.close()
        again.close()
        wait_for(lambda: node.call(lambda: not switch.peers), 10, "links gone")
        assert node.call(lambda: _per_peer_entries(switch)) == 0
        # A full node that sends garbage is closed, and refused when it comes back
        # (after Auth, with the reason); loopback is not refused by IP: a new key is
        # let in.
        ws, link = peer(outsider)
        send_sealed(ws, link, b"{not json")
        assert closed_with(ws) == 1008
        ws, _ = peer(outsider)
        assert closed_with(ws) == 1008 and "refused" in ws.close_reason
        ws, link = peer(crypto.new_key())
        got = read_sealed(ws, link) + read_sealed(ws, link)  # the stream header, Status
        assert any(isinstance(m, wire.Status) for m in got)
        ws.close()
        assert node.call(lambda: switch.refused_misbehaviour_total) == 1
    finally:
        node.stop()
