"""The Addr reactor (timefast/p2p/addrs.py): masternodes found by their signed
records (SPEC 7.2)."""

from __future__ import annotations

from .network import Network


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
