"""Consensus messages between masternodes (SPEC 7.5): the gossip reactor.

A ``Proposal``, ``Prevote`` or ``Precommit`` from a peer is checked (a masternode's,
its signature good), relayed, kept signed (the evidence of an equivocation is both
signed messages) and handed to the round driver.  A message of a height this node
has passed is of no use; one further ahead means this node is behind: blocks are
asked for (block sync).  A new peer gets this height's own messages again.

Budgets (SPEC 7.3), so that one member of the voting set, signing as much as it
likes, costs a bounded amount of memory and CPU:

* The machine is asked first (``Consensus.admits``, from the parsed fields alone)
  whether it would keep a message; what it would not keep (a duplicate, a voter's
  ninth value for one (height, round, step), a round below the voter's highest kept
  ahead) is dropped unread: no signature check, no block parsed.
* Of the messages kept, only the first two per (signer, height, round, step) are
  relayed and kept signed (two make the evidence), and only for rounds up to
  ``ROUNDS_AHEAD`` past this node's (messages further ahead serve the f+1 round skip
  here; their signers send them to every masternode themselves).
* A proposal's signature and proposer are checked before its block is parsed
  (``wire.Proposal.open``); the block is parsed only to be kept (the first of its
  (height, round) within ``ROUNDS_AHEAD``, or a value f+1 validators voted for) or
  relayed (the first two); one over 4 MiB of transactions is neither (SPEC 7.5).

What is kept is per height and goes when the next starts; nothing is kept per peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from timefast import consensus, rules, wire
from timefast.commits import GroupCommit
from timefast.ledger import Ledger
from timefast.p2p.rounds import RoundDriver
from timefast.p2p.switch import Peer, Reactor, Switch

log = logging.getLogger("timefast.consensus")

# Signed consensus messages of others kept, at most, to store as evidence when the
# machine finds two of one validator for one (height, round, step); the first two of
# each are kept, those of messages the machine let go are dropped past this (then
# twice what stays), and the oldest past twice this.
KEPT_SIGNED = 4096
# Messages of a validator relayed per (height, round, step): two make the evidence
# of an equivocation; an honest validator signs one.
RELAYED_PER_STEP = 2
# Rounds past this node's whose messages are relayed and whose proposals' blocks are
# parsed and kept: the next round's proposal often comes just before this node's
# timeout moves it there.
ROUNDS_AHEAD = 1

_KINDS: dict[type[consensus.Message], str] = {
    consensus.Proposal: "proposal", consensus.Prevote: "prevote",
    consensus.Precommit: "precommit"}


class ConsensusReactor(Reactor):
    """Checks, relays and keeps consensus messages for the round driver, within the
    budgets of the module docstring."""

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
        # The signed bodies of the first two messages of each (signer, height, round,
        # step), by the machine's form of the message (a proposal without its block).
        self.signed: dict[consensus.Message, bytes] = {}
        self._signed_limit = KEPT_SIGNED
        self.dropped = 0  # messages over a budget, dropped unread
        self.oversized = 0  # proposals whose block holds over 4 MiB of transactions
        driver.on_height(self._new_height)
        driver.on_evidence(self._keep_evidence)

    def metrics(self) -> list[tuple[str, str, str, float | int]]:
        """Budget counters for ``/metrics``."""
        return [
            ("timefast_consensus_dropped_total", "counter",
             "Consensus messages over a budget (SPEC 7.3), dropped before their "
             "signature was checked", self.dropped),
            ("timefast_consensus_oversized_total", "counter",
             "Proposals whose block holds over 4 MiB of transactions, refused before "
             "it was parsed", self.oversized)]

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
        self.signed = {k: v for k, v in self.signed.items() if k.height >= height}

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

    def _near(self, machine: consensus.Consensus, m: consensus.Message) -> bool:
        """Whether ``m`` is of this node's round or at most ROUNDS_AHEAD past it (a
        later height counts from its round 0)."""
        if machine.height is None or m.height > machine.height:
            return m.round <= ROUNDS_AHEAD
        return m.round <= machine.round + ROUNDS_AHEAD

    def _take_proposal(self, peer: Peer, p: wire.Proposal) -> None:
        machine = self.driver.machine
        proposer = self.driver.proposer(p.height, p.round)
        if machine is None or proposer is None or self._skip(peer, p.height):
            return
        m = consensus.Proposal(p.height, p.round, p.valid_round, p.block_hash, proposer)
        decided = machine.decision
        # The block of a decision made without it (its proposal missed) is taken
        # whenever it comes: the driver commits it then.
        missing = decided is not None and decided.height == p.height \
            and decided.block_hash == p.block_hash and p.block_hash not in self.driver.blocks
        if not missing and not machine.admits(m):
            self.dropped += 1
            return
        try:
            wire.verify_proposal(p, self.network_id, proposer)
        except wire.BadSignature as e:
            self.switch.misbehaved(peer, str(e))
            return
        held = machine.held(m)
        near = self._near(machine, m)
        relay = near and held < RELAYED_PER_STEP
        keep = missing or (near and held == 0) or machine.support(p.block_hash) > machine.f
        if relay or keep:
            try:
                size = p.txs_bytes()
                if size > rules.MAX_BLOCK_BYTES:
                    # Invalid for every validator: neither parsed nor kept nor
                    # relayed; the proposal still goes to the machine (it prevotes
                    # nil at once instead of waiting for its timeout).
                    self.oversized += 1
                    log.warning("proposal of %s for height %d round %d: %d bytes of "
                                "transactions (at most %d), not kept", proposer[:16],
                                p.height, p.round, size, rules.MAX_BLOCK_BYTES)
                    relay = keep = False
                else:
                    p.open()
            except wire.ParseError as e:
                self.switch.misbehaved(peer, str(e))
                return
        if held < RELAYED_PER_STEP:
            self._keep_signed(m, {
                "type": p.TYPE, "height": p.height, "round": p.round,
                "valid_round": p.valid_round, "block_hash": p.block_hash,
                "proposer": proposer, "signature": p.signature})
        if relay:
            self.switch.broadcast(p, but=peer)
        self.driver.take_proposal(p, proposer, keep)

    def _take_vote(self, peer: Peer, v: wire.Prevote | wire.Precommit) -> None:
        if v.voter not in self.masternodes:
            self.switch.misbehaved(peer, f"{v.TYPE} by {v.voter[:16]}, not a masternode")
            return
        machine = self.driver.machine
        if machine is None or self._skip(peer, v.height):
            return
        kind = consensus.Prevote if isinstance(v, wire.Prevote) else consensus.Precommit
        m = kind(v.height, v.round, v.block_hash, v.voter)
        if not machine.admits(m):
            self.dropped += 1
            return
        try:
            wire.verify_bft(v, self.network_id)
        except wire.BadSignature as e:
            self.switch.misbehaved(peer, str(e))
            return
        if machine.held(m) < RELAYED_PER_STEP:
            self._keep_signed(m, {"type": v.TYPE, **v.to_data()})
            if self._near(machine, m):
                self.switch.broadcast(v, but=peer)
        self.driver.take_vote(v)

    def _keep_signed(self, m: consensus.Message, body: dict[str, Any]) -> None:
        if len(self.signed) >= self._signed_limit:
            machine = self.driver.machine
            if machine is not None:
                self.signed = {k: b for k, b in self.signed.items() if machine.holds(k)}
            self._signed_limit = max(KEPT_SIGNED, 2 * len(self.signed))
            while len(self.signed) >= 2 * KEPT_SIGNED:
                del self.signed[next(iter(self.signed))]
        self.signed[m] = orjson.dumps(body)

    def _keep_evidence(self, e: consensus.Evidence) -> None:
        """Store both signed messages of an equivocation (``masternodelist`` counts
        it, and it outlives a restart), when both are still at hand."""
        kind = _KINDS[type(e.first)]
        voter = consensus.sender_of(e.first)
        first, second = self.signed.get(e.first), self.signed.get(e.second)
        if first is None or second is None:
            return

        def done(_: Any, err: BaseException | None) -> None:
            if err is not None:
                log.error("could not keep the evidence against %s: %s", voter[:16], err)
        self.commits.submit(lambda: self.ledger.add_evidence(voter, kind, first, second),
                            done)
