"""Catching up on blocks (SPEC 7.5): the ``GetBlocks``, ``Blocks`` and ``Status``
reactor.

A node behind a peer (its ``Hello`` or ``Status`` says a greater height, or the
gossip reactor sees messages of a later height) asks it for the blocks after its
tip, and applies each fetched block only if its commit holds (``accept_block``);
a refused block ends the link as misbehaviour.  Peers asking get stored blocks
with their commits, up to half a message's size, within the switch's request budgets
(SPEC 7.3): each block is encoded once, that encoding both measures it and goes into
the answer, and the answer is shared with every peer asking the same range.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from timefast import wire
from timefast.commits import GroupCommit
from timefast.ledger import Ledger, LedgerError
from timefast.p2p.switch import Peer, Reactor, Switch

log = logging.getLogger("timefast.consensus")

MAX_BLOCKS_PER_REQUEST = 500
ASK_AGAIN = 1.0  # seconds before the same peer is asked for blocks again


def blocks_frame(blocks: list[bytes]) -> bytes:
    """The frame ``wire.encode(wire.Blocks(...))`` makes, from blocks each encoded
    already (``orjson.dumps(block.to_data())``): the same bytes, without encoding
    any block twice."""
    return b'{"type":"Blocks","data":{"blocks":[' + b",".join(blocks) + b"]}}"


class BlockSyncReactor(Reactor):
    """Fetches blocks from peers ahead and serves stored ones.  ``fetched()`` is
    called once fetched blocks were committed (the round driver goes on)."""

    MESSAGES: ClassVar[tuple[type[wire.Message], ...]] = (
        wire.GetBlocks, wire.Blocks, wire.Status)

    def __init__(self, ledger: Ledger, commits: GroupCommit, switch: Switch,
                 fetched: Callable[[], None]) -> None:
        self.ledger = ledger
        self.commits = commits
        self.switch = switch
        self.fetched = fetched
        self.refused_blocks = 0
        self._asked: dict[Peer, float] = {}  # peer -> when blocks were last asked of it

    def peer_up(self, peer: Peer, hello: wire.Hello) -> None:
        """A peer ahead is asked for blocks."""
        if hello.height > self.ledger.height:
            self.ask_blocks(peer)

    def peer_down(self, peer: Peer) -> None:
        """Forget when a gone peer was asked."""
        self._asked.pop(peer, None)

    def receive(self, peer: Peer, msg: wire.Message) -> None:
        """A ``GetBlocks``, ``Blocks`` or ``Status`` from a peer."""
        if isinstance(msg, wire.GetBlocks):
            self._answer_blocks(peer, msg)
        elif isinstance(msg, wire.Blocks):
            self._take_blocks(peer, msg)
        elif isinstance(msg, wire.Status):
            if msg.height > self.ledger.height:
                self.ask_blocks(peer)
        else:
            self.refuse(msg)

    def ask_blocks(self, peer: Peer) -> None:
        """Ask ``peer`` for the blocks after the tip (at most once a second; never a
        peer whose link ended, which would otherwise be remembered here)."""
        if not peer.link.authenticated:
            return
        now = time.monotonic()
        if now - self._asked.get(peer, 0.0) < ASK_AGAIN:
            return
        self._asked[peer] = now
        self.switch.send_to(peer, wire.GetBlocks(self.ledger.height + 1,
                                                 MAX_BLOCKS_PER_REQUEST))

    def _answer_blocks(self, peer: Peer, req: wire.GetBlocks) -> None:
        last = min(self.ledger.height, req.from_height + min(req.count,
                                                             MAX_BLOCKS_PER_REQUEST) - 1)
        if last < req.from_height:
            return
        # Stored blocks never change: the range asked and the tip (which bounds it)
        # key the answer.
        self.switch.answer(peer, "blocks", (req.from_height, last), self.ledger.height,
                           lambda: self._encode_blocks(req.from_height, last))

    def _encode_blocks(self, first: int, last: int) -> bytes:
        """The ``Blocks`` frame of the stored blocks from ``first`` on (at most to
        ``last``) within half a message; each block encoded once."""
        parts: list[bytes] = []
        size = 0
        for h in range(first, last + 1):
            part = orjson.dumps(self.ledger.block_at(h).to_data())
            size += len(part) + 1
            if parts and size > self.switch.max_message_bytes // 2:
                break
            parts.append(part)
        return blocks_frame(parts)

    def _take_blocks(self, peer: Peer, msg: wire.Blocks) -> None:
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
                    self.ledger.accept_block(b)
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
                self.switch.misbehaved(peer, f"block refused: {refused.message}")
            if n:
                log.info("caught up %d block(s) to height %d", n, self.ledger.height)
                self._asked.pop(peer, None)
                self.fetched()
                if refused is None and len(blocks) >= MAX_BLOCKS_PER_REQUEST:
                    self.ask_blocks(peer)
        self.commits.submit(work, done)
