"""Blocks every masternode agrees on (SPEC 7.5): Tendermint rounds over real peers."""

from __future__ import annotations

import itertools
import statistics
import time
import urllib.request

import orjson
import pytest
from websockets.sync.client import connect

from timefast import crypto, wire
from timefast.p2p.link import Link
from timefast.rules import block_hash, coinbase
from timefast.transaction import build

from .byzantine import Byzantine
from .helpers import new_wallet
from .network import Network, free_ports


def hashes(net: Network, i: int, upto: int) -> list[str]:
    return [net.rpc(i, "getblock", h)["hash"] for h in range(upto + 1)]


def same_chain(net: Network, nodes: list[int], upto: int) -> list[str]:
    chains = [hashes(net, i, upto) for i in nodes]
    assert all(c == chains[0] for c in chains), "the chains differ"
    return chains[0]


@pytest.fixture
def four(tmp_path):
    # generate(k) gives up after FINALITY_TIMEOUT x k: a round of a dead proposer
    # costs TIMEOUT_PROPOSE (3 s), more than the harness's 2 s a block.
    net = Network(tmp_path, 4, FINALITY_TIMEOUT=10)
    try:
        yield net.start()
    finally:
        net.close()


def test_generate_commits_blocks_on_every_node_with_their_commits(four):
    net = four
    key, _, coin = net.fund(0, 5000)
    _, to = new_wallet()
    tx = build([(coin, 0, key)], [(to, 4900)], timestamp=1)  # a fee of 100
    net.rpc(2, "sendrawtransaction", tx.to_json())
    net.wait_status(tx.txid, "finalized")
    made = net.rpc(1, "generate", 2)
    assert len(made) == 2
    net.wait_for(lambda: all(net.rpc(i, "getblockcount") == 2 for i in range(4)), 10)
    assert same_chain(net, list(range(4)), 2)[1:] == made
    block = net.rpc(3, "getblock", 1)
    assert len({c["voter"] for c in block["commit"]}) >= 3
    assert all(c["round"] == block["round"] for c in block["commit"])
    # The coinbase pays the fee to the block's producer, first in the block.
    cb = net.rpc(3, "gettransaction", block["txids"][0])["tx"]
    assert cb["inputs"] == [] and sum(o["amount"] for o in cb["outputs"]) == 100
    assert [net.status(i, tx.txid) for i in range(4)] == ["confirmed"] * 4
    info = net.rpc(0, "getinfo")["consensus"]
    assert info["height"] == 2 and info["step"] == "Commit"


def test_blocks_by_the_interval_are_the_same_on_every_node(tmp_path):
    net = Network(tmp_path, 4, BLOCK_INTERVAL=1)
    try:
        net.start()
        net.wait_for(lambda: min(net.rpc(i, "getblockcount") for i in range(4)) >= 30, 90,
                     "30 blocks")
        chain = same_chain(net, list(range(4)), 30)
        assert len(set(chain)) == 31
        stamps = [net.rpc(0, "getblock", h)["timestamp"] for h in range(2, 31)]
        # No drift: each height starts an interval after the block before's timestamp
        # (not after its commit), so blocks are never sooner and mostly exactly one
        # interval apart (a round lost to a slow proposer adds its timeout once).
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert min(gaps) >= 1 and statistics.median(gaps) == 1, gaps
    finally:
        net.close()


def test_a_dead_proposer_s_height_is_committed_in_a_later_round(four):
    net = four
    net.rpc(0, "generate", 1)
    net.wait_for(lambda: all(net.rpc(i, "getblockcount") == 1 for i in range(4)), 10)
    # The proposer of height 2, round 0: sorted(MASTERNODES)[(2 + 0) mod 4].
    dead = net.pubs.index(sorted(net.pubs)[2 % 4])
    net.kill(dead)
    alive = [i for i in range(4) if i != dead]
    made = net.rpc(alive[0], "generate", 1)
    net.wait_for(lambda: all(net.rpc(i, "getblockcount") == 2 for i in alive), 10)
    block = net.rpc(alive[1], "getblock", 2)
    assert block["hash"] == made[0] and block["round"] >= 1
    assert block["producer"] != net.pubs[dead]
    same_chain(net, alive, 2)


