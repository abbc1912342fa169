"""The votes reactor (timefast/p2p/votes.py): finality votes between masternodes
(SPEC 7.4)."""

from __future__ import annotations

import sqlite3
import time

from timefast import crypto, wire
from timefast.transaction import build

from .helpers import new_wallet
from .network import Network, authenticate, send_sealed
from .p2p_net import (
    handshake,
    pay,
    stored_votes,
)


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
        ws, link = handshake(net, 3, crypto.new_key(), net_id)
        authenticate(ws, link)
        send_sealed(ws, link, wire.Tx(t2))
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
