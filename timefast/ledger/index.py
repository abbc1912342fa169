"""The address index: each address's transactions, numbered ``k`` = 1, 2, ... in the
order this node first stored them (``history`` pages by ``k``, so a page never shifts
when one of its transactions confirms)."""

from __future__ import annotations

import logging
import time

from timefast.ledger.work import Step
from timefast.tables import HistoryRow, Rows, Tables
from timefast.transaction import Transaction

log = logging.getLogger("timefast")

# Addresses whose history count is kept in memory (cleared when full).
HISTORY_CACHE = 100_000


class AddressIndex:
    """Stages history rows and keeps each address's last ``k`` (a cache of the
    database's, with the open batch's ``staged`` rows above it)."""

    def __init__(self, tables: Tables, staged: Rows) -> None:
        self.tables = tables
        self.staged = staged
        # address -> its highest history ``k`` in the database.
        self._cache: dict[str, int] = {}

    def clear(self) -> None:
        """Forget the cache (start-up, or a failed batch)."""
        self._cache.clear()

    def add(self, s: Step, tx: Transaction, spent: list[tuple[str, int]]) -> None:
        """Stage ``tx`` in the history of every address it pays or spends from."""
        flows: dict[str, list[int]] = {}
        for o in tx.outputs:
            flows.setdefault(o.address, [0, 0])[0] += o.amount
        for address, amount in spent:
            flows.setdefault(address, [0, 0])[1] += amount
        for address, (received, sent) in flows.items():
            k = (s.rows.history_last.get(address) or self.staged.history_last.get(address)
                 or self._last(address)) + 1
            s.rows.add_history(HistoryRow(address, k, tx.txid, received, sent))

    def _last(self, address: str) -> int:
        k = self._cache.get(address)
        if k is None:
            if len(self._cache) >= HISTORY_CACHE:
                self._cache.clear()
            k = self._cache[address] = self.tables.history_count(address)
        return k

    def written(self, counts: dict[str, int]) -> None:
        """History counts just written: the cache learns those it holds."""
        cache = self._cache
        for address, k in counts.items():
            if address in cache:
                cache[address] = k

    def build(self) -> None:
        """Index the transactions of a database from before the address history."""
        started = time.monotonic()
        log.info("📚 building the address history of the stored transactions (once)")
        n = self.tables.build_history(
            lambda done, total: log.info("📚 address history: %d of %d transactions",
                                         done, total))
        log.info("📚 address history built: %d transactions in %.1f s", n,
                 time.monotonic() - started)
