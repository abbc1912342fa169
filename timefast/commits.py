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
from typing import Any

from timefast.ledger import Ledger
from timefast.storage import StorageError

log = logging.getLogger("timefast.commits")

MAX_BATCH = 1024  # work items per commit; the rest wait for the next turn

Done = Callable[[Any, BaseException | None], None]


class GroupCommit:
    """A queue of ledger work run in one commit per loop turn."""

    def __init__(self, ledger: Ledger, loop: asyncio.AbstractEventLoop) -> None:
        self.ledger = ledger
        self.loop = loop
        self.queue: list[tuple[Callable[[], Any], Done]] = []
        self.scheduled = False
        self.batches = 0

    def submit(self, work: Callable[[], Any], done: Done) -> None:
        """Run ``work()`` in the next batch; ``done(result, error)`` after its commit.

        ``error`` is what ``work`` raised, or ``StorageError`` when the batch could
        not be committed (then nothing of it was stored).
        """
        self.queue.append((work, done))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        """Run the queued work now (normally called once per loop turn)."""
        items, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
        self.scheduled = bool(self.queue)
        if self.scheduled:
            self.loop.call_soon(self.run)
        results: list[tuple[Done, Any, BaseException | None]] = []
        try:
            with self.ledger.batch():
                for work, done in items:
                    try:
                        results.append((done, work(), None))
                    except StorageError:
                        raise
                    except Exception as e:  # handed to its caller, not lost
                        results.append((done, None, e))
        except StorageError as e:
            log.error("group commit failed, %d request(s) refused: %s", len(items), e)
            for _, done in items:
                done(None, e)
            return
        self.batches += 1
        for done, value, error in results:
            try:
                done(value, error)
            except Exception:  # one broken callback must not starve the rest
                log.exception("commit callback failed")
