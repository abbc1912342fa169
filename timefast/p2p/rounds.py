"""Blocks every masternode agrees on (SPEC 7.5): the Tendermint machine wired to the
ledger and the peers.

``consensus.Consensus`` decides; this module gives it what it needs and carries out
what it asks, in its order: the record of its position and locks is written durably
*before* a message it signed leaves, blocks come from ``Ledger.propose_block`` (with
the finality certificates of their transactions) and are checked by
``Ledger.validate_proposal``, and a decision is committed by ``Ledger.accept_block``
through the node's group commit, with the q signed precommits as its commit.

Heights start ``BLOCK_INTERVAL`` after the previous block's timestamp (no drift);
with ``BLOCK_INTERVAL=0`` (regtest) only when asked (``generate``, or a peer's
``StartHeight``).  A node behind its peers (a ``Status``, or messages of a later
height) fetches blocks with ``GetBlocks`` and applies each only if its commit holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from nacl.signing import SigningKey

from timefast import consensus, crashpoints, wire
from timefast.commits import GroupCommit
from timefast.consensus import Consensus, Decision, Output, Record, Timeout, Timeouts
from timefast.ledger import Ledger, LedgerError

log = logging.getLogger("timefast.consensus")

MAX_BLOCKS_PER_REQUEST = 500
START_MARGIN = 0.02  # seconds
KEPT_BLOCKS = 64  # proposed blocks kept per height (an honest proposer sends one a round)
# Signed consensus messages of others kept (oldest dropped first) to store as evidence
# when the machine finds two of one validator for one (height, round, step).
KEPT_SIGNED = 4096


@dataclass
class _Generate:
    """A ``generate(k)`` in progress: the hashes committed so far."""

    want: int
    hashes: list[str] = field(default_factory=list)
    done: asyncio.Future[list[str]] | None = None


class BlockRounds:
    """One masternode's part in agreeing on blocks (see the module docstring).

    ``send(msg, but)`` broadcasts a peer message; ``send_to(peer, msg)`` answers one
    peer.  A node outside the voting set runs no machine: it only follows committed
    blocks (catch-up)."""

    def __init__(self, ledger: Ledger, commits: GroupCommit, key: SigningKey, *,
                 block_interval: float, timeouts: Timeouts,
                 send: Callable[[wire.Message, Any], None],
                 send_to: Callable[[Any, wire.Message], None],
                 misbehaved: Callable[[Any, str], None],
                 max_message_bytes: int = wire.MAX_P2P_MESSAGE_BYTES) -> None:
        self.ledger = ledger
        self.commits = commits
        self.key = key
        self.me = ledger.public_key
        self.network = ledger.network_id
        self.block_interval = block_interval
        self.send = send
        self.send_to = send_to
        self.misbehaved = misbehaved
        self.max_message_bytes = max_message_bytes
        self.machine: Consensus | None = None
        if ledger.voting:
            self.machine = Consensus(ledger.masternodes, self.me, get_value=self._get_value,
                                     valid=self._valid, timeouts=timeouts)
        # Blocks proposed at the current height, by hash, with their certificates.
        self.blocks: dict[str, tuple[wire.Block, tuple[wire.Votes, ...]]] = {}
        # Signatures of precommits seen, for the commit of a decision.
        self.signatures: dict[tuple[int, int, str, str | None], str] = {}
        self.own: list[wire.Message] = []  # own signed messages of the current height
        self.seen: set[tuple[Any, ...]] = set()  # consensus messages relayed already
        # (kind, height, round, signer, block hash) -> the signed message as evidence
        # keeps it (a proposal without its block).
        self.signed: dict[tuple[str, int, int, str, str | None], bytes] = {}
        self.refused_blocks = 0
        self.evidence = 0
        self._timers: list[asyncio.TimerHandle] = []
        self._next_height: asyncio.TimerHandle | None = None
        self._pending_decision: Decision | None = None
        self._committing = False
        self._asked: dict[Any, float] = {}  # peer -> when blocks were last asked of it
        self._generate: _Generate | None = None
        self._closed = False

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Resume the last signed position (after a restart), or plan the next height."""
        if self.machine is None:
            return
        record = self.ledger.privval.restore()
        if record is not None and record.height == self.ledger.height + 1:
            log.info("consensus resumes height %d round %d", record.height, record.round)
            self._apply(self.machine.restore(record))
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
            self.send(wire.StartHeight(height), None)
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        self.blocks = {h: e for h, e in self.blocks.items() if e[0].height == height}
        self.own.clear()
        self.seen = {k for k in self.seen if k[1] >= height}
        self.signatures = {k: v for k, v in self.signatures.items() if k[0] >= height}
        self.signed = {k: v for k, v in self.signed.items() if k[1] >= height}
        self._pending_decision = None
        self._apply(m.start_height(height))

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
        return True

    def _apply(self, out: Output) -> None:
        """Carry out an Output in its order: persist, send, schedule, decide."""
        if out.persist is not None:
            self._persist(out.persist)
        for m in out.messages:
            if (out.persist is not None and isinstance(m, consensus.Precommit)
                    and m.block_hash is not None and out.persist.precommit == m):
                # The lock just made durable, its precommit not yet sent (a restored
                # one, sent again after a restart, is not this point).
                crashpoints.reached("precommit")
            signed = self._sign(m)
            if signed is not None:
                self.own.append(signed)
                self.send(signed, None)
        loop = asyncio.get_running_loop()
        for t in out.timeouts:
            self._timers.append(loop.call_later(t.seconds, self._timeout, t))
        self._timers = [t for t in self._timers if not t.cancelled()]
        for e in out.evidence:
            self.evidence += 1
            log.warning("consensus equivocation by %s at height %d round %d",
                        consensus.sender_of(e.first)[:16], e.first.height, e.first.round)
            self._keep_evidence(e)
        if out.decision is not None:
            self._decide(out.decision)

    def _keep_evidence(self, e: consensus.Evidence) -> None:
        """Store both signed messages of an equivocation (``masternodelist`` counts
        it, and it outlives a restart), when both are still at hand."""
        kind = {consensus.Proposal: "proposal", consensus.Prevote: "prevote",
                consensus.Precommit: "precommit"}[type(e.first)]
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

    def _keep_signed(self, kind: str, height: int, round_: int, signer: str,
                     block_hash: str | None, body: dict[str, Any]) -> None:
        key = (kind, height, round_, signer, block_hash)
        if key in self.signed:
            return
        if len(self.signed) >= KEPT_SIGNED:
            del self.signed[next(iter(self.signed))]
        self.signed[key] = orjson.dumps(body)

    def _persist(self, record: Record) -> None:
        # Synced to disk before anything signed leaves:
        # after a restart the same messages go out again, never others (SPEC 7.5).
        self.ledger.privval.persist(record)

    def _sign(self, m: consensus.Message) -> wire.Message | None:
        if isinstance(m, consensus.Proposal):
            entry = self.blocks.get(m.block_hash)
            if entry is None:
                log.error("own proposal of %s without its block", m.block_hash[:16])
                return None
            block, certs = entry
            return self.ledger.privval.sign(m, block, certs)
        signed = self.ledger.privval.sign(m)
        if isinstance(signed, wire.Precommit):
            self.signatures[(m.height, m.round, self.me, m.block_hash)] = signed.signature
        return signed

    def _timeout(self, t: Timeout) -> None:
        if self.machine is not None and not self._closed:
            self._apply(self.machine.on_timeout(t.kind, t.height, t.round))

    def _decide(self, d: Decision) -> None:
        entry = self.blocks.get(d.block_hash)
        if entry is None:
            # Decided without the block (its proposal missed): peers that committed
            # it hand it over by GetBlocks.
            self._pending_decision = d
            self.send(wire.GetBlocks(d.height, 1), None)
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
        self.send(wire.Status(led.height, led.tip), None)
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        g = self._generate
        if g is not None:
            g.hashes.append(led.tip)
            if len(g.hashes) >= g.want:
                self._generate = None
                if g.done is not None and not g.done.done():
                    g.done.set_result(g.hashes)
        self._plan_height()

    # -- what peers send -------------------------------------------------------------------

    def on_message(self, peer: Any, msg: wire.Message) -> None:
        """A consensus or block message from an authenticated peer."""
        if isinstance(msg, wire.Proposal):
            self._take_proposal(peer, msg)
        elif isinstance(msg, wire.Prevote | wire.Precommit):
            self._take_vote(peer, msg)
        elif isinstance(msg, wire.GetBlocks):
            self._answer_blocks(peer, msg)
        elif isinstance(msg, wire.Blocks):
            self._take_blocks(peer, msg)
        elif isinstance(msg, wire.StartHeight):
            if self.ledger.network == "regtest" and msg.height == self.ledger.height + 1:
                self.start_height(msg.height)
        elif isinstance(msg, wire.Status) and msg.height > self.ledger.height:
            self._ask_blocks(peer)

    def peer_up(self, peer: Any, height: int) -> None:
        """A peer authenticated: it gets this height's own messages; a peer ahead is
        asked for blocks."""
        for m in self.own:
            self.send_to(peer, m)
        if height > self.ledger.height:
            self._ask_blocks(peer)

    def _relay_once(self, key: tuple[Any, ...], peer: Any, msg: wire.Message) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        self.send(msg, peer)
        return True

    def _skip(self, peer: Any, height: int) -> bool:
        """Whether a message of ``height`` is of no use now.  One of the next height
        is kept by the machine until that height starts; one further ahead means
        this node is behind: blocks are asked for."""
        if height <= self.ledger.height:
            return True
        if height > self.ledger.height + 1:
            self._ask_blocks(peer)
            return height > self.ledger.height + 2
        if (self.block_interval == 0 and self.ledger.network == "regtest"
                and self.machine is not None
                and (self.machine.height is None or self.machine.height < height)):
            # regtest without a block timer: a peer started this height (generate).
            self.start_height(height)
        return False

    def _take_proposal(self, peer: Any, p: wire.Proposal) -> None:
        m = self.machine
        if m is None or self._skip(peer, p.height):
            return
        proposer = m.proposer(p.height, p.round)
        try:
            wire.verify_proposal(p, self.network, proposer)
        except wire.BadSignature as e:
            self.misbehaved(peer, str(e))
            return
        key = ("P", p.height, p.round, p.block.hash, p.signature)
        if not self._relay_once(key, peer, p):
            return
        self._keep_signed("proposal", p.height, p.round, proposer, p.block.hash, {
            "type": p.TYPE, "height": p.height, "round": p.round,
            "valid_round": p.valid_round, "block_hash": p.block.hash,
            "proposer": proposer, "signature": p.signature})
        if p.block.hash not in self.blocks and len(self.blocks) < KEPT_BLOCKS:
            self.blocks[p.block.hash] = (p.block, tuple(p.certificates))
        self._apply(m.on_message(consensus.Proposal(p.height, p.round, p.valid_round,
                                                     p.block.hash, proposer)))
        if self._pending_decision is not None \
                and self._pending_decision.block_hash == p.block.hash:
            d, self._pending_decision = self._pending_decision, None
            self._decide(d)

    def _take_vote(self, peer: Any, v: wire.Prevote | wire.Precommit) -> None:
        m = self.machine
        if v.voter not in self.ledger.masternodes:
            self.misbehaved(peer, f"{v.TYPE} by {v.voter[:16]}, not a masternode")
            return
        if m is None or self._skip(peer, v.height):
            return
        try:
            wire.verify_bft(v, self.network)
        except wire.BadSignature as e:
            self.misbehaved(peer, str(e))
            return
        key = (v.TYPE, v.height, v.round, v.voter, v.block_hash, v.signature)
        if not self._relay_once(key, peer, v):
            return
        self._keep_signed(v.TYPE.lower(), v.height, v.round, v.voter, v.block_hash,
                          {"type": v.TYPE, **v.to_data()})
        if isinstance(v, wire.Precommit):
            self.signatures.setdefault((v.height, v.round, v.voter, v.block_hash),
                                       v.signature)
            self._apply(m.on_message(consensus.Precommit(v.height, v.round, v.block_hash,
                                                          v.voter)))
        else:
            self._apply(m.on_message(consensus.Prevote(v.height, v.round, v.block_hash,
                                                        v.voter)))

    # -- catch-up ------------------------------------------------------------------------

    def _ask_blocks(self, peer: Any) -> None:
        now = time.monotonic()
        if now - self._asked.get(peer, 0.0) < 1.0:
            return
        self._asked[peer] = now
        self.send_to(peer, wire.GetBlocks(self.ledger.height + 1, MAX_BLOCKS_PER_REQUEST))

    def _answer_blocks(self, peer: Any, req: wire.GetBlocks) -> None:
        out: list[wire.Block] = []
        size = 0
        last = min(self.ledger.height, req.from_height + min(req.count,
                                                             MAX_BLOCKS_PER_REQUEST) - 1)
        for h in range(req.from_height, last + 1):
            b = self.ledger.block_at(h)
            size += len(orjson.dumps(b.to_data()))
            if out and size > self.max_message_bytes // 2:
                break
            out.append(b)
        if out:
            self.send_to(peer, wire.Blocks(tuple(out)))

    def _take_blocks(self, peer: Any, msg: wire.Blocks) -> None:
        blocks = [b for b in msg.blocks if b.height > self.ledger.height]
        if not blocks:
            return

        def work() -> tuple[int, LedgerError | None]:
            # Blocks applied before a refused one stay committed: the count of them
            # comes back with the refusal, so that the node moves on past them.
            n = 0
            for b in blocks:
                if b.height != self.ledger.height + 1:
                    break
                try:
                    self.ledger.accept_block(replace(b, commit=b.commit or ()))
                except LedgerError as e:
                    return n, e
                n += 1
            return n, None

        def done(result: Any, err: BaseException | None) -> None:
            if err is not None:
                log.error("could not apply fetched blocks: %s", err)
                return
            n, refused = result
            if refused is not None:
                self.refused_blocks += 1
                self.misbehaved(peer, f"block refused: {refused.message}")
            if n:
                log.info("caught up %d block(s) to height %d", n, self.ledger.height)
                self._asked.pop(peer, None)
                m = self.machine
                if m is not None and m.height is not None and m.height <= self.ledger.height:
                    for t in self._timers:
                        t.cancel()
                    self._timers.clear()
                self._after_block(self.ledger.tip)
                if refused is None and len(blocks) >= MAX_BLOCKS_PER_REQUEST:
                    self._ask_blocks(peer)
        self.commits.submit(work, done)

    def generate_cancel(self) -> None:
        """Give up a ``generate`` in progress (its caller timed out)."""
        g, self._generate = self._generate, None
        if g is not None and g.done is not None and not g.done.done():
            g.done.cancel()

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

