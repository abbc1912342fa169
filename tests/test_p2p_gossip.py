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
    FakeLink,
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
    def run() -> None:
        n = _Node(tmp_path)
        try:
            vote = wire.sign_prevote(n.keys[3], n.net, 1, 0, None)
            n.deliver(vote, via=1)
            # Height 1 is the next: on regtest the peer started it, and so did this
            # node; the vote went to the machine and on to the two other peers.
            assert n.driver.machine is not None and n.driver.machine.height == 1
            relayed = {k: [m for m in map(wire.parse, f) if m == vote]
                       for k, f in n.sent.items()}
            assert relayed == {n.pubs[1]: [], n.pubs[2]: [vote], n.pubs[3]: [vote]}
            before = {k: len(f) for k, f in n.sent.items()}
            n.deliver(vote, via=2)
            assert {k: len(f) for k, f in n.sent.items()} == before
            assert n.asked == []  # nothing ahead of this node
        finally:
            n.close()
    _run(run)


# -- budgets (SPEC 7.3), driven without sockets ------------------------------------------

class _Link(FakeLink):
    """A member's link whose faults the test reads (``faults``) instead of closing."""

    def __init__(self, key: str) -> None:
        super().__init__(key, masternode=True)
        self.faults: list[str] = []

    def misbehaved(self, reason: str) -> None:
        self.faults.append(reason)

    def events_received(self) -> list[object]:
        return []


class _Commits:
    """The node's group commit, run at once on the caller's thread."""

    def submit(self, fn, done) -> None:
        try:
            result = fn()
        except Exception as e:  # handed to done, as GroupCommit does
            done(None, e)
        else:
            done(result, None)


class _Node:
    """One masternode's ledger, switch, round driver and gossip reactor, with three
    peers (the other keys) whose frames are lists; ``keys[0]`` is this node's."""

    def __init__(self, tmp_path) -> None:
        from timefast.consensus import Timeouts
        from timefast.ledger import Ledger
        from timefast.p2p.gossip import ConsensusReactor
        from timefast.p2p.rounds import RoundDriver
        from timefast.p2p.switch import Peer, Switch
        from timefast.storage import Store

        self.keys = [crypto.new_key() for _ in range(4)]
        self.pubs = [crypto.public_key_hex(k) for k in self.keys]
        self.store = Store(tmp_path / "t.db")
        self.ledger = Ledger(self.store, "regtest", self.keys[0], self.pubs)
        self.net = self.ledger.network_id
        self.switch = Switch(self.ledger, self.keys[0], listen=None, advertise=None)
        commits = _Commits()
        self.asked: list[object] = []  # peers asked for blocks
        self.driver = RoundDriver(self.ledger, commits,  # type: ignore[arg-type]
                                  block_interval=0, timeouts=Timeouts(),
                                  broadcast=self.switch.broadcast)
        self.gossip = ConsensusReactor(self.ledger, commits, self.switch,  # type: ignore[arg-type]
                                       self.driver, self.asked.append)
        self.switch.add_reactor(self.gossip)
        self.sent: dict[str, list[bytes]] = {k: [] for k in self.pubs[1:]}
        self.links = {k: _Link(k) for k in self.pubs[1:]}
        for k in self.pubs[1:]:
            self.switch.by_key[k] = Peer(self.links[k], "127.0.0.1:1", False,  # type: ignore[arg-type]
                                         self.sent[k].append)

    def peer_proposing(self) -> tuple[int, str]:
        """Height 1 started: a round of it (0 or 1) whose proposer is one of the
        peers, and that proposer."""
        self.driver.start_height(1)
        m = self.driver.machine
        assert m is not None
        r = next(r for r in (0, 1) if m.proposer(1, r) != self.pubs[0])
        return r, m.proposer(1, r)

    def key_of(self, pub: str):
        return self.keys[self.pubs.index(pub)]

    def deliver(self, msg: wire.Message, via: int = 1) -> None:
        """``msg`` from the peer ``pubs[via]``, parsed from its frame as a link does."""
        self.switch.dispatch(self.switch.by_key[self.pubs[via]],
                             wire.parse(wire.encode(msg)))

    def relayed(self, to: int, kind: type) -> list[wire.Message]:
        """What went to ``pubs[to]`` of ``kind`` and not signed by this node."""
        return [m for m in map(wire.parse, self.sent[self.pubs[to]])
                if isinstance(m, kind) and self.pubs[0] not in (
                    getattr(m, "voter", None),
                    m.block.producer if isinstance(m, wire.Proposal) else None)]

    def close(self) -> None:
        self.driver.close()
        self.store.close()


