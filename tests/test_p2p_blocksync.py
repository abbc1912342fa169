"""The block sync reactor (timefast/p2p/blocksync.py): catching up on blocks with
their commits (SPEC 7.5)."""

from __future__ import annotations

import urllib.request

from timefast import wire
from timefast.p2p.blocksync import BlockSyncReactor, blocks_frame
from timefast.p2p.switch import Peer, Switch

from .helpers import new_wallet
from .ledger_helpers import make_ledger
from .network import Network, free_ports, send_sealed
from .p2p_net import (
    FakeLink,
    closed,
    raw_peer,
    same_chain,
)


def test_a_node_down_for_20_blocks_catches_up_and_takes_part_again(four_generating):
    net = four_generating
    net.kill(3)
    for _ in range(4):
        net.rpc(0, "generate", 5)
    net.restart(3)
    net.wait_linked(timeout=30)
    net.wait_for(lambda: net.rpc(3, "getblockcount") == 20, 30, "node 3 caught up")
    same_chain(net, list(range(4)), 20)
    # And it takes part: with another node down, its precommit is needed for q = 3.
    net.kill(1)
    made = net.rpc(3, "generate", 1)
    net.wait_for(lambda: net.rpc(0, "getblockcount") == 21, 10)
    commit = net.rpc(0, "getblock", 21)["commit"]
    assert net.rpc(0, "getblock", 21)["hash"] == made[0]
    assert net.pubs[3] in {c["voter"] for c in commit}


def test_blocks_with_a_forged_commit_or_a_greedy_coinbase_are_refused_and_counted(four_generating):
    net = four_generating
    net.kill(3)
    net.rpc(0, "generate", 1)
    good = net.rpc(0, "getblock", 1) | {"txs": []}
    good["txs"] = [net.rpc(0, "gettransaction", t)["tx"] for t in good["txids"]]
    node3 = None
    try:
        # Node 3 is behind, on a port the others do not know; a lying peer offers
        # height 1 with a commit of one signer.
        (port,) = free_ports(1)
        net.nodes[3] = net._node(3, PEERS="", P2P_DISCOVERY=0, P2P_ADDR=f"127.0.0.1:{port}")
        node3 = net.nodes[3].start()
        ws, link = raw_peer(net, 3, port)
        forged = dict(good, commit=good["commit"][:1])
        send_sealed(ws, link, wire.Blocks((wire.Block.from_data(forged, "b"),)))
        assert closed(ws) == 1008
        ws, link = raw_peer(net, 3, port)
        other = dict(good, commit=[dict(c, signature="00" * 64) for c in good["commit"]])
        send_sealed(ws, link, wire.Blocks((wire.Block.from_data(other, "b"),)))
        assert closed(ws) == 1008
        assert net.rpc(3, "getblockcount") == 0
        # The true block, with its commit, is taken.
        ws, link = raw_peer(net, 3, port)
        send_sealed(ws, link, wire.Blocks((wire.Block.from_data(good, "b"),)))
        net.wait_for(lambda: net.rpc(3, "getblockcount") == 1, 10)
        ws.close()
        text = urllib.request.urlopen(
            net.nodes[3].ws_url.replace("ws://", "http://") + "/metrics", timeout=10).read()
        assert b"timefast_blocks_refused_total 2" in text
    finally:
        if node3 is not None:
            node3.kill()


def test_a_true_block_then_a_forged_one_from_a_peer_still_moves_the_node_on(tmp_path):
    """A lying catch-up peer sends a true block and, in the same ``Blocks``, one whose
    commit is cut short: the node keeps the first, refuses the second (the link
    closed, counted) and goes on to the next height.  Before, the refusal skipped
    what follows a committed block: the node stayed on the height it had just
    committed, and a network that needed its vote stalled there."""
    net = Network(tmp_path, 4, FINALITY_TIMEOUT=10)
    node3 = None
    try:
        net.start()
        net.kill(3)
        net.rpc(0, "generate", 2)
        blocks = []
        for h in (1, 2):
            b = net.rpc(0, "getblock", h)
            b["txs"] = [net.rpc(0, "gettransaction", t)["tx"] for t in b["txids"]]
            blocks.append(b)
        blocks[1]["commit"] = blocks[1]["commit"][:1]
        # Node 3 alone, behind, with a block timer: it starts each height it can.
        (port,) = free_ports(1)
        net.nodes[3] = net._node(3, PEERS="", P2P_DISCOVERY=0, BLOCK_INTERVAL=1,
                                 P2P_ADDR=f"127.0.0.1:{port}")
        node3 = net.nodes[3].start()
        ws, link = raw_peer(net, 3, port)
        send_sealed(ws, link, wire.Blocks(tuple(wire.Block.from_data(b, "b")
                                                for b in blocks)))
        assert closed(ws) == 1008
        assert net.rpc(3, "getblockcount") == 1
        net.wait_for(lambda: net.rpc(3, "getinfo")["consensus"]["height"] == 2, 10,
                     "node 3 on height 2")
    finally:
        if node3 is not None:
            node3.kill()
        net.close()


def _serving(tmp_path):
    """A one-masternode ledger with three blocks, its switch and block sync reactor."""
    led, _ = make_ledger(tmp_path)
    for n in range(3):
        led.faucet.pay(new_wallet()[1], 10 + n)
        led.blocks.make_block()
    switch = Switch(led, led.key, listen=None, advertise=None)
    sync = BlockSyncReactor(led, None, switch, lambda: None)  # type: ignore[arg-type]
    switch.add_reactor(sync)
    return led, switch, sync


def _peer(sent: list[bytes], authenticated: bool = True) -> Peer:
    link = FakeLink("ab" * 32, masternode=False)
    link.authenticated, link.closed = authenticated, not authenticated
    return Peer(link, "127.0.0.1:1", True, sent.append)  # type: ignore[arg-type]


def test_blocks_are_encoded_once_into_the_same_frame_and_shared(tmp_path):
    led, switch, _ = _serving(tmp_path)
    a, b = [], []
    switch.dispatch(_peer(a), wire.GetBlocks(1, 500))
    switch.dispatch(_peer(b), wire.GetBlocks(1, 500))
    assert a == [wire.encode(wire.Blocks(tuple(led.block_at(h) for h in (1, 2, 3))))]
    assert b[0] is a[0] and switch.answers.hits == 1
    # A frame as wire.encode makes it, and wire parses it back.
    assert blocks_frame([]) == wire.encode(wire.Blocks(()))
    assert wire.parse(a[0]) == wire.Blocks(tuple(led.block_at(h) for h in (1, 2, 3)))


def test_a_peer_whose_link_ended_is_not_asked_nor_remembered(tmp_path):
    _, _, sync = _serving(tmp_path)
    sent: list[bytes] = []
    sync.ask_blocks(_peer(sent, authenticated=False))
    assert sent == [] and sync._asked == {}
    live = _peer(sent)
    sync.ask_blocks(live)
    sync.peer_down(live)
    assert len(sent) == 1 and sync._asked == {}