def test_a_node_down_for_20_blocks_catches_up_and_takes_part_again(four):
    net = four
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


def _peer(net: Network, i: int, port: int):
    """A raw authenticated link to node ``i`` (listening on ``port``) as a full node
    (a key outside the set)."""
    net_id = wire.network_id(net.rpc(i, "getblock", 0)["hash"], net.pubs)
    ws = connect(f"ws://127.0.0.1:{port}/p2p").__enter__()
    link = Link(crypto.new_key(), net_id, net.pubs, outbound=True, now=0, height=0,
                tip="00" * 32, listen=None)
    for frame in link.data_to_send():
        ws.send(frame.decode())
    while not link.authenticated:
        link.receive_frame(ws.recv(timeout=10), 0)
        for frame in link.data_to_send():
            ws.send(frame.decode())
    return ws, net_id


def _closed(ws) -> int | None:
    try:
        while True:
            ws.recv(timeout=10)
    except Exception:
        return ws.close_code


def test_blocks_with_a_forged_commit_or_a_greedy_coinbase_are_refused_and_counted(four):
    net = four
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
        ws, _ = _peer(net, 3, port)
        forged = dict(good, commit=good["commit"][:1])
        ws.send(wire.encode(wire.Blocks((wire.Block.from_data(forged, "b"),))).decode())
        assert _closed(ws) == 1008
        ws, _ = _peer(net, 3, port)
        other = dict(good, commit=[dict(c, signature="00" * 64) for c in good["commit"]])
        ws.send(wire.encode(wire.Blocks((wire.Block.from_data(other, "b"),))).decode())
        assert _closed(ws) == 1008
        assert net.rpc(3, "getblockcount") == 0
        # The true block, with its commit, is taken.
        ws, _ = _peer(net, 3, port)
        ws.send(wire.encode(wire.Blocks((wire.Block.from_data(good, "b"),))).decode())
        net.wait_for(lambda: net.rpc(3, "getblockcount") == 1, 10)
        ws.close()
        text = urllib.request.urlopen(
            net.nodes[3].ws_url.replace("ws://", "http://") + "/metrics", timeout=10).read()
        assert b"timefast_blocks_refused_total 2" in text
    finally:
        if node3 is not None:
            node3.kill()


def test_blocks_commit_while_a_masternode_approved_the_losing_spend(tmp_path):
    net = Network(tmp_path, 4)
    try:
        net.start()
        key, _, coin = net.fund(0, 5000)
        _, a = new_wallet()
        _, b = new_wallet()
        t1 = build([(coin, 0, key)], [(a, 1000)], timestamp=1)
        t2 = build([(coin, 0, key)], [(b, 2000)], timestamp=2)
        # Node 3 alone sees t2 first and approves it; the others finalize t1.
        net.kill(0)
        net.kill(1)
        net.kill(2)
        net.rpc(3, "sendrawtransaction", t2.to_json())
        net.kill(3)
        for i in (0, 1, 2):
            net.restart(i)
        net.wait_linked([0, 1, 2])
        net.rpc(0, "sendrawtransaction", t1.to_json())
        net.wait_status(t1.txid, "finalized", [0, 1, 2])
        net.restart(3)
        net.kill(2)  # one other masternode down: node 3's precommit is needed
        net.wait_linked([0, 1, 3])
        # Node 3 learns t1 with its certificate (GetPending) on linking.  Until then a
        # block it proposes (height 1 may be its turn) rightly holds no t1, and t1 is
        # confirmed a block later: CI saw that once.
        net.wait_status(t1.txid, "finalized", [3])
        made = net.rpc(0, "generate", 1)
        net.wait_for(lambda: net.rpc(3, "getblockcount") == 1, 20)
        assert net.rpc(3, "getblock", 1)["hash"] == made[0]
        assert net.status(3, t1.txid) == "confirmed"
        assert net.status(3, t2.txid) == "rejected"
    finally:
        net.close()


