"""Consensus messages between masternodes (SPEC 7.5): the gossip reactor.

A ``Proposal``, ``Prevote`` or ``Precommit`` from a peer is checked (a masternode's,
its signature good), relayed to every other peer once, kept signed (the evidence
of an equivocation is both signed messages) and handed to the round driver.  A
message of a height this node has passed is of no use; one further ahead means
this node is behind: blocks are asked for (block sync).  A new peer gets this
height's own messages again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from timefast import consensus, wire
from timefast.commits import GroupCommit
from timefast.ledger import Ledger
from timefast.p2p.rounds import RoundDriver
from timefast.p2p.switch import Peer, Reactor, Switch

log = logging.getLogger("timefast.consensus")

# Signed consensus messages of others kept (oldest dropped first) to store as evidence
# when the machine finds two of one validator for one (height, round, step).
KEPT_SIGNED = 4096

_KINDS: dict[type[consensus.Message], str] = {
    consensus.Proposal: "proposal", consensus.Prevote: "prevote",
    consensus.Precommit: "precommit"}


class ConsensusReactor(Reactor):
    """Checks, relays once and keeps consensus messages for the round driver."""

    MESSAGES: ClassVar[tuple[type[wire.Message], ...]] = (
        wire.Proposal, wire.Prevote, wire.Precommit, wire.StartHeight)

    def __init__(self, ledger: Ledger, commits: GroupCommit, switch: Switch,
                 driver: RoundDriver, ask_blocks: Callable[[Peer], None]) -> None:
        self.ledger = ledger
        self.commits = commits
        self.switch = switch
        self.driver = driver
        self.ask_blocks = ask_blocks
        self.network_id = ledger.network_id
        self.masternodes = frozenset(ledger.masternodes)
        self.seen: set[tuple[Any, ...]] = set()  # consensus messages relayed already
        # (kind, height, round, signer, block hash) -> the signed message as evidence
        # keeps it (a proposal without its block).
        self.signed: dict[tuple[str, int, int, str, str | None], bytes] = {}
        driver.on_height(self._new_height)
        driver.on_evidence(self._keep_evidence)

    def peer_up(self, peer: Peer, hello: wire.Hello) -> None:
        """A new peer gets this height's own signed messages."""
        for m in self.driver.own:
            self.switch.send_to(peer, m)

    def receive(self, peer: Peer, msg: wire.Message) -> None:
        """A consensus message from an authenticated peer."""
        if isinstance(msg, wire.Proposal):
            self._take_proposal(peer, msg)
        elif isinstance(msg, wire.Prevote | wire.Precommit):
            self._take_vote(peer, msg)
        elif isinstance(msg, wire.StartHeight):
            if self.ledger.network == "regtest" and msg.height == self.ledger.height + 1:
                self.driver.start_height(msg.height)
        else:
            self.refuse(msg)

    def _new_height(self, height: int) -> None:
        # What is kept of older heights is of no use any more.
        self.seen = {k for k in self.seen if k[1] >= height}
        self.signed = {k: v for k, v in self.signed.items() if k[1] >= height}

    def _relay_once(self, key: tuple[Any, ...], peer: Peer, msg: wire.Message) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        self.switch.broadcast(msg, but=peer)
        return True

    def _skip(self, peer: Peer, height: int) -> bool:
        """Whether a message of ``height`` is of no use now.  One of the next height
        is kept by the machine until that height starts; one further ahead means
        this node is behind: blocks are asked for."""
        if height <= self.ledger.height:
            return True
        if height > self.ledger.height + 1:
            self.ask_blocks(peer)
            return height > self.ledger.height + 2
        self.driver.follow(height)
        return False

    def _take_proposal(self, peer: Peer, p: wire.Proposal) -> None:
        proposer = self.driver.proposer(p.height, p.round)
        if proposer is None or self._skip(peer, p.height):
            return
        try:
            wire.verify_proposal(p, self.network_id, proposer)
        except wire.BadSignature as e:
            self.switch.misbehaved(peer, str(e))
            return
        key = ("P", p.height, p.round, p.block.hash, p.signature)
        if not self._relay_once(key, peer, p):
            return
        self._keep_signed("proposal", p.height, p.round, proposer, p.block.hash, {
            "type": p.TYPE, "height": p.height, "round": p.round,
            "valid_round": p.valid_round, "block_hash": p.block.hash,
            "proposer": proposer, "signature": p.signature})
        self.driver.take_proposal(p, proposer)

    def _take_vote(self, peer: Peer, v: wire.Prevote | wire.Precommit) -> None:
        if v.voter not in self.masternodes:
            self.switch.misbehaved(peer, f"{v.TYPE} by {v.voter[:16]}, not a masternode")
            return
        if self.driver.machine is None or self._skip(peer, v.height):
            return
        try:
            wire.verify_bft(v, self.network_id)
        except wire.BadSignature as e:
            self.switch.misbehaved(peer, str(e))
            return
        key = (v.TYPE, v.height, v.round, v.voter, v.block_hash, v.signature)
        if not self._relay_once(key, peer, v):
            return
        self._keep_signed(v.TYPE.lower(), v.height, v.round, v.voter, v.block_hash,
                          {"type": v.TYPE, **v.to_data()})
        self.driver.take_vote(v)

    def _keep_signed(self, kind: str, height: int, round_: int, signer: str,
                     block_hash: str | None, body: dict[str, Any]) -> None:
        key = (kind, height, round_, signer, block_hash)
        if key in self.signed:
            return
        if len(self.signed) >= KEPT_SIGNED:
            del self.signed[next(iter(self.signed))]
        self.signed[key] = orjson.dumps(body)

    def _keep_evidence(self, e: consensus.Evidence) -> None:
        """Store both signed messages of an equivocation (``masternodelist`` counts
        it, and it outlives a restart), when both are still at hand."""
        kind = _KINDS[type(e.first)]
        voter = consensus.sender_of(e.first)
        first, second = (self.signed.get((kind, m.height, m.round, voter, m.block_hash))
                         for m in (e.first, e.second))
        if first is None or second is None:
            return

        def done(_: Any, err: BaseException | None) -> None:
            if err is not None:
                log.error("could not keep the evidence against %s: %s", voter[:16], err)
        self.commits.submit(lambda: self.ledger.add_evidence(voter, kind, first, second),
                            done)
