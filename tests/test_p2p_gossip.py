"""The consensus gossip reactor (timefast/p2p/gossip.py): proposals and votes
checked, relayed once and kept as evidence (SPEC 7.5)."""

from __future__ import annotations

import sqlite3
import urllib.request

import orjson

from timefast import crypto, wire
from timefast.rules import block_hash, coinbase

from .byzantine import Byzantine
from .network import Network
from .p2p_net import (
    fake_peer,
    same_chain,
)


def test_a_greedy_proposal_by_a_lying_masternode_is_refused_and_the_height_goes_on(
        tmp_path):
    # Node 3's key is the test's: it proposes, for its own height, a block whose
    # coinbase pays itself a million with no fees. Every honest validator refuses it
    # (prevotes nil, counted); the next round's proposer commits the height.
    net = Network(tmp_path, 4)
    try:
        for i in range(3):
            net.nodes[i].start()
        net.wait_linked([0, 1, 2])
        liar = Byzantine(net, net.keys[3]).connect([0, 1, 2])
        # The first height whose round-0 proposer is the liar.
        order = sorted(net.pubs)
        h = next(h for h in range(1, 5) if order[h % 4] == net.pubs[3])
        if h > 1:
            net.rpc(0, "generate", h - 1)  # (a height of the liar's would time out)
        net.wait_for(lambda: all(net.rpc(i, "getblockcount") == h - 1 for i in range(3)),
                     20)
        tip = net.rpc(0, "getblock", h - 1)
        ts = tip["timestamp"]
        cb = coinbase("regtest", h, ts, net.pubs[3], 1_000_000)
        txids = [cb.txid]
        block = wire.Block(h, tip["hash"], ts, tuple(txids), net.pubs[3], 0,
                           block_hash(h, tip["hash"], ts, txids, net.pubs[3], 0), (cb,))
        liar.send_all(wire.sign_proposal(net.keys[3], liar.network_id, h, 0, -1, block))
        net.wait_for(lambda: all(net.rpc(i, "getblockcount") == h for i in range(3)), 30,
                     f"height {h} committed")
        committed = net.rpc(1, "getblock", h)
        assert committed["round"] >= 1 and committed["producer"] != net.pubs[3]
        assert committed["hash"] != block.hash
        same_chain(net, [0, 1, 2], h)
        for i in range(3):
            text = urllib.request.urlopen(net.nodes[i].ws_url.replace("ws://", "http://")
                                          + "/metrics", timeout=10).read().decode()
            refused = next(line for line in text.splitlines()
                           if line.startswith("timefast_blocks_refused_total"))
            assert int(refused.split()[1]) >= 1
        liar.close()
    finally:
        net.close()


def test_double_proposals_and_votes_are_kept_as_evidence_and_shown(tmp_path):
    # Node 3's key is the test's: for the next heights it signs two proposals for one
    # of its rounds and two prevotes for one round.  Every honest node keeps both
    # signed messages of each pair, counts them in masternodelist.equivocations, and
    # still does after a restart.
    net = Network(tmp_path, 4, BLOCK_INTERVAL=1)
    try:
        for i in range(3):
            net.nodes[i].start()
        net.wait_linked([0, 1, 2])
        liar = Byzantine(net, net.keys[3]).connect([0, 1, 2])
        net.wait_for(lambda: net.rpc(0, "getblockcount") >= 1, 20)
        tip = net.rpc(0, "getblock", net.rpc(0, "getblockcount"))
        for h in range(tip["height"] + 1, tip["height"] + 3):
            r = next(r for r in range(1, 5) if liar.proposer(h, r) == liar.public_key)
            for ts in (tip["timestamp"], tip["timestamp"] + 1):
                liar.send_all(liar.proposal(liar.block(h, tip["hash"], ts, r), r))
            for value in ("ab" * 32, None):
                liar.send_all(liar.prevote(h, 0, value))

        def kinds(i: int) -> set[str]:
            db = sqlite3.connect(f"file:{net.nodes[i].data_dir / 'timefast.db'}?mode=ro",
                                 uri=True)
            try:
                rows = db.execute("SELECT voter, kind, first, second FROM evidence").fetchall()
            finally:
                db.close()
            for voter, kind, first, second in rows:
                assert voter == net.pubs[3] and first != second
                for body in (orjson.loads(first), orjson.loads(second)):
                    if kind == "proposal":
                        signed = wire.proposal_bytes(liar.network_id, body["height"],
                                                     body["round"], body["valid_round"],
                                                     body["block_hash"])
                    else:
                        signed = wire.bft_bytes(liar.network_id, wire.STEP_PREVOTE,
                                                body["height"], body["round"],
                                                body["block_hash"])
                    assert crypto.verify(bytes.fromhex(net.pubs[3]), signed,
                                         bytes.fromhex(body["signature"]))
            return {kind for _, kind, _, _ in rows}

        def shown(i: int) -> int:
            return next(m["equivocations"] for m in net.rpc(i, "masternodelist")
                        if m["public_key"] == net.pubs[3])
        net.wait_for(lambda: all(shown(i) >= 2 for i in range(3)), 20,
                     "the evidence on every honest node")
        assert all(kinds(i) == {"proposal", "prevote"} for i in range(3))
        before = shown(0)
        liar.close()
        net.restart(0)
        assert shown(0) == before
    finally:
        net.close()


def test_a_vote_is_relayed_once_to_every_other_peer_and_handed_on_once(tmp_path):
    """Driven without sockets: the first copy of a prevote goes to every peer but the
    one it came from, and to the round driver; a second copy (another peer, the same
    signed message) goes nowhere."""
    import asyncio

    from timefast.consensus import Timeouts
    from timefast.ledger import Ledger
    from timefast.p2p.gossip import ConsensusReactor
    from timefast.p2p.rounds import RoundDriver
    from timefast.p2p.switch import Peer, Switch
    from timefast.storage import Store

    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]

    async def run() -> None:
        store = Store(tmp_path / "t.db")
        led = Ledger(store, "regtest", keys[0], pubs)
        switch = Switch(led, keys[0], listen=None, advertise=None)
        driver = RoundDriver(led, None, block_interval=0, timeouts=Timeouts(),  # type: ignore[arg-type]
                             broadcast=switch.broadcast)
        asked: list[Peer] = []
        gossip = ConsensusReactor(led, None, switch, driver, asked.append)  # type: ignore[arg-type]
        switch.add_reactor(gossip)
        sent: dict[str, list[bytes]] = {k: [] for k in pubs[1:]}
        for k in pubs[1:]:
            switch.by_key[k] = fake_peer(k, sent[k])
        try:
            vote = wire.sign_prevote(keys[3], led.network_id, 1, 0, None)
            switch.dispatch(switch.by_key[pubs[1]], vote)
            # Height 1 is the next: on regtest the peer started it, and so did this
            # node; the vote went to the machine and on to the two other peers.
            assert driver.machine is not None and driver.machine.height == 1
            relayed = {k: [m for m in map(wire.parse, f) if m == vote]
                       for k, f in sent.items()}
            assert relayed == {pubs[1]: [], pubs[2]: [vote], pubs[3]: [vote]}
            before = {k: len(f) for k, f in sent.items()}
            switch.dispatch(switch.by_key[pubs[2]], vote)
            assert {k: len(f) for k, f in sent.items()} == before
            assert asked == []  # nothing ahead of this node
        finally:
            driver.close()
            store.close()

    asyncio.run(run())