def test_the_supply_is_whole_after_payments_with_fees_and_blocks(four):
    net = four
    key, address, coin = net.fund(0, 100_000)
    prev = (coin, 0)
    balance = 100_000
    for n in range(20):
        _, to = new_wallet()
        tx = build([(*prev, key)], [(address, balance - 1000 - 7), (to, 1000)],
                   timestamp=n + 2)
        net.rpc(n % 4, "sendrawtransaction", tx.to_json())
        net.wait_status(tx.txid, "finalized", timeout=20)
        prev, balance = (tx.txid, 0), balance - 1007
        if n % 5 == 4:
            net.rpc(n % 4, "generate", 1)
    time.sleep(0.5)
    heights = {net.rpc(i, "getblockcount") for i in range(4)}
    assert heights == {4}
    chain = same_chain(net, list(range(4)), 4)
    fees = 0
    for h in range(1, 5):
        block = net.rpc(0, "getblock", chain[h])
        cb = net.rpc(0, "gettransaction", block["txids"][0])["tx"]
        assert cb["inputs"] == []
        fees += sum(o["amount"] for o in cb["outputs"])
    assert fees == 20 * 7


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
    import sqlite3
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
        ws, _ = _peer(net, 3, port)
        ws.send(wire.encode(wire.Blocks(tuple(wire.Block.from_data(b, "b")
                                              for b in blocks))).decode())
        assert _closed(ws) == 1008
        assert net.rpc(3, "getblockcount") == 1
        net.wait_for(lambda: net.rpc(3, "getinfo")["consensus"]["height"] == 2, 10,
                     "node 3 on height 2")
    finally:
        if node3 is not None:
            node3.kill()
        net.close()


def test_the_precommit_crash_point_is_a_fresh_lock_not_a_restored_precommit(tmp_path,
                                                                             monkeypatch):
    """TIMEFAST_CRASH_AT=precommit (timefast/crashpoints.py) fires once the record
    holding a new lock is durable and before its precommit leaves; the same
    precommit sent again after a restart is not that point."""
    import asyncio

    from timefast import consensus, crashpoints
    from timefast.consensus import Timeouts
    from timefast.ledger import Ledger
    from timefast.p2p.rounds import BlockRounds
    from timefast.storage import Store

    keys = [crypto.new_key() for _ in range(4)]
    pubs = sorted(crypto.public_key_hex(k) for k in keys)
    me = next(k for k in keys if crypto.public_key_hex(k) == pubs[1])  # proposes (1, 0)
    reached: list[str] = []
    sent: list[wire.Message] = []
    monkeypatch.setattr(crashpoints, "reached", reached.append)

    def rounds() -> BlockRounds:
        ledger = Ledger(Store(tmp_path / "t.db"), "regtest", me, pubs)
        return BlockRounds(ledger, None, me, block_interval=0, timeouts=Timeouts(),  # type: ignore[arg-type]
                           send=lambda m, _: sent.append(m), send_to=lambda p, m: None,
                           misbehaved=lambda p, r: None)

    async def first_life() -> str:
        r = rounds()
        r.start_height(1)
        (proposal,) = [m for m in sent if isinstance(m, wire.Proposal)]
        assert r.machine is not None and reached == []
        for voter in (pubs[2], pubs[3]):
            r._apply(r.machine.on_message(consensus.Prevote(1, 0, proposal.block.hash, voter)))
        r.close()
        r.ledger.store.close()
        return proposal.block.hash

    block = asyncio.run(first_life())
    assert reached == ["precommit"]
    (pc,) = [m for m in sent if isinstance(m, wire.Precommit)]
    assert pc.block_hash == block  # the lock's precommit, after the point
    sent.clear()

    async def second_life() -> None:
        r = rounds()
        r.start()  # resumes height 1 round 0 from the record
        r.close()
        r.ledger.store.close()

    asyncio.run(second_life())
    assert reached == ["precommit"]  # not again
    assert [(m.round, m.block_hash) for m in sent if isinstance(m, wire.Precommit)] == [
        (0, block)]
