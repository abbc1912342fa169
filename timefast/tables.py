"""The ledger's tables: every SQL statement of the node, and rows as named types.

The ledger stages the rows a step changes in a ``Rows`` (one per step, merged into
the batch's own ``Rows`` when the step succeeds) and ``Tables.flush`` writes a
batch's rows with one ``executemany`` per statement.  A row that changes several
times in a batch (a UTXO locked, then finalized) is written once, in its last
state.  A step that fails merges nothing, so it needs no savepoint.

Invariant: for every key staged in the batch's ``Rows``, the staged row is newer
than the database's; for any other key the database is current.  Keyed reads
(``tx_status``, ``utxo``, ``has_vote``) answer from the staged rows first; other
reads write the staged rows out first (``ledger.work.Work.flush_staged``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from timefast.storage import Store

Outpoint = tuple[str, int]

SCHEMA = """
CREATE TABLE IF NOT EXISTS utxos (
    txid TEXT NOT NULL, vout INTEGER NOT NULL, address TEXT NOT NULL,
    amount INTEGER NOT NULL, state TEXT NOT NULL, spending_txid TEXT,
    votes INTEGER NOT NULL DEFAULT 0, block_height INTEGER,
    PRIMARY KEY (txid, vout)) WITHOUT ROWID;
DROP INDEX IF EXISTS utxos_by_address;
CREATE TABLE IF NOT EXISTS txs (
    txid TEXT PRIMARY KEY, raw BLOB NOT NULL, status TEXT NOT NULL,
    accepted_at REAL NOT NULL, finalized_seq INTEGER, block_height INTEGER,
    reason TEXT, addresses BLOB NOT NULL, inline_votes BLOB);