def _run(fn) -> None:
    import asyncio

    async def main() -> None:
        fn()
    asyncio.run(main())


def test_a_flood_of_one_voter_s_prevotes_for_one_round_keeps_8_and_relays_2(tmp_path):
    # A member signs 50 different prevotes for (height 1, round 0).  The machine keeps
    # as many as it counts (MAX_VOTES_PER_VOTER), the first two go on to the other
    # peers, and the rest are dropped unread: ten more with broken signatures are
    # dropped as well, without a signature check (no fault is found).
    from timefast import consensus

    def run() -> None:
        n = _Node(tmp_path)
        try:
            voter = n.pubs[3]
            for i in range(50):
                n.deliver(wire.sign_prevote(n.keys[3], n.net, 1, 0, f"{i:064x}"))
            for i in range(50, 60):
                good = wire.sign_prevote(n.keys[3], n.net, 1, 0, f"{i:064x}")
                n.deliver(wire.Prevote(1, 0, good.block_hash, voter, "00" * 64))
            m = n.driver.machine
            assert m is not None and m.height == 1
            assert m.held(consensus.Prevote(1, 0, None, voter)) == consensus.MAX_VOTES_PER_VOTER
            assert [v.voter for v in n.relayed(2, wire.Prevote)] == [voter, voter]
            assert n.links[n.pubs[1]].faults == []
            assert n.gossip.dropped == 60 - consensus.MAX_VOTES_PER_VOTER
            assert len([k for k in n.gossip.signed if k.round == 0]) == 2
            assert n.ledger.equivocations.get(voter) == 1  # both signed, stored
            # A bad signature within the budget is still a fault of the peer.
            n.deliver(wire.Prevote(1, 0, None, voter, "00" * 64))
            assert n.links[n.pubs[1]].faults == ["Prevote: signature does not verify"]
        finally:
            n.close()
    _run(run)


def test_a_voter_climbing_rounds_costs_a_bounded_memory_and_is_not_relayed(
        tmp_path, monkeypatch):
    # A member signs a precommit for each of 600 rounds of height 1: the machine
    # keeps its highest MAX_FUTURE_ROUNDS_PER_VOTER rounds, the precommit signatures
    # and signed bodies of the rounds it let go are dropped, and only the round
    # within ROUNDS_AHEAD of this node's is relayed.
    from timefast import consensus
    from timefast.p2p import gossip, rounds

    monkeypatch.setattr(gossip, "KEPT_SIGNED", 32)
    monkeypatch.setattr(rounds, "SIGNATURES_KEPT", 32)

    def run() -> None:
        n = _Node(tmp_path)
        try:
            voter, top = n.pubs[3], 600
            for r in range(1, top + 1):
                n.deliver(wire.sign_precommit(n.keys[3], n.net, 1, r, None))
            m = n.driver.machine
            assert m is not None and m.round == 0
            held = [r for r in range(1, top + 1)
                    if m.held(consensus.Precommit(1, r, None, voter))]
            assert held == list(range(top - consensus.MAX_FUTURE_ROUNDS_PER_VOTER + 1,
                                      top + 1))
            assert len(n.driver.signatures) <= 2 * 32
            assert len(n.gossip.signed) <= 2 * 32
            assert [v.round for v in n.relayed(2, wire.Precommit)] == \
                list(range(1, gossip.ROUNDS_AHEAD + 1))
            # Lower rounds than those kept are dropped unread from now on.
            before = n.gossip.dropped
            n.deliver(wire.sign_precommit(n.keys[3], n.net, 1, 3, "ab" * 32))
            assert n.gossip.dropped == before + 1
        finally:
            n.close()
    _run(run)


def _junk_frame(p: wire.Proposal) -> wire.Proposal:
    """``p`` with a block whose transactions would not parse (the hash is unchanged,
    so the signature still holds)."""
    data = orjson.loads(wire.encode(p))["data"]
    data["block"]["txs"] = [{"junk": 1}]
    parsed = wire.parse(orjson.dumps({"type": "Proposal", "data": data}))
    assert isinstance(parsed, wire.Proposal)
    return parsed


def _empty_block(h: int, prev: str, ts: int, producer: str, r: int) -> wire.Block:
    return wire.Block(h, prev, ts, (), producer, r, block_hash(h, prev, ts, [], producer, r),
                      ())


