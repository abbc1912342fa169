"""Group commit: ledger work queued during one loop turn shares one database commit.

Wallet ``SubmitTransaction`` messages and RPC requests queue their work here instead
of committing one by one.  Once per loop turn the queue runs inside
``Ledger.batch()``; only after that commit are the results handed back (and the
events announced), so nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from timefast.crypto import verify_batch
from timefast.ledger import Ledger, StorageError
from timefast.transaction import Transaction

log = logging.getLogger("timefast.commits")

# A node with a commit interval pauses this many times as long as its last commit's
# work took before the next (so commits take at most a 1/(1 + BUSY_FACTOR) share of the
# loop while work keeps coming).
BUSY_FACTOR = 4.0
MAX_BATCH = 1024  # work items per commit by default; the rest wait for the next turn
# Signatures in a batch worth checking on the checker thread: fewer are checked
# inline, where the hand-off would cost more than it saves.
CHECK_AHEAD_MIN = 8

Done = Callable[[Any, BaseException | None], None]
_Item = tuple[Callable[[], Any], Done, "Transaction | None"]


class GroupCommit:
    """A queue of ledger work run in one commit per loop turn.

    Work that submits a transaction has its signatures checked first, on a thread
    of their own (the check releases the GIL), in groups: while the loop commits
    one group's batch, the checker works on the next.  The loop is the node's
    busiest thread, and this takes the costliest single step of a payment off it.
    Work runs in the order it was submitted, checked or not.
    """

    def __init__(self, ledger: Ledger, loop: asyncio.AbstractEventLoop,
                 max_batch: int = MAX_BATCH, min_interval: float = 0.0) -> None:
        """``min_interval``: at most this many seconds between the starts of two
        commits; work that comes sooner waits and joins the next one.  The wait
        follows the load: ``BUSY_FACTOR`` times as long as the last commit's work
        took, so a quiet node commits at once and a busy one in larger batches.  A
        masternode of a network takes its work in small pieces (a transaction or a
        vote batch per frame from each peer): without it each piece would pay a
        whole commit."""
        self.ledger = ledger
        self.loop = loop
        self.max_batch = max_batch
        self.min_interval = min_interval
        self._last_run = 0.0
        self._wait = 0.0  # the pause before the next commit may start
        self.queue: list[_Item] = []    # submitted, signatures not yet checked
        self.ready: list[_Item] = []    # to run in the next batch, in order
        self.scheduled = False
        self.batches = 0
        self.checked_ahead = 0
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="timefast-verify")
        self._checking = False

    def submit(self, work: Callable[[], Any], done: Done,
               tx: Transaction | None = None) -> None:
        """Run ``work()`` in a coming batch; ``done(result, error)`` after its commit.

        ``error`` is what ``work`` raised, or ``StorageError`` when the batch could
        not be committed (then nothing of it was stored).  ``tx``: the transaction
        ``work`` submits, if any, whose signatures are then checked ahead.
        """
        self.queue.append((work, done, tx))
        self._kick()

    def close(self) -> None:
        """Stop the checker thread."""
        self._checker.shutdown(wait=True)

    def _kick(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            wait = self._last_run + self._wait - self.loop.time()
            if wait > 0:
                self.loop.call_later(wait, self.run)
            else:
                self.loop.call_soon(self.run)

    def run(self) -> None:
        """Send queued work to the checker, and run what is ready (once a turn)."""
        self.scheduled = False
        self._last_run = self.loop.time()
        if self.queue and not self._checking:
            group, self.queue = self.queue, []
            sigs = self.ledger.mempool.signature_items(tx for _, _, tx in group if tx is not None)
            if len(sigs) < CHECK_AHEAD_MIN:
                self.ready += group  # too few to be worth the hand-off
            else:
                self._check(group, sigs)
        while self.ready:
            n = self.max_batch
            items, self.ready = self.ready[:n], self.ready[n:]
            self._run_batch(items)
        if self.min_interval:
            took = self.loop.time() - self._last_run
            self._wait = min(self.min_interval, BUSY_FACTOR * took)
        # Every checked signature has been used (or its work refused): forget them.
        self.ledger.mempool.forget_checked()

    def _check(self, group: list[_Item], sigs: list[tuple[bytes, bytes, bytes]]) -> None:
        try:
            fut = self.loop.run_in_executor(self._checker, verify_batch, sigs)
        except RuntimeError:  # shut down: the ledger checks them itself
            self.ready += group
            return
        self._checking = True

        def checked(f: asyncio.Future[bytes]) -> None:
            self._checking = False
            if not f.cancelled() and f.exception() is None:
                self.ledger.mempool.checked(sigs, f.result())
                self.checked_ahead += len(sigs)
            self.ready += group
            self._kick()
        fut.add_done_callback(checked)

    def _run_batch(self, items: list[_Item]) -> None:
        results: list[tuple[Done, Any, BaseException | None]] = []
        try:
            with self.ledger.batch():
                for work, done, _ in items:
                    try:
                        results.append((done, work(), None))
                    except StorageError:
                        raise
                    except Exception as e:  # handed to its caller, not lost
                        results.append((done, None, e))
        except StorageError as e:
            log.error("group commit failed, %d request(s) refused: %s", len(items), e)
            for _, done, _ in items:
                done(None, e)
            return
        self.batches += 1
        for done, value, error in results:
            try:
                done(value, error)
            except Exception:  # one broken callback must not starve the rest
                log.exception("commit callback failed")