CREATE TABLE IF NOT EXISTS votes (
    txid TEXT NOT NULL, voter TEXT NOT NULL, approve INTEGER NOT NULL,
    signature TEXT NOT NULL, PRIMARY KEY (txid, voter)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prev_hash TEXT NOT NULL,
    timestamp INTEGER NOT NULL, txids BLOB NOT NULL, producer TEXT NOT NULL,
    commit_ BLOB, round INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS history (
    address TEXT NOT NULL, k INTEGER NOT NULL, txid TEXT NOT NULL,
    received INTEGER NOT NULL, sent INTEGER NOT NULL,
    PRIMARY KEY (address, k)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    voter TEXT NOT NULL, batch INTEGER NOT NULL, digest BLOB NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (voter, batch, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evidence (
    voter TEXT NOT NULL, kind TEXT NOT NULL, first BLOB NOT NULL, second BLOB NOT NULL,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, type TEXT NOT NULL, addresses BLOB, payload BLOB NOT NULL,
    tx_ref TEXT, tx_at INTEGER);
"""

# The meta key of the block-consensus record (SPEC 7.5).
CONSENSUS_RECORD = "consensus"

# Columns added since a table was first created: (table, column, declaration).
MIGRATIONS = [
    # An event's transaction, left out of its stored payload (journal.Journal.record).
    ("events", "tx_ref", "TEXT"),
    ("events", "tx_at", "INTEGER"),
    # Votes written with their transaction's row: [[voter, approve, signature], ...].
    ("txs", "inline_votes", "BLOB"),
    # A block's commit as the consensus layer gave it (opaque to the ledger).
    ("blocks", "commit_", "BLOB"),
    # The consensus round a block was made in (SPEC 7.5); blocks from before rounds
    # were all made at once by their producer: round 0.
    ("blocks", "round", "INTEGER NOT NULL DEFAULT 0"),
]


# -- rows -------------------------------------------------------------------------


@dataclass(slots=True)
class Coin:
    """A UTXO's row (the core's record of it, as the ledger stages it)."""

    address: str
    amount: int
    state: str
    spender: str | None
    votes: int
    height: int | None

    def values(self) -> tuple[str, int, str, str | None, int, int | None]:
        """The row's columns after its outpoint, in table order."""
        return (self.address, self.amount, self.state, self.spender, self.votes,
                self.height)


@dataclass(slots=True)
class TxRow:
    """A transaction's row; ``addresses`` is the JSON list of every address it touches."""

    txid: str
    raw: bytes
    status: str
    accepted_at: float
    finalized_seq: int | None
    reason: str | None
    addresses: bytes
    block_height: int | None


@dataclass(slots=True)
class TxChange:
    """A change to a stored transaction's row; None keeps the stored value."""

    status: str
    finalized_seq: int | None = None
    reason: str | None = None
    block_height: int | None = None


class Vote(NamedTuple):
    """One masternode's vote on one transaction, as stored."""

    txid: str
    voter: str
    approve: bool
    signature: str


class BlockRow(NamedTuple):
    """A block as stored: ``txids`` is its JSON list, ``commit`` the JSON list of its
    precommits ``[{voter, round, signature}]`` (None for a block stored before
    commits, and for genesis), ``round`` the round it was made in."""

    height: int
    hash: str
    prev_hash: str
    timestamp: int
    txids: bytes
    producer: str
    commit: bytes | None = None
    round: int = 0


class HistoryRow(NamedTuple):
    """The ``k``-th transaction that touched ``address`` (``k`` counts from 1 in the
    order this node first stored them): what it paid to it and took from it."""

    address: str
    k: int
    txid: str
    received: int
    sent: int


class EventRow(NamedTuple):
    """An event as stored: its transaction, if it embeds one, is named by ``tx_ref``
    and spliced back in at byte ``tx_at`` of ``payload`` (journal)."""

    seq: int
    type: str
    addresses: bytes | None
    payload: bytes
    tx_ref: str | None
    tx_at: int | None


class EvidenceRow(NamedTuple):
    """Two signed messages of one voter that contradict each other (SPEC 7.4, 7.5):
    ``kind`` is ``batch`` (two batches under one number), ``vote`` (approve and
    reject of one transaction) or ``conflict`` (approvals of two spends of one coin),
    and ``first`` and ``second`` are the signed batches; or ``proposal``, ``prevote``
    or ``precommit`` (two for one height, round and step), and they are the signed
    consensus messages (a proposal without its block: what its signature covers)."""

    voter: str
    kind: str
    first: bytes
    second: bytes
    at: float


# -- staging ----------------------------------------------------------------------


class Rows:
    """Rows staged by a step or a batch (see the module docstring)."""

    __slots__ = ("batches", "blocks", "changed_utxos", "cleared_votes", "events", "evidence",
                 "history", "history_last", "new_txs", "new_utxos", "tx_changes", "votes")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every staged row (they were written, or the batch failed)."""
        # New transaction rows (INSERT OR REPLACE), keyed by txid.
        self.new_txs: dict[str, TxRow] = {}
        self.tx_changes: dict[str, TxChange] = {}
        self.new_utxos: dict[Outpoint, Coin] = {}
        self.changed_utxos: dict[Outpoint, Coin] = {}
        self.votes: dict[tuple[str, str], Vote] = {}
        self.cleared_votes: set[str] = set()
        self.blocks: list[BlockRow] = []
        # Signed vote batches (SPEC 7.4): (voter, batch, digest) -> body.
        self.batches: dict[tuple[str, int, bytes], bytes] = {}
        self.evidence: list[EvidenceRow] = []
        self.events: list[EventRow] = []
        self.history: list[HistoryRow] = []
        # address -> the highest ``k`` staged for it here.
        self.history_last: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.new_txs or self.tx_changes or self.new_utxos or self.changed_utxos
                    or self.votes or self.cleared_votes or self.blocks or self.events
                    or self.history or self.batches or self.evidence)

    def add_history(self, row: HistoryRow) -> None:
        """One address's next transaction (``row.k`` one above its last)."""
        self.history.append(row)
        self.history_last[row.address] = row.k

    def add_tx(self, row: TxRow) -> None:
        """A transaction row, replacing any stored one (a rejected tx tried again)."""
        self.new_txs[row.txid] = row
        self.tx_changes.pop(row.txid, None)

    def set_tx(self, txid: str, change: TxChange) -> None:
        """Change a transaction's status and, where given, its other fields."""
        row = self.new_txs.get(txid)
        target: TxRow | TxChange | None = row
        if target is None:
            target = self.tx_changes.get(txid)
            if target is None:
                self.tx_changes[txid] = TxChange(change.status, change.finalized_seq,
                                                 change.reason, change.block_height)
                return
        target.status = change.status
        if change.finalized_seq is not None:
            target.finalized_seq = change.finalized_seq
        if change.reason is not None:
            target.reason = change.reason
        if change.block_height is not None:
            target.block_height = change.block_height

    def put_utxo(self, op: Outpoint, coin: Coin, new: bool) -> None:
        """A UTXO's latest row; ``new`` when it was created by these rows' steps."""
        if new or op in self.new_utxos:
            self.new_utxos[op] = coin
        else:
            self.changed_utxos[op] = coin

    def add_vote(self, vote: Vote) -> None:
        """One masternode's vote."""
        self.votes[(vote.txid, vote.voter)] = vote

    def clear_votes(self, txid: str) -> None:
        """Forget every vote on ``txid`` (stored or staged): it is being tried again."""
        self.cleared_votes.add(txid)
        for key in [k for k in self.votes if k[0] == txid]:
            del self.votes[key]

    def absorb(self, step: Rows) -> None:
        """Take a succeeded step's rows into this batch's, in the order they apply."""
        for txid in step.cleared_votes:
            self.clear_votes(txid)
        for row in step.new_txs.values():
            self.add_tx(row)
        for txid, change in step.tx_changes.items():
            self.set_tx(txid, change)
        for op, coin in step.new_utxos.items():
            self.put_utxo(op, coin, True)
        for op, coin in step.changed_utxos.items():
            self.put_utxo(op, coin, False)
        self.votes.update(step.votes)
        self.blocks.extend(step.blocks)
        self.batches.update(step.batches)
        self.evidence.extend(step.evidence)
        self.events.extend(step.events)
        self.history.extend(step.history)
        self.history_last.update(step.history_last)

    # -- keyed reads --------------------------------------------------------------

    def tx_status(self, txid: str) -> str | None:
        """The staged status of ``txid``, or None when the database is current."""
        row = self.new_txs.get(txid)
        if row is not None:
            return row.status
        change = self.tx_changes.get(txid)
        return None if change is None else change.status

    def utxo(self, op: Outpoint) -> Coin | None:
        """The staged row of ``op``, or None when the database is current."""
        return self.new_utxos.get(op) or self.changed_utxos.get(op)

    def has_vote(self, txid: str, voter: str) -> bool | None:
        """True/False when the staged rows decide it, None to ask the database."""
        if (txid, voter) in self.votes:
            return True
        if txid in self.cleared_votes:
            return False
        return None

    # -- the write ----------------------------------------------------------------

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
        for v in self.votes.values():
            if v.txid in self.new_txs:
                inline.setdefault(v.txid, []).append((v.voter, int(v.approve), v.signature))
            else:
                table.append((v.txid, v.voter, int(v.approve), v.signature))
        if self.new_txs:
            db.executemany("INSERT OR REPLACE INTO txs (txid, raw, status, accepted_at,"
                           " finalized_seq, reason, addresses, block_height, inline_votes)"
                           " VALUES (?,?,?,?,?,?,?,?,?)",
                           [(r.txid, r.raw, r.status, r.accepted_at, r.finalized_seq,
                             r.reason, r.addresses, r.block_height,
                             orjson.dumps(inline[t]) if t in inline else None)
                            for t, r in self.new_txs.items()])
        if self.tx_changes:
            db.executemany("UPDATE txs SET status=?, finalized_seq=COALESCE(?, finalized_seq),"
                           " reason=COALESCE(?, reason),"
                           " block_height=COALESCE(?, block_height) WHERE txid=?",
                           [(c.status, c.finalized_seq, c.reason, c.block_height, t)
                            for t, c in self.tx_changes.items()])
        if self.new_utxos:
            db.executemany("INSERT INTO utxos (txid, vout, address, amount, state,"
                           " spending_txid, votes, block_height) VALUES (?,?,?,?,?,?,?,?)",
                           [(*op, *c.values()) for op, c in self.new_utxos.items()])
        if self.changed_utxos:
            db.executemany("UPDATE utxos SET state=?, spending_txid=?, votes=?, block_height=?"
                           " WHERE txid=? AND vout=?",
                           [(c.state, c.spender, c.votes, c.height, *op)
                            for op, c in self.changed_utxos.items()])
        if table:
            db.executemany("INSERT INTO votes VALUES (?,?,?,?)", table)
        if self.blocks:
            db.executemany("INSERT INTO blocks (height, hash, prev_hash, timestamp, txids,"
                           " producer, commit_, round) VALUES (?,?,?,?,?,?,?,?)", self.blocks)
        if self.batches:
            db.executemany("INSERT OR IGNORE INTO batches VALUES (?,?,?,?)",
                           [(*k, body) for k, body in self.batches.items()])
        if self.evidence:
            db.executemany("INSERT INTO evidence VALUES (?,?,?,?,?)", self.evidence)
        if self.events:
            db.executemany("INSERT INTO events (seq, type, addresses, payload, tx_ref, tx_at)"
                           " VALUES (?,?,?,?,?,?)", self.events)
        if self.history:
            db.executemany("INSERT INTO history VALUES (?,?,?,?,?)", self.history)
        self.clear()


# -- reads ------------------------------------------------------------------------


def inline_votes(blob: bytes | None) -> list[tuple[str, bool]]:
    """``(voter, approve)`` of the votes kept in a txs row (see ``Rows.flush``)."""
    return [] if blob is None else [(v[0], bool(v[1])) for v in orjson.loads(blob)]


class Tables:
    """Reads and the few direct writes (genesis, the event counter) of the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.ensure(SCHEMA, MIGRATIONS)

    def meta(self, key: str) -> str | None:
        """A value of the meta table."""
        row = self.store.one("SELECT value FROM meta WHERE key=?", (key,))
        return None if row is None else str(row[0])

    def has_blocks(self) -> bool:
        """Whether the chain has begun (genesis written)."""
        return self.store.one("SELECT 1 FROM blocks LIMIT 1") is not None

    def tip(self) -> tuple[int, str, int]:
        """``(height, hash, timestamp)`` of the best block."""
        row = self.store.one("SELECT height, hash, timestamp FROM blocks"
                             " ORDER BY height DESC LIMIT 1")
        return int(row[0]), str(row[1]), int(row[2])

    def seq(self) -> int:
        """The last event ``seq`` handed out."""
        return int(self.meta("seq") or 0)

    def network(self) -> str | None:
        """The network this database was made for, if it says."""
        return self.meta("network")

    def live_coins(self) -> Iterator[tuple[str, int, str, int, str, str | None, int,
                                           int | None]]:
        """Every UTXO not yet Confirmed: ``(txid, vout, *Coin columns)``."""
        yield from self.store.db.execute(
            "SELECT txid, vout, address, amount, state, spending_txid, votes,"
            " block_height FROM utxos WHERE state != 'Confirmed'")

    def pending_txs(self) -> list[tuple[str, bytes, float, bytes, list[tuple[str, bool]]]]:
        """``(txid, raw, accepted_at, addresses, votes)`` of each pending transaction."""
        votes: dict[str, list[tuple[str, bool]]] = {}
        for txid, voter, approve in self.store.query(
                "SELECT v.txid, v.voter, v.approve FROM votes v JOIN txs t ON t.txid=v.txid"
                " WHERE t.status='pending'"):
            votes.setdefault(txid, []).append((voter, bool(approve)))
        return [(txid, bytes(raw), at, bytes(addrs),
                 [*votes.get(txid, []), *inline_votes(inline)])
                for txid, raw, at, addrs, inline in self.store.query(
                    "SELECT txid, raw, accepted_at, addresses, inline_votes FROM txs"
                    " WHERE status='pending'")]

    def finalized_txs(self) -> list[tuple[str, bytes, bytes]]:
        """``(txid, raw, addresses)`` of each finalized, unconfirmed transaction, in
        finality order."""
        return [(t, bytes(raw), bytes(a)) for t, raw, a in self.store.query(
            "SELECT txid, raw, addresses FROM txs WHERE status='finalized'"
            " ORDER BY finalized_seq")]

    def events_from(self, seq: int) -> Iterator[tuple[int, str, bytes | None, bytes,
                                                      str | None, int | None]]:
        """Stored events after ``seq``, one row at a time: ``(seq, type, addresses,
        payload, tx_ref, tx_at)``."""
        for s, t, a, p, ref, at in self.store.db.execute(
                "SELECT seq, type, addresses, payload, tx_ref, tx_at FROM events"
                " WHERE seq > ? ORDER BY seq", (seq,)):
            yield s, t, a, bytes(p), ref, at

    def tx_raw(self, txid: str) -> bytes | None:
        """A stored transaction's JSON."""
        row = self.store.one("SELECT raw FROM txs WHERE txid=?", (txid,))
        return None if row is None else bytes(row[0])

    def utxo(self, op: Outpoint) -> Coin | None:
        """A UTXO's stored row."""
        row = self.store.one("SELECT address, amount, state, spending_txid, votes,"
                             " block_height FROM utxos WHERE txid=? AND vout=?", op)
        return None if row is None else Coin(*row)

    def votes(self, txid: str) -> list[tuple[str, bool]]:
        """``(voter, approve)`` of every stored vote on ``txid``: the votes table's and
        those written inline with the transaction's row."""
        rows = self.store.query("SELECT voter, approve FROM votes WHERE txid=?", (txid,))
        inline = self.store.one("SELECT inline_votes FROM txs WHERE txid=?", (txid,))
        return [(v, bool(a)) for v, a in rows] + inline_votes(inline[0] if inline else None)

    def vote_refs(self, txid: str) -> list[tuple[str, bool, str]]:
        """``(voter, approve, signature)`` of every stored vote on ``txid`` (a vote
        that came in a signed batch has ``@<batch>`` for its signature)."""
        rows = self.store.query("SELECT voter, approve, signature FROM votes WHERE txid=?",
                                (txid,))
        inline = self.store.one("SELECT inline_votes FROM txs WHERE txid=?", (txid,))
        out = [(v, bool(a), str(sig)) for v, a, sig in rows]
        if inline and inline[0] is not None:
            out += [(v[0], bool(v[1]), str(v[2])) for v in orjson.loads(inline[0])]
        return out

    def recent_rejected(self, limit: int) -> list[tuple[str, bytes]]:
        """``(txid, raw)`` of the last ``limit`` transactions rejected, oldest first."""
        rows = self.store.query("SELECT txid, raw FROM txs WHERE status='rejected'"
                                " ORDER BY accepted_at DESC LIMIT ?", (limit,))
        return [(str(t), bytes(r)) for t, r in reversed(rows)]

    def batch_bodies(self, voter: str, batch: int) -> dict[bytes, bytes]:
        """The signed batches stored under ``(voter, batch)``, by content digest (more
        than one only from an equivocating voter)."""
        return {bytes(d): bytes(b) for d, b in self.store.query(
            "SELECT digest, body FROM batches WHERE voter=? AND batch=?", (voter, batch))}

    def last_batch(self, voter: str) -> int:
        """The highest batch number stored for ``voter`` (0: none)."""
        row = self.store.one("SELECT MAX(batch) FROM batches WHERE voter=?", (voter,))
        return int(row[0]) if row and row[0] is not None else 0

    def evidence(self, voter: str | None = None) -> list[EvidenceRow]:
        """Equivocation evidence kept, oldest first (of ``voter`` when given)."""
        sql = "SELECT voter, kind, first, second, at FROM evidence"
        args: tuple[Any, ...] = ()
        if voter is not None:
            sql, args = sql + " WHERE voter=?", (voter,)
        return [EvidenceRow(v, k, bytes(a), bytes(b), t)
                for v, k, a, b, t in self.store.query(sql + " ORDER BY rowid", args)]

    def tx_status(self, txid: str) -> str | None:
        """A stored transaction's status."""
        row = self.store.one("SELECT status FROM txs WHERE txid=?", (txid,))
        return None if row is None else str(row[0])

    def tx(self, txid: str) -> tuple[bytes, str, int | None, str | None] | None:
        """``(raw, status, block_height, reason)`` of a stored transaction."""
        row = self.store.one("SELECT raw, status, block_height, reason FROM txs WHERE txid=?",
                             (txid,))
        return None if row is None else (bytes(row[0]), row[1], row[2], row[3])

    def txs_raw(self, txids: list[str]) -> dict[str, bytes]:
        """The stored JSON of each of ``txids`` that the database holds."""
        out: dict[str, bytes] = {}
        for i in range(0, len(txids), 500):
            part = txids[i:i + 500]
            marks = ",".join("?" * len(part))
            for t, raw in self.store.query(
                    f"SELECT txid, raw FROM txs WHERE txid IN ({marks})", tuple(part)):
                out[t] = bytes(raw)
        return out

    def block(self, height: int | None = None, hash_: str | None = None) -> BlockRow | None:
        """A block by height or by hash."""
        cols = "height, hash, prev_hash, timestamp, txids, producer, commit_, round"
        if height is not None:
            row = self.store.one(f"SELECT {cols} FROM blocks WHERE height=?", (height,))
        else:
            row = self.store.one(f"SELECT {cols} FROM blocks WHERE hash=?", (hash_,))
        if row is None:
            return None
        return BlockRow(row[0], row[1], row[2], row[3], bytes(row[4]), row[5],
                        None if row[6] is None else bytes(row[6]), int(row[7]))

    def history_count(self, address: str) -> int:
        """How many transactions touched ``address`` (its highest ``k``)."""
        row = self.store.one("SELECT MAX(k) FROM history WHERE address=?", (address,))
        return int(row[0] or 0)

    def history_page(self, address: str, before: int, limit: int
                     ) -> list[tuple[int, str, int, int, str, int | None, float, int | None]]:
        """Up to ``limit`` of ``address``'s transactions below ``k = before``, newest
        first: ``(k, txid, received, sent, status, block_height, accepted_at, block
        timestamp)``."""
        return self.store.query(
            "SELECT h.k, h.txid, h.received, h.sent, t.status, t.block_height,"
            " t.accepted_at, b.timestamp FROM history h JOIN txs t ON t.txid = h.txid"
            " LEFT JOIN blocks b ON b.height = t.block_height"
            " WHERE h.address = ? AND h.k < ? ORDER BY h.k DESC LIMIT ?",
            (address, before, limit))

    def history_built(self) -> bool:
        """Whether the address history covers every stored transaction."""
        return self.meta("history") == "1"

    def build_history(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Index every stored transaction by address, in the order they were stored
        (a database from before the index); returns how many.  ``progress(done,
        total)`` is called every 10,000."""
        total = int(self.store.one("SELECT COUNT(*) FROM txs")[0])
        last: dict[str, int] = {}
        done = 0
        with self.store.transaction() as db:
            db.execute("DELETE FROM history")
            for txid, raw in db.execute("SELECT txid, raw FROM txs ORDER BY rowid"):
                tx = orjson.loads(raw)
                flows: dict[str, list[int]] = {}
                for o in tx.get("outputs", ()):
                    flows.setdefault(o["address"], [0, 0])[0] += int(o["amount"])
                for i in tx.get("inputs", ()):
                    prev = i["previous_output"]
                    coin = db.execute("SELECT address, amount FROM utxos WHERE txid=? AND"
                                      " vout=?", (prev["txid"], prev["vout"])).fetchone()
                    if coin is not None:
                        flows.setdefault(coin[0], [0, 0])[1] += int(coin[1])
                rows = []
                for address, (received, sent) in flows.items():
                    last[address] = last.get(address, 0) + 1
                    rows.append((address, last[address], txid, received, sent))
                db.executemany("INSERT INTO history VALUES (?,?,?,?,?)", rows)
                done += 1
                if progress is not None and done % 10_000 == 0:
                    progress(done, total)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('history', '1')")
        return done

    # -- direct writes (inside the caller's transaction) ------------------------------

    @staticmethod
    def write_genesis(db: Any, block: BlockRow, tx: TxRow | None,
                      coins: list[tuple[Outpoint, Coin]], network: str) -> None:
        """The genesis block, its transaction and coins, and the network's name."""
        db.execute("INSERT INTO blocks (height, hash, prev_hash, timestamp, txids, producer,"
                   " commit_, round) VALUES (?,?,?,?,?,?,?,?)", block)
        if tx is not None:
            db.execute("INSERT INTO txs (txid, raw, status, accepted_at, block_height,"
                       " addresses) VALUES (?,?,?,?,?,?)",
                       (tx.txid, tx.raw, tx.status, tx.accepted_at, tx.block_height,
                        tx.addresses))
        for op, c in coins:
            db.execute("INSERT INTO utxos VALUES (?,?,?,?,?,?,?,?)", (*op, *c.values()))
        if tx is not None:
            flows: dict[str, int] = {}
            for _, c in coins:
                flows[c.address] = flows.get(c.address, 0) + c.amount
            db.executemany("INSERT INTO history VALUES (?,1,?,?,0)",
                           [(a, tx.txid, amount) for a, amount in flows.items()])
        db.execute("INSERT OR REPLACE INTO meta VALUES ('network', ?)", (network,))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('history', '1')")

    def consensus_record(self) -> bytes | None:
        """The block-consensus record this masternode last persisted (``privval``)."""
        value = self.meta(CONSENSUS_RECORD)
        return None if value is None else value.encode()

    @staticmethod
    def write_consensus_record(db: Any, record: bytes) -> None:
        """Replace the block-consensus record (``privval.PrivValidator.persist``)."""
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                   (CONSENSUS_RECORD, record.decode()))

    @staticmethod
    def write_network(db: Any, network: str) -> None:
        """Record the network a database belongs to (``datadir.check_network``)."""
        db.execute("INSERT INTO meta VALUES ('network', ?)", (network,))

    @staticmethod
    def write_seq(db: Any, old: int, new: int, keep: int, floor: int | None = None) -> None:
        """Record the event counter; every 1,024 events, drop those past ``keep``,
        and none above ``floor`` (when given: the last event an event bus stored)."""
        if new != old:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(new),))
            if new // 1024 != old // 1024:
                last = new - keep if floor is None else min(new - keep, floor)
                db.execute("DELETE FROM events WHERE seq <= ?", (last,))