def test_a_proposal_s_signature_and_proposer_are_checked_before_its_block_is_parsed(
        tmp_path):
    # Blocks that would not parse: with a bad signature, or signed by a key that is
    # not the round's proposer, the link closes for the signature (the block was
    # never parsed); with a good signature, for the block.
    def run() -> None:
        n = _Node(tmp_path)
        try:
            r, proposer = n.peer_proposing()
            other = next(k for k in n.pubs[1:] if k != proposer)
            block = _empty_block(1, n.ledger.tip, 1764150000, proposer, r)
            faults = n.links[n.pubs[1]].faults
            wrong = _junk_frame(wire.sign_proposal(n.key_of(other), n.net, 1, r, -1, block))
            n.switch.dispatch(n.switch.by_key[n.pubs[1]], wrong)
            assert faults == ["Proposal: signature does not verify"] and not wrong.opened
            good = wire.sign_proposal(n.key_of(proposer), n.net, 1, r, -1, block)
            forged = _junk_frame(wire.Proposal(1, r, -1, block, (), "00" * 64))
            n.switch.dispatch(n.switch.by_key[n.pubs[1]], forged)
            assert faults[1:] == ["Proposal: signature does not verify"]
            assert not forged.opened
            signed = _junk_frame(good)
            n.switch.dispatch(n.switch.by_key[n.pubs[1]], signed)
            assert len(faults) == 3 and "txs" in faults[2]
            assert block.hash not in n.driver.blocks
        finally:
            n.close()
    _run(run)


def test_one_block_per_proposer_height_and_round_is_kept(tmp_path):
    # The round's proposer signs three different blocks for one (height, round): the
    # first is kept, the first two are relayed (the second is the evidence), the
    # third is neither parsed nor relayed, and only the first block is kept; a
    # fourth, prevoted by f+1 validators before it came, is kept too.
    def run() -> None:
        n = _Node(tmp_path)
        try:
            r, proposer = n.peer_proposing()
            key = n.key_of(proposer)
            blocks = [_empty_block(1, n.ledger.tip, 1764150000 + i, proposer, r)
                      for i in range(3)]
            props = [wire.sign_proposal(key, n.net, 1, r, -1, b) for b in blocks]
            n.deliver(props[0])
            n.deliver(props[1])
            third = _junk_frame(props[2])
            n.switch.dispatch(n.switch.by_key[n.pubs[1]], third)
            assert not third.opened and n.links[n.pubs[1]].faults == []
            kept = {h for h, e in n.driver.blocks.items() if e[0].height == 1}
            assert blocks[0].hash in kept and blocks[1].hash not in kept
            assert blocks[2].hash not in kept
            to = 2 if n.pubs[2] != proposer else 3
            assert [p.block_hash for p in n.relayed(to, wire.Proposal)] == \
                [blocks[0].hash, blocks[1].hash]
            # A block beyond the first is kept when f+1 = 2 validators prevoted its
            # value before it came (Tendermint needs the block a polka is for).
            voters = [k for k in n.pubs[1:] if k != proposer][:2]
            fourth = _empty_block(1, n.ledger.tip, 1764150009, proposer, r)
            for v in voters:
                n.deliver(wire.sign_prevote(n.key_of(v), n.net, 1, r, fourth.hash))
            n.deliver(wire.sign_proposal(key, n.net, 1, r, -1, fourth))
            assert fourth.hash in n.driver.blocks
        finally:
            n.close()
    _run(run)


def test_a_block_over_4_mib_is_neither_parsed_nor_kept_nor_relayed(tmp_path):
    # A member's proposal whose block holds 4.3 MB of junk transactions: counted, not
    # parsed (junk would be a fault), not kept, not relayed; the machine has the
    # proposal and prevotes nil at once (the block is not at hand).
    from timefast import consensus, rules

    def run() -> None:
        n = _Node(tmp_path)
        try:
            r, proposer = n.peer_proposing()
            block = _empty_block(1, n.ledger.tip, 1764150000, proposer, r)
            data = orjson.loads(wire.encode(
                wire.sign_proposal(n.key_of(proposer), n.net, 1, r, -1, block)))["data"]
            data["block"]["txs"] = [{"x": "a" * 1000}] * 4300
            big = wire.parse(orjson.dumps({"type": "Proposal", "data": data}))
            assert isinstance(big, wire.Proposal) and big.txs_bytes() > rules.MAX_BLOCK_BYTES
            n.switch.dispatch(n.switch.by_key[n.pubs[1]], big)
            assert n.gossip.oversized == 1 and not big.opened
            assert n.links[n.pubs[1]].faults == []
            assert block.hash not in n.driver.blocks
            assert n.relayed(2, wire.Proposal) == [] and n.relayed(3, wire.Proposal) == []
            m = n.driver.machine
            assert m is not None
            assert m.holds(consensus.Proposal(1, r, -1, block.hash, proposer))
        finally:
            n.close()
    _run(run)
