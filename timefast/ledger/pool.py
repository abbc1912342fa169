"""The pool of in-flight records: transactions awaiting quorum or a block, the live
UTXO set (in the compiled core) and the tip they build on.

Every part of the ledger reads this state; only a committed step changes it (the
``after`` functions of ``work.Step``), so what it holds is always what the
database holds, or will once the open group commit ends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from timefast import _core
from timefast.errors import UnknownOutpoint
from timefast.rules import ZERO_HASH
from timefast.tables import Coin, Rows, Tables
from timefast.transaction import Transaction

# Rejected transactions passed on to peers that ask: at most this many, of at most
# this many bytes in all, oldest dropped first (SPEC 7.3 Budgets).
RECENT_REJECTED = 10_000
RECENT_REJECTED_BYTES = 16 << 20


@dataclass(slots=True)
class Pending:
    """A transaction accepted and awaiting quorum, with its tally."""

    tx: Transaction
    raw: bytes
    accepted_at: float
    addresses: tuple[str, ...]
    approvals: set[str] = field(default_factory=set)
    rejections: set[str] = field(default_factory=set)
    decided: bool = False  # finalized or rejected by a step that has not committed yet
    # Whether it holds the lock on its inputs: a relayed spend of coins another
    # pending transaction locked is stored and voted on, but locks nothing (SPEC 7.4).
    holds: bool = True
    asked_at: float = 0.0  # when peers were last asked for its votes


@dataclass(slots=True)
class Final:
    """A finalized transaction awaiting its block."""

    tx: Transaction
    raw: bytes
    addresses: tuple[str, ...]


CoinView = tuple[str, int, str, "str | None"]  # (address, amount, state, spender)


class Pool:
    """In-flight transactions, the live UTXOs and the tip (see the module docstring).

    ``staged``: the open group commit's rows (``work.Work`` flushes them), which
    keyed reads consult before the database.
    """

    def __init__(self, staged: Rows, tables: Tables) -> None:
        self.staged = staged
        self.tables = tables
        self.utxos = _core.UtxoTable()
        self.pending: dict[str, Pending] = {}
        self.unconfirmed: dict[str, Final] = {}
        # Pending transactions spending each outpoint (more than one: a conflict).
        self.spenders: dict[tuple[str, int], set[str]] = {}
        # Own approvals of pending transactions, per outpoint (approve once).
        self.approved: dict[tuple[str, int], str] = {}
        self.recent_rejected: OrderedDict[str, bytes] = OrderedDict()
        self.recent_rejected_bytes = 0
        self.height = -1
        self.tip = ZERO_HASH
        self.tip_timestamp = 0
        self.outcomes = {"accepted": 0, "finalized": 0, "confirmed": 0, "rejected": 0,
                         "invalid": 0, "conflict": 0}

    def clear(self) -> None:
        """Forget everything (start-up reads it all again)."""
        self.utxos = _core.UtxoTable()
        self.pending.clear()
        self.unconfirmed.clear()
        self.spenders.clear()
        self.approved.clear()
        self.recent_rejected.clear()
        self.recent_rejected_bytes = 0

    def status_of(self, txid: str) -> str | None:
        """pending, finalized, confirmed, rejected, or None for an unknown txid."""
        if txid in self.pending:
            return "pending"
        if txid in self.unconfirmed:
            return "finalized"
        staged = self.staged.tx_status(txid)
        if staged is not None:
            return staged
        return self.tables.tx_status(txid)

    def stored_utxo(self, op: tuple[str, int]) -> Coin | None:
        """A UTXO the core no longer holds (Confirmed): staged row or database row."""
        return self.staged.utxo(op) or self.tables.utxo(op)

    def coin(self, txid: str, vout: int) -> CoinView | None:
        """A coin for ``rules.check_transaction``: live, or stored once Confirmed."""
        try:
            address, amount, state, spender, _, _ = self.utxos.get(txid, vout)
        except UnknownOutpoint:
            spent = self.stored_utxo((txid, vout))
            if spent is None:
                return None
            return spent.address, spent.amount, spent.state, spent.spender
        return address, amount, state, spender

    def add_pending(self, p: Pending) -> None:
        """``p`` was accepted (its step committed)."""
        txid = p.tx.txid
        self.pending[txid] = p
        for op in p.tx.outpoints():
            self.spenders.setdefault(op, set()).add(txid)

    def drop_pending(self, txid: str) -> None:
        """``txid`` was decided (its step committed): it leaves the pending set."""
        p = self.pending.pop(txid, None)
        if p is None:
            return
        for op in p.tx.outpoints():
            held = self.spenders.get(op)
            if held is not None:
                held.discard(txid)
                if not held:
                    del self.spenders[op]
            if self.approved.get(op) == txid:
                # Decided: the coin is spent for good, or free again (a rejection
                # certificate releases the approval, SPEC 7.4).
                del self.approved[op]

    def remember_rejected(self, txid: str, raw: bytes) -> None:
        """Recent rejections go to peers that ask (``votes.pending_for``), so that a
        node that was away ends with the same status; the most recent
        ``RECENT_REJECTED`` of them, of at most ``RECENT_REJECTED_BYTES`` in all."""
        old = self.recent_rejected.pop(txid, None)
        if old is not None:
            self.recent_rejected_bytes -= len(old)
        self.recent_rejected[txid] = raw
        self.recent_rejected_bytes += len(raw)
        while (len(self.recent_rejected) > RECENT_REJECTED
               or self.recent_rejected_bytes > RECENT_REJECTED_BYTES):
            _, dropped = self.recent_rejected.popitem(last=False)
            self.recent_rejected_bytes -= len(dropped)

    def count(self, outcome: str, n: int = 1) -> None:
        """Count transactions by outcome (``outcome_counts``)."""
        self.outcomes[outcome] += n
