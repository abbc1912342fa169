"""The round driver (SPEC 7.5): the Tendermint machine wired to the ledger.

``consensus.Consensus`` decides; ``RoundDriver`` gives it what it needs and carries
out what it asks, in its order: the record of its position and locks is persisted
by the ledger's ``privval`` *before* a message it signed leaves (the privval signs
it), blocks come from ``Ledger.propose_block`` (with the finality certificates of
their transactions) and are checked by ``Ledger.validate_proposal``, and a decision
is committed by ``Ledger.accept_block`` through the node's group commit, with the q
signed precommits as its commit.

Heights start ``BLOCK_INTERVAL`` after the previous block's timestamp (no drift);
with ``BLOCK_INTERVAL=0`` (regtest) only when asked (``generate``, or a peer's
``StartHeight``).  What peers send reaches the driver checked, through the
consensus gossip reactor (``p2p/gossip.py``); fetched blocks through block sync
(``p2p/blocksync.py``).  A node outside the voting set runs no machine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from timefast import consensus, crashpoints, wire
from timefast.commits import GroupCommit
from timefast.consensus import Consensus, Decision, Evidence, Output, Timeout, Timeouts
from timefast.ledger import Ledger, LedgerError
from timefast.privval import DoubleSign

log = logging.getLogger("timefast.consensus")

START_MARGIN = 0.02  # seconds
# Precommit signatures held before those of messages the machine let go are dropped
# (then twice what stays): amortized, so a flood costs no scan per message.
SIGNATURES_KEPT = 256


@dataclass
class _Generate:
    """A ``generate(k)`` in progress: the hashes committed so far."""

    want: int
    hashes: list[str] = field(default_factory=list)
    done: asyncio.Future[list[str]] | None = None


class RoundDriver:
    """One masternode's part in agreeing on blocks (see the module docstring).

    ``broadcast(msg)`` sends a peer message to every peer.  Subscribers of
    ``on_height`` hear of each height started; of ``on_evidence``, of each
    equivocation the machine found."""

    def __init__(self, ledger: Ledger, commits: GroupCommit, *, block_interval: float,
                 timeouts: Timeouts, broadcast: Callable[[wire.Message], Any]) -> None:
        self.ledger = ledger
        self.commits = commits
        self.privval = ledger.privval
        self.me = ledger.public_key
        self.block_interval = block_interval
        self.broadcast = broadcast
        self.machine: Consensus | None = None
        if ledger.voting:
            self.machine = Consensus(ledger.masternodes, self.me, get_value=self._get_value,
                                     valid=self._valid, timeouts=timeouts)
        # Blocks proposed at the current height (or the next ones, early), by hash,
        # with their certificates: only those the gossip reactor hands over to keep
        # (the first of a (height, round), or one with f+1 votes), and of this height
        # only while the machine can use them (``Consensus.wanted``).
        self.blocks: dict[str, tuple[wire.Block, tuple[wire.Votes, ...]]] = {}
        # Signatures of precommits seen, for the commit of a decision.
        self.signatures: dict[tuple[int, int, str, str | None], str] = {}
        self._signatures_limit = SIGNATURES_KEPT
        self._kept_for: tuple[int | None, int] = (None, 0)  # (height, round) of _forget
        # Blocks of this height found valid: the machine remembers the answer, so a
        # decision on one needs the block still at hand (at most one a round from a
        # member, each a valid block).
        self._validated: set[str] = set()
        self.own: list[wire.Message] = []  # own signed messages of the current height
        self.refused_blocks = 0
        self.evidence = 0
        self._height_watchers: list[Callable[[int], None]] = []
        self._evidence_watchers: list[Callable[[Evidence], None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._next_height: asyncio.TimerHandle | None = None
        self._pending_decision: Decision | None = None
        self._committing = False
        self._generate: _Generate | None = None
        self._closed = False

    def on_height(self, fn: Callable[[int], None]) -> None:
        """Call ``fn(height)`` when a height starts (what is older is of no use)."""
        self._height_watchers.append(fn)

    def on_evidence(self, fn: Callable[[Evidence], None]) -> None:
        """Call ``fn`` with each equivocation the machine finds."""
        self._evidence_watchers.append(fn)

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Resume the last signed position (after a restart), or plan the next height."""
        if self.machine is None:
            return
        record = self.privval.restore()
        if record is not None and record.height == self.ledger.height + 1:
            log.info("consensus resumes height %d round %d", record.height, record.round)
            self._carry_out(self.machine.restore(record))
            return
        self._plan_height()

    def close(self) -> None:
        """Cancel every timer; fail a ``generate`` in progress."""
        self._closed = True
        for t in self._timers:
            t.cancel()
        if self._next_height is not None:
            self._next_height.cancel()
        if self._generate is not None and self._generate.done is not None \
                and not self._generate.done.done():
            self._generate.done.set_exception(RuntimeError("the node is stopping"))

    def info(self) -> dict[str, Any]:
        """``getinfo.consensus``: the height being decided, its round and step."""
        m = self.machine
        if m is None or m.height is None:
            return {"height": self.ledger.height + 1, "round": 0, "step": "NewHeight"}
        step = "Commit" if m.decision is not None else m.step.name.capitalize()
        return {"height": m.height, "round": m.round, "step": step}

    # -- heights -----------------------------------------------------------------------

    def _plan_height(self) -> None:
        """Start the next height at the previous block's timestamp + BLOCK_INTERVAL
        (with no interval: only when asked)."""
        if self._next_height is not None:
            self._next_height.cancel()
            self._next_height = None
        if self.machine is None or self._closed:
            return
        if self._generate is not None or self.block_interval > 0:
            delay = 0.0
            if self._generate is None:
                # A timer may fire a little early: the margin keeps the block's
                # timestamp (whole seconds) an interval after the one before.
                delay = max(0.0, self.ledger.tip_timestamp + self.block_interval
                            - time.time() + START_MARGIN)
            loop = asyncio.get_running_loop()
            self._next_height = loop.call_later(delay, self.start_height,
                                                self.ledger.height + 1)

    def start_height(self, height: int) -> None:
        """Start deciding ``height`` when it is the next one and not started yet."""
        self._next_height = None
        m = self.machine
        if m is None or height != self.ledger.height + 1:
            return
        if m.height is not None and m.height >= height:
            return
        if self._generate is not None:
            self.broadcast(wire.StartHeight(height))
        self._cancel_timers()
        self.blocks = {h: e for h, e in self.blocks.items() if e[0].height == height}
        self._validated.clear()
        self.own.clear()
        self.signatures = {k: v for k, v in self.signatures.items() if k[0] >= height}
        for fn in self._height_watchers:
            fn(height)
        self._pending_decision = None
        self._carry_out(m.start_height(height))

    def follow(self, height: int) -> None:
        """A peer sent a message of ``height``, the next one: on regtest without a
        block timer that peer started it (``generate``), and so does this node."""
        if (self.block_interval == 0 and self.ledger.network == "regtest"
                and self.machine is not None
                and (self.machine.height is None or self.machine.height < height)):
            self.start_height(height)

    def _cancel_timers(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()

    # -- what the machine asks of us -------------------------------------------------------

    def _get_value(self, height: int, round_: int) -> str:
        block = self.ledger.propose_block(round_, self.me, int(time.time()))
        certs: dict[tuple[str, int], wire.Votes] = {}
        has_coinbase = bool(block.txs) and not block.txs[0].inputs
        for txid in block.txids[1 if has_coinbase else 0:]:
            for b in self.ledger.certificate(txid):
                certs[(b.voter, b.batch)] = b
        self.blocks[block.hash] = (block, tuple(certs.values()))
        return block.hash

    def _valid(self, block_hash: str) -> bool:
        entry = self.blocks.get(block_hash)
        if entry is None:
            return False
        block, certs = entry
        try:
            self.ledger.validate_proposal(block, certs)
        except LedgerError as e:
            self.refused_blocks += 1
            log.warning("block %s of height %s refused: %s", block_hash[:16],
                        block.height, e.message)
            return False
        self._validated.add(block_hash)
        return True

    def _carry_out(self, out: Output) -> None:
        """Carry out an Output in its order: persist, send, schedule, decide."""
        if out.persist is not None:
            # Synced to disk before anything signed leaves: after a restart the same
            # messages go out again, never others (SPEC 7.5).
            self.privval.persist(out.persist)
        for m in out.messages:
            if (out.persist is not None and isinstance(m, consensus.Precommit)
                    and m.block_hash is not None and out.persist.precommit == m):
                # The lock just made durable, its precommit not yet sent (a restored
                # one, sent again after a restart, is not this point).
                crashpoints.reached("precommit")
            signed = self._sign(m)
            if signed is not None:
                self.own.append(signed)
                self.broadcast(signed)
        loop = asyncio.get_running_loop()
        for t in out.timeouts:
            self._timers.append(loop.call_later(t.seconds, self._timeout, t))
        self._timers = [t for t in self._timers if not t.cancelled()]
        for e in out.evidence:
            self.evidence += 1
            log.warning("consensus equivocation by %s at height %d round %d",
                        consensus.sender_of(e.first)[:16], e.first.height, e.first.round)
            for fn in self._evidence_watchers:
                fn(e)
        if out.decision is not None:
            self._decide(out.decision)
        machine = self.machine
        if machine is not None and (machine.height, machine.round) != self._kept_for:
            self._forget_unused()

    def _forget_unused(self) -> None:
        """Drop what the machine can no longer use: blocks of this height it does
        not want and did not find valid (a junk block of a member's round past, an
        equivocator's second) and
        the signatures of precommits it no longer holds (rounds ahead it let go).
        With the machine's own bounds this bounds what a height keeps."""
        m = self.machine
        if m is None or m.height is None:
            return
        self._kept_for = (m.height, m.round)
        wanted = m.wanted()
        self.blocks = {h: e for h, e in self.blocks.items()
                       if e[0].height != m.height or h in wanted or h in self._validated}
        if len(self.signatures) > self._signatures_limit:
            self.signatures = {
                k: s for k, s in self.signatures.items()
                if k[2] == self.me or m.holds(consensus.Precommit(k[0], k[1], k[3], k[2]))}
            self._signatures_limit = max(SIGNATURES_KEPT, 2 * len(self.signatures))

    def _sign(self, m: consensus.Message) -> wire.Message | None:
        block: wire.Block | None = None
        certs: tuple[wire.Votes, ...] = ()
        if isinstance(m, consensus.Proposal):
            entry = self.blocks.get(m.block_hash)
            if entry is None:
                log.error("own proposal of %s without its block", m.block_hash[:16])
                return None
            block, certs = entry
        try:
            signed = self.privval.sign(m, block, certs)
        except DoubleSign as e:
            log.error("not signed: %s", e)
            return None
        if isinstance(signed, wire.Precommit):
            self.signatures[(m.height, m.round, self.me, m.block_hash)] = signed.signature
        return signed

    def _timeout(self, t: Timeout) -> None:
        if self.machine is not None and not self._closed:
            self._carry_out(self.machine.on_timeout(t.kind, t.height, t.round))

    def _decide(self, d: Decision) -> None:
        entry = self.blocks.get(d.block_hash)
        if entry is None:
            # Decided without the block (its proposal missed): peers that committed
            # it hand it over by GetBlocks.
            self._pending_decision = d
            self.broadcast(wire.GetBlocks(d.height, 1))
            return
        block, _ = entry
        commit = []
        for pc in d.commit:
            sig = self.signatures.get((pc.height, pc.round, pc.voter, pc.block_hash))
            if sig is not None:
                commit.append(wire.CommitSig(pc.voter, pc.round, sig))
        self._commit(replace(block, commit=tuple(commit)))

    def _commit(self, block: wire.Block) -> None:
        if self._committing:
            return
        self._committing = True

        def done(_: Any, err: BaseException | None) -> None:
            self._committing = False
            if err is not None:
                log.error("could not commit block %s: %s", block.hash, err)
                return
            self._after_block(block.hash)
        self.commits.submit(lambda: self.ledger.accept_block(block), done)

    def _after_block(self, block_hash: str) -> None:
        """A block was committed (decided here or fetched): announce, go on."""
        led = self.ledger
        log.info("⛓  block %d %s committed", led.height, block_hash[:16])
        self.broadcast(wire.Status(led.height, led.tip))
        self._cancel_timers()
        g = self._generate
        if g is not None:
            g.hashes.append(led.tip)
            if len(g.hashes) >= g.want:
                self._generate = None
                if g.done is not None and not g.done.done():
                    g.done.set_result(g.hashes)
        self._plan_height()

    def blocks_fetched(self) -> None:
        """Blocks fetched from peers were committed (block sync): the height being
        decided, if one of them, is over."""
        m = self.machine
        if m is not None and m.height is not None and m.height <= self.ledger.height:
            self._cancel_timers()
        self._after_block(self.ledger.tip)

    # -- what peers send, checked by the gossip reactor ---------------------------------------

    def proposer(self, height: int, round_: int) -> str | None:
        """The proposer of (height, round); None on a node that runs no machine."""
        return None if self.machine is None else self.machine.proposer(height, round_)

    def take_proposal(self, p: wire.Proposal, proposer: str, keep: bool) -> None:
        """A proposal whose signature holds, new here; its block is kept when
        ``keep`` (the reactor opened it: the first of its (height, round), or one
        that f+1 voted for)."""
        m = self.machine
        if m is None:
            return
        if keep:
            self.blocks[p.block_hash] = (p.block, p.certificates)
        self._carry_out(m.on_message(consensus.Proposal(p.height, p.round, p.valid_round,
                                                        p.block_hash, proposer)))
        if keep:
            self._forget_unused()
        if self._pending_decision is not None and keep \
                and self._pending_decision.block_hash == p.block_hash:
            d, self._pending_decision = self._pending_decision, None
            self._decide(d)

    def take_vote(self, v: wire.Prevote | wire.Precommit) -> None:
        """A prevote or precommit whose signature holds, new here."""
        m = self.machine
        if m is None:
            return
        if isinstance(v, wire.Precommit):
            self.signatures.setdefault((v.height, v.round, v.voter, v.block_hash),
                                       v.signature)
            self._carry_out(m.on_message(consensus.Precommit(v.height, v.round,
                                                             v.block_hash, v.voter)))
            if len(self.signatures) > self._signatures_limit:
                self._forget_unused()
        else:
            self._carry_out(m.on_message(consensus.Prevote(v.height, v.round,
                                                           v.block_hash, v.voter)))

    # -- regtest ---------------------------------------------------------------------------

    def generate(self, k: int) -> asyncio.Future[list[str]]:
        """Make the network commit ``k`` blocks now (regtest); the hashes once done."""
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        if self.machine is None:
            fut.set_exception(LedgerError("BAD_REQUEST", "this node is not a masternode"))
            return fut
        if self._generate is not None:
            fut.set_exception(LedgerError("BAD_REQUEST", "a generate is in progress"))
            return fut
        self._generate = _Generate(k, done=fut)
        self.start_height(self.ledger.height + 1)
        return fut

    def generate_cancel(self) -> None:
        """Give up a ``generate`` in progress (its caller timed out)."""
        g, self._generate = self._generate, None
        if g is not None and g.done is not None and not g.done.done():
            g.done.cancel()
