"""The rows a ledger batch writes, gathered in memory and written at its commit.

Each ledger step stages the rows it changes; when the step succeeds they are merged
here, and when the batch commits they go to SQLite with one ``executemany`` per
statement instead of several ``execute`` calls per transaction.  A row that changes
several times in a batch (a UTXO locked, then finalized) is written once, in its
last state.  A step that fails merges nothing, so it needs no savepoint.

Invariant: for every key staged here, the staged row is newer than the database's;
for any other key the database is current.  Keyed reads (``tx_status``, ``utxo``,
``has_vote``) answer from here first; other reads flush first
(``Ledger._flush_staged``).
"""

from __future__ import annotations

from typing import Any

import orjson

Outpoint = tuple[str, int]

# Where status, finalized_seq, reason and block_height sit in a new transaction row
# (the txs columns in INSERT order) and in a change to a stored one.
_NEW_TX_SLOTS = (2, 4, 5, 7)
_CHANGE_SLOTS = (0, 1, 2, 3)


class Writes:
    """Staged rows of one batch (see the module docstring)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every staged row (they were written, or the batch failed)."""
        # New transaction rows (INSERT OR REPLACE), full rows keyed by txid.
        self.new_txs: dict[str, list[Any]] = {}
        # Changes to transaction rows already stored: [status, finalized_seq,
        # reason, block_height], None meaning "keep the stored value".
        self.tx_changes: dict[str, list[Any]] = {}
        # UTXO rows: [address, amount, state, spending_txid, votes, block_height].
        self.new_utxos: dict[Outpoint, list[Any]] = {}
        self.changed_utxos: dict[Outpoint, list[Any]] = {}
        self.votes: dict[tuple[str, str], tuple[str, str, int, str]] = {}
        self.cleared_votes: set[str] = set()
        self.blocks: list[tuple[Any, ...]] = []
        # (seq, type, addresses, stored payload, tx_ref, tx_at): see ledger._Step.event
        self.events: list[tuple[int, str, bytes | None, bytes, str | None, int | None]] = []

    def __bool__(self) -> bool:
        return bool(self.new_txs or self.tx_changes or self.new_utxos or self.changed_utxos
                    or self.votes or self.cleared_votes or self.blocks or self.events)

    # -- staging ---------------------------------------------------------------------

    def add_tx(self, row: list[Any]) -> None:
        """A transaction row, replacing any stored one (a rejected tx tried again)."""
        self.new_txs[row[0]] = row
        self.tx_changes.pop(row[0], None)

    def set_tx(self, txid: str, status: str, finalized_seq: int | None = None,
               reason: str | None = None, block_height: int | None = None) -> None:
        """Change a transaction's status and, where given, its other fields."""
        row = self.new_txs.get(txid)
        slots = _NEW_TX_SLOTS
        if row is None:
            row = self.tx_changes.setdefault(txid, [None, None, None, None])
            slots = _CHANGE_SLOTS
        row[slots[0]] = status
        for i, v in zip(slots[1:], (finalized_seq, reason, block_height), strict=True):
            if v is not None:
                row[i] = v

    def put_utxo(self, op: Outpoint, row: list[Any], new: bool) -> None:
        """A UTXO's latest row; ``new`` when it was created by this batch's steps."""
        if new or op in self.new_utxos:
            self.new_utxos[op] = row
        else:
            self.changed_utxos[op] = row

    def add_vote(self, txid: str, voter: str, approve: bool, signature: str) -> None:
        """One masternode's vote."""
        self.votes[(txid, voter)] = (txid, voter, int(approve), signature)

    def clear_votes(self, txid: str) -> None:
        """Forget every vote on ``txid`` (stored or staged): it is being tried again."""
        self.cleared_votes.add(txid)
        for key in [k for k in self.votes if k[0] == txid]:
            del self.votes[key]

    # -- keyed reads -----------------------------------------------------------------

    def tx_status(self, txid: str) -> str | None:
        """The staged status of ``txid``, or None when the database is current."""
        row = self.new_txs.get(txid)
        if row is not None:
            return str(row[2])
        change = self.tx_changes.get(txid)
        return None if change is None else str(change[0])

    def utxo(self, op: Outpoint) -> list[Any] | None:
        """The staged row of ``op``, or None when the database is current."""
        return self.new_utxos.get(op) or self.changed_utxos.get(op)

    def has_vote(self, txid: str, voter: str) -> bool | None:
        """True/False when the staged rows decide it, None to ask the database."""
        if (txid, voter) in self.votes:
            return True
        if txid in self.cleared_votes:
            return False
        return None

    # -- the write -------------------------------------------------------------------

    def flush(self, db: Any) -> None:
        """Write every staged row inside the caller's open transaction, then forget them."""
        if self.cleared_votes:
            db.executemany("DELETE FROM votes WHERE txid=?", [(t,) for t in self.cleared_votes])
            db.executemany("UPDATE txs SET inline_votes=NULL WHERE txid=?",
                           [(t,) for t in self.cleared_votes if t not in self.new_txs])
        # A vote cast in the batch that writes its transaction's row (the node's own
        # vote always is) goes into that row: the votes table, keyed by random
        # txids, would dirty a page of its own for it.
        inline: dict[str, list[tuple[str, int, str]]] = {}
        table: list[tuple[str, str, int, str]] = []
        for vote in self.votes.values():
            if vote[0] in self.new_txs:
                inline.setdefault(vote[0], []).append(vote[1:])
            else:
                table.append(vote)
        if self.new_txs:
            db.executemany("INSERT OR REPLACE INTO txs (txid, raw, status, accepted_at,"
                           " finalized_seq, reason, addresses, block_height, inline_votes)"
                           " VALUES (?,?,?,?,?,?,?,?,?)",
                           [(*row, orjson.dumps(inline[t]) if t in inline else None)
                            for t, row in self.new_txs.items()])
        if self.tx_changes:
            db.executemany("UPDATE txs SET status=?, finalized_seq=COALESCE(?, finalized_seq),"
                           " reason=COALESCE(?, reason),"
                           " block_height=COALESCE(?, block_height) WHERE txid=?",
                           [(*c, t) for t, c in self.tx_changes.items()])
        if self.new_utxos:
            db.executemany("INSERT INTO utxos (txid, vout, address, amount, state,"
                           " spending_txid, votes, block_height) VALUES (?,?,?,?,?,?,?,?)",
                           [(*op, *r) for op, r in self.new_utxos.items()])
        if self.changed_utxos:
            db.executemany("UPDATE utxos SET state=?, spending_txid=?, votes=?, block_height=?"
                           " WHERE txid=? AND vout=?",
                           [(r[2], r[3], r[4], r[5], *op) for op, r in self.changed_utxos.items()])
        if table:
            db.executemany("INSERT INTO votes VALUES (?,?,?,?)", table)
        if self.blocks:
            db.executemany("INSERT INTO blocks VALUES (?,?,?,?,?,?)", self.blocks)
        if self.events:
            db.executemany("INSERT INTO events (seq, type, addresses, payload, tx_ref, tx_at)"
                           " VALUES (?,?,?,?,?,?)", self.events)
        self.clear()
