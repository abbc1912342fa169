"""The ledger: transactions, the UTXO state protocol, votes, blocks and events (SPEC 4).

Plain Python around the compiled ``UtxoTable``.  Every change is one *step*: the
step stages UTXO moves (checked against the transition table), writes every row it
changes inside one SQLite transaction, and only after the commit applies the moves
to the core, updates the in-memory state and hands the events to listeners.  A step
that fails (a rule, a full disk) leaves the core, the database and the listeners as
they were: durable before announced (DEVELOPERS rule 4).

The ledger never touches a socket; it serializes each event once, to the bytes that
are stored in the event log and sent to wallets.
"""

from __future__ import annotations

import heapq
import math
import re
import sqlite3
import struct
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from nacl.signing import SigningKey

from timefast import _core
from timefast.crypto import (
    HEX64,
    HEX128,
    TXID,
    address_of,
    is_public_key_hex,
    public_key_hex,
    sha3,
    sign_vote,
    verify,
    vote_bytes,
)
from timefast.errors import IllegalTransition, LockConflict, UnknownOutpoint
from timefast.storage import StorageError, Store
from timefast.transaction import (
    COIN,
    Transaction,
    TxFormatError,
    TxOutput,
    build,
    parse,
    txid_of,
)
from timefast.writes import Writes

GENESIS_TIMESTAMP = 1764150000
GENESIS_SUPPLY = 21_000_000 * COIN
ZERO_HASH = "0" * 64
# The regtest faucet's key is fixed so that anyone can spend from it on a private
# network: seed = SHA3-256(b"timefast regtest faucet").
FAUCET_SEED = sha3(b"timefast regtest faucet")
FAUCET_KEY = SigningKey(FAUCET_SEED)

NETWORK_PREFIX = {"mainnet": "TIME1", "testnet": "TIME0", "regtest": "TIME0"}
_WIRE_ADDRESS = re.compile(r"TIME[01][0-9a-f]{40}")
SPENDABLE_OR_PENDING = ("Unspent", "Locked", "SpentPending")
# A UtxoStateChange carries its transaction whole up to this many bytes of JSON,
# else {"txid", "size"} (SPEC 3.2).
TX_INLINE_MAX = 4096
SNAPSHOT_PAGE = 1000  # UTXOs per address in a snapshot or Utxos reply (SPEC 3.1)


class LedgerError(Exception):
    """A request the ledger refuses; ``code`` is one of SPEC 3.4's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Event:
    """One pushed event: ``payload`` is the exact JSON message wallets receive.

    An event that embeds a transaction keeps ``stored`` (its payload without the
    transaction) and ``tx`` (the transaction's JSON, inserted at ``at``): every
    event that names the transaction shares that one bytes object, in memory as
    in the database (SPEC 3.2: one copy however many events name it).
    """

    seq: int
    type: str
    addresses: tuple[str, ...] | None  # None: every connection (NewBlock)
    stored: bytes
    tx: bytes | None = None
    at: int = 0

    @property
    def payload(self) -> bytes:
        """The message's bytes, assembled (one copy, for the frame) when asked."""
        tx = self.tx
        if tx is None:
            return self.stored
        return self.stored[:self.at] + tx + self.stored[self.at:]

    @property
    def size(self) -> int:
        """Bytes of the payload (what the replay window's byte bound counts)."""
        return len(self.stored) + (0 if self.tx is None else len(self.tx))


# ``raw`` below is the transaction's JSON, serialized once and spliced into every
# event that carries it (as an orjson.Fragment), and left out of those events'
# stored form (``_Step.event``).


@dataclass(slots=True)
class _Pending:
    tx: Transaction
    raw: bytes
    accepted_at: float
    addresses: tuple[str, ...]
    approvals: set[str] = field(default_factory=set)
    rejections: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Final:
    tx: Transaction
    raw: bytes
    addresses: tuple[str, ...]


def _kept(data: bytes) -> bytes:
    """A right-sized copy of orjson output that is kept.

    orjson returns its bytes inside the 4 KiB buffer it wrote them to, whatever
    their length: 100,000 kept events of 1 KB would hold 400 MB instead of 100.
    """
    return bytes(memoryview(data))


def _inline(blob: bytes | None) -> list[tuple[str, int]]:
    """``(voter, approve)`` of the votes kept in a txs row (see ``Writes.flush``)."""
    return [] if blob is None else [(v[0], int(v[1])) for v in orjson.loads(blob)]


_TXID_HEAD = b'{"txid":"'


def block_hash(height: int, prev_hash: str, timestamp: int, txids: list[str],
               producer: str) -> str:
    """hex SHA3-256 of the header: height u64 LE, prev_hash ASCII, timestamp i64 LE,
    txid count u32 LE, each txid ASCII, producer ASCII."""
    parts = [struct.pack("<Q", height), prev_hash.encode("ascii"),
             struct.pack("<qI", timestamp, len(txids))]
    parts.extend(t.encode("ascii") for t in txids)
    parts.append(producer.encode("ascii"))
    return sha3(b"".join(parts)).hex()


def genesis_transaction(network: str) -> Transaction | None:
    """Regtest's genesis pays the whole supply to the faucet; other networks have none."""
    if network != "regtest":
        return None
    faucet = address_of(public_key_hex(FAUCET_KEY), network)
    tx = Transaction("", 1, (), (TxOutput(GENESIS_SUPPLY, faucet),), 0, GENESIS_TIMESTAMP)
    return Transaction(tx.compute_txid(), 1, (), tx.outputs, 0, GENESIS_TIMESTAMP)


class _Step:
    """Staged changes of one atomic ledger step (see the module docstring).

    A step never writes to the database itself: its rows go to the batch's
    ``Writes`` when it succeeds (``merge``), so a step that fails leaves nothing.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.seq = ledger.seq
        self.events: list[Event] = []
        self.core_ops: list[Callable[[], Any]] = []
        self.after: list[Callable[[], None]] = []
        self.staged: dict[tuple[str, int], list[Any]] = {}
        self.dirty: dict[tuple[str, int], bool] = {}  # outpoint -> created by this step
        self.event_rows: list[tuple[int, str, bytes | None, bytes, str | None, int | None]] = []
        self.new_txs: list[list[Any]] = []
        # txid -> (status, finalized_seq, reason, block_height), None: unchanged
        self.tx_status: dict[str, tuple[str, int | None, str | None, int | None]] = {}
        self.cleared_votes: list[str] = []
        self.votes: list[tuple[str, str, bool, str]] = []
        self.blocks: list[tuple[Any, ...]] = []

    def merge(self, w: Writes) -> None:
        """Hand the step's rows to the batch."""
        for txid in self.cleared_votes:
            w.clear_votes(txid)
        for row in self.new_txs:
            w.add_tx(row)
        for txid, change in self.tx_status.items():
            w.set_tx(txid, *change)
        for op, new in self.dirty.items():
            w.put_utxo(op, self.staged[op], new)
        for vote in self.votes:
            w.add_vote(*vote)
        w.blocks.extend(self.blocks)
        w.events.extend(self.event_rows)

    def utxo(self, op: tuple[str, int]) -> list[Any]:
        """The UTXO's record as this step has it (a copy, changed by the step)."""
        rec = self.staged.get(op)
        if rec is None:
            rec = list(self.ledger.utxos.get(*op))
            self.staged[op] = rec
        return rec

    def event(self, type_: str, data: dict[str, Any], addresses: tuple[str, ...] | None,
              tx: bytes | None = None, tx_key: bytes = b"transaction") -> None:
        """Stage one event: ``data`` and its ``seq``, with ``tx`` (a transaction's
        JSON, if given) under ``tx_key`` before the ``seq``.

        An event that embeds its transaction is stored without it, naming it by
        txid and offset instead: the JSON is in the ``txs`` row already, and a
        payment would otherwise write it again in each of its half-dozen events
        (the database is most of what the ledger does per payment).
        ``Ledger._load`` puts it back at start-up (one copy per transaction).
        """
        self.seq += 1
        ref: str | None = None
        at: int | None = None
        if tx is not None and tx.startswith(_TXID_HEAD):
            # The bytes orjson would give for the whole object, assembled around
            # the transaction so that both forms come from one serialization.
            head = orjson.dumps({"type": type_, "data": data})[:-2]
            head += (b',"' if data else b'"') + tx_key + b'":'
            tail = b',"seq":%d}}' % self.seq
            stored = head + tail
            ref, at = tx[len(_TXID_HEAD):len(_TXID_HEAD) + 64].decode(), len(head)
        else:
            if tx is not None:
                data[tx_key.decode()] = orjson.Fragment(tx)
            data["seq"] = self.seq
            stored = _kept(orjson.dumps({"type": type_, "data": data}))
            tx = None
        self.event_rows.append(
            (self.seq, type_, None if addresses is None else orjson.dumps(addresses), stored,
             ref, at))
        self.events.append(Event(self.seq, type_, addresses, stored, tx, at or 0))

    def _utxo_event(self, op: tuple[str, int], rec: list[Any], prev: str | None,
                    tx: bytes | None) -> None:
        data = {
            "outpoint": {"txid": op[0], "vout": op[1]},
            "address": rec[0], "amount": rec[1], "state": rec[2], "prev_state": prev,
            "spending_txid": rec[3], "votes": rec[4], "quorum": self.ledger.quorum,
            "block_height": rec[5],
        }
        if tx is None:
            data["transaction"] = None
        elif len(tx) > TX_INLINE_MAX:
            # SPEC 3.2: a large transaction is named, not copied, in each of its
            # coins' events (a thousand outputs would carry it a thousand times).
            data["transaction"] = {"txid": tx[len(_TXID_HEAD):len(_TXID_HEAD) + 64].decode(),
                                   "size": len(tx)}
            tx = None
        self.event("UtxoStateChange", data, (rec[0],), tx)

    def lock(self, txid: str, ops: list[tuple[str, int]], tx: bytes) -> None:
        self.ledger.utxos.check_lock(txid, ops)
        for op in ops:
            rec = self.utxo(op)
            rec[2], rec[3] = "Locked", txid
            self._mark_dirty(op)
            self._utxo_event(op, rec, "Unspent", tx)
        self.core_ops.append(lambda: self.ledger.utxos.lock(txid, ops))

    def move(self, op: tuple[str, int], state: str, tx: bytes | None,
             votes: int | None = None, height: int | None = None) -> None:
        rec = self.utxo(op)
        prev = rec[2]
        if not _core.allowed(prev, state):
            raise IllegalTransition(op[0], op[1], prev, state)
        rec[2] = state
        if state == "Unspent":
            rec[3], rec[4] = None, 0
        if votes is not None:
            rec[4] = votes
        if height is not None:
            rec[5] = height
        self._mark_dirty(op)
        self._utxo_event(op, rec, prev, tx)
        self.core_ops.append(
            lambda: self.ledger.utxos.transition(op[0], op[1], state, votes, height))

    def create(self, op: tuple[str, int], address: str, amount: int,
               tx: bytes | None, height: int | None = None) -> None:
        rec = [address, amount, "Unspent", None, 0, height]
        self.staged[op] = rec
        self.dirty[op] = True
        if tx is not None:
            self._utxo_event(op, rec, None, tx)
        self.core_ops.append(
            lambda: self.ledger.utxos.add(op[0], op[1], address, amount, block_height=height))

    def _mark_dirty(self, op: tuple[str, int]) -> None:
        # An existing UTXO's row is written once, however often it moves.
        self.dirty.setdefault(op, False)


class Ledger:
    """The node's state: UTXOs (in the core), transactions, votes, blocks, events."""

    def __init__(self, store: Store, network: str, key: SigningKey,
                 masternodes: Iterable[str] | None = None, finality_timeout: float = 10.0,
                 replay_events: int = 100_000, clock: Callable[[], float] = time.time,
                 replay_bytes: int = 256 << 20) -> None:
        if network not in NETWORK_PREFIX:
            raise ValueError(f"unknown network {network!r}")
        self.store = store
        self.network = network
        self.key = key
        self.public_key = public_key_hex(key)
        self.address = address_of(self.public_key, network)
        voters = [m.lower() for m in (masternodes or [self.public_key])]
        for m in voters:
            if not is_public_key_hex(m):
                raise ValueError(f"masternode key {m!r} is not 64 hex characters")
        self.masternodes: tuple[str, ...] = tuple(dict.fromkeys(voters))
        self.quorum = math.ceil(2 * len(self.masternodes) / 3)
        self.finality_timeout = finality_timeout
        self.replay_events = replay_events
        self.clock = clock
        self.utxos = _core.UtxoTable()
        self.pending: dict[str, _Pending] = {}
        self.unconfirmed: dict[str, _Final] = {}
        self.seq = 0
        self.height = -1
        self.tip = ZERO_HASH
        self.tip_timestamp = 0
        self.replay_bytes = replay_bytes
        # The replay window: at most ``replay_events`` events and ``replay_bytes``
        # bytes of payload (``recent_bytes``), whichever binds first (SPEC 3.2).
        self.recent: deque[Event] = deque()
        self.recent_bytes = 0
        self.listeners: list[Callable[[list[Event]], None]] = []
        # Inside ``batch()``: events of committed-to-be steps, held until the commit.
        self._held: list[Event] | None = None
        # Rows of committed-to-be steps, written at the commit (timefast.writes).
        self._writes = Writes()
        # (public key, signed bytes, signature) found good ahead of a batch.
        self._checked: set[tuple[bytes, bytes, bytes]] = set()
        self.outcomes = {"accepted": 0, "finalized": 0, "confirmed": 0, "rejected": 0,
                         "invalid": 0, "conflict": 0}
        self._load()

    # -- start-up ----------------------------------------------------------------

    def _load(self) -> None:
        s = self.store
        self.utxos = _core.UtxoTable()
        self.pending.clear()
        self.unconfirmed.clear()
        self.recent.clear()
        self.recent_bytes = 0
        self._writes.clear()
        if s.one("SELECT 1 FROM blocks LIMIT 1") is None:
            self._genesis()
        self.seq = int(s.meta("seq") or 0)
        height, tip, ts = s.one("SELECT height, hash, timestamp FROM blocks"
                                " ORDER BY height DESC LIMIT 1")
        self.height, self.tip, self.tip_timestamp = height, tip, ts
        # Confirmed coins stay on disk only (see ``make_block``).
        for row in s.query("SELECT txid, vout, address, amount, state, spending_txid, votes,"
                           " block_height FROM utxos WHERE state != 'Confirmed'"):
            self.utxos.add(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])
        votes: dict[str, list[tuple[str, int]]] = {}
        for txid, voter, approve in s.query(
                "SELECT v.txid, v.voter, v.approve FROM votes v JOIN txs t ON t.txid=v.txid"
                " WHERE t.status='pending'"):
            votes.setdefault(txid, []).append((voter, approve))
        for txid, raw, accepted_at, addrs, inline in s.query(
                "SELECT txid, raw, accepted_at, addresses, inline_votes FROM txs"
                " WHERE status='pending'"):
            p = _Pending(parse(orjson.loads(raw)), bytes(raw), accepted_at,
                         tuple(orjson.loads(addrs)))
            for voter, approve in [*votes.get(txid, []), *_inline(inline)]:
                (p.approvals if approve else p.rejections).add(voter)
            self.pending[txid] = p
        for txid, raw, addrs in s.query(
                "SELECT txid, raw, addresses FROM txs WHERE status='finalized'"
                " ORDER BY finalized_seq"):
            self.unconfirmed[txid] = _Final(parse(orjson.loads(raw)), bytes(raw),
                                            tuple(orjson.loads(addrs)))
        # Each transaction is read once, however many events name it; rows are read
        # one at a time and the window trimmed as it fills (REPLAY_BYTES).
        txs: dict[str, bytes] = {}
        for seq, type_, addrs, payload, ref, at in s.db.execute(
                "SELECT seq, type, addresses, payload, tx_ref, tx_at FROM events"
                " WHERE seq > ? ORDER BY seq", (self.seq - self.replay_events,)):
            raw = None
            if at is not None:
                raw = txs.get(ref)
                if raw is None:
                    row = s.one("SELECT raw FROM txs WHERE txid=?", (ref,))
                    if row is None:
                        raise StorageError("an event names a transaction the database "
                                           "does not hold")
                    raw = txs[ref] = bytes(row[0])
            self._keep([Event(seq, type_, None if addrs is None else tuple(orjson.loads(addrs)),
                              bytes(payload), raw, at or 0)])

    def _genesis(self) -> None:
        gtx = genesis_transaction(self.network)
        txids = [gtx.txid] if gtx else []
        h = block_hash(0, ZERO_HASH, GENESIS_TIMESTAMP, txids, "")
        with self.store.transaction() as db:
            db.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?)",
                       (0, h, ZERO_HASH, GENESIS_TIMESTAMP, orjson.dumps(txids), ""))
            if gtx is not None:
                raw = gtx.to_json()
                db.execute("INSERT INTO txs (txid, raw, status, accepted_at, block_height,"
                           " addresses) VALUES (?,?,?,?,?,?)",
                           (gtx.txid, orjson.dumps(raw), "confirmed", GENESIS_TIMESTAMP, 0,
                            orjson.dumps(gtx.addresses())))
                for vout, o in enumerate(gtx.outputs):
                    db.execute("INSERT INTO utxos VALUES (?,?,?,?,?,?,?,?)",
                               (gtx.txid, vout, o.address, o.amount, "Unspent", None, 0, 0))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('network', ?)", (self.network,))

    # -- the step machinery --------------------------------------------------------

    def _write_seq(self, db: Any, old: int, new: int) -> None:
        if new != old:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(new),))
            if new // 1024 != old // 1024:
                db.execute("DELETE FROM events WHERE seq <= ?", (new - self.replay_events,))

    def _apply(self, step: _Step) -> None:
        self.seq = step.seq
        for op in step.core_ops:
            op()
        for f in step.after:
            f()
        self._keep(step.events)

    def _keep(self, events: list[Event]) -> None:
        """Add to the replay window, dropping its oldest past either bound (one
        event, however large, is always kept)."""
        recent = self.recent
        recent.extend(events)
        self.recent_bytes += sum(e.size for e in events)
        while len(recent) > 1 and (len(recent) > self.replay_events
                                   or self.recent_bytes > self.replay_bytes):
            self.recent_bytes -= recent.popleft().size

    def _announce(self, events: list[Event]) -> None:
        if events:
            for listener in self.listeners:
                listener(events)

    def _run(self, fn: Callable[[_Step], Any]) -> Any:
        step = _Step(self)
        result = fn(step)  # a refusal raises here, with nothing staged anywhere
        step.merge(self._writes)
        if self._held is not None:
            # Inside a batch: later steps see this one's effects, but nobody hears
            # of it before the batch commits.
            self._apply(step)
            self._held.extend(step.events)
            return result
        try:
            with self.store.transaction() as db:
                self._writes.flush(db)
                self._write_seq(db, self.seq, step.seq)
        finally:
            self._writes.clear()
        # Committed: now, and only now, the core, memory and listeners learn of it.
        self._apply(step)
        self._announce(step.events)
        return result

    def _flush_staged(self) -> None:
        """Write the open batch's staged rows now, for a read that needs all of them."""
        if self._held is None or not self._writes:
            return
        try:
            self._writes.flush(self.store.db)
        except sqlite3.Error as e:
            # The batch cannot commit any more: fail it whole (``batch`` reloads).
            self.store.failure = self.store.failure or str(e)
            raise StorageError(f"database write failed: {e}") from e

    def _stored_utxo(self, op: tuple[str, int]) -> list[Any] | None:
        """A UTXO the core no longer holds (Confirmed): staged row or database row."""
        row = self._writes.utxo(op)
        if row is not None:
            return row
        found = self.store.one("SELECT address, amount, state, spending_txid, votes,"
                               " block_height FROM utxos WHERE txid=? AND vout=?", op)
        return None if found is None else list(found)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run several steps in one database commit (group commit).

        Each step still succeeds or fails alone, and sees the steps before it, but
        no event is announced (and no caller should acknowledge anything) until the
        batch has committed.  If the commit fails, memory is rebuilt from the
        database, which holds none of the batch, and ``StorageError`` is raised.
        """
        if self._held is not None:
            yield
            return
        self._held = []
        seq_before = self.seq
        try:
            with self.store.transaction() as db:
                yield
                self._writes.flush(db)
                self._write_seq(db, seq_before, self.seq)
        except BaseException:
            self._held = None
            self._load()
            raise
        held, self._held = self._held, None
        self._announce(held)

    # -- transactions ----------------------------------------------------------------

    def _refuse(self, code: str, message: str) -> LedgerError:
        self.outcomes["conflict" if code == "TX_CONFLICT" else "invalid"] += 1
        return LedgerError(code, message)

    def check_address(self, address: object, what: str = "address") -> str:
        """An output address of this network, or ``LedgerError(INVALID_ADDRESS)``."""
        if not isinstance(address, str) or not _WIRE_ADDRESS.fullmatch(address):
            raise LedgerError("INVALID_ADDRESS", f"{what} must be TIME0 or TIME1 + 40 hex")
        if not address.startswith(NETWORK_PREFIX[self.network]):
            raise LedgerError("INVALID_ADDRESS",
                              f"{what} {address} is not a {self.network} address")
        return address

    @staticmethod
    def prepare(obj: Any) -> Transaction | None:
        """``obj`` parsed for ``submit`` (None when it does not parse: ``submit``
        then refuses it with the reason)."""
        try:
            return parse(obj)
        except TxFormatError:
            return None

    def spendable(self, tx: Transaction) -> bool:
        """Whether every input is, now, an Unspent coin its public key owns: the
        checks that cost no signature.  Only such a transaction has signatures
        worth checking (``signature_items``); ``submit`` refuses the others before
        it looks at any signature."""
        get = self.utxos.get
        for inp in tx.inputs:
            try:
                address, _, state, _, _, _ = get(inp.prev_txid, inp.vout)
            except UnknownOutpoint:
                return False
            if state != "Unspent" or address_of(inp.public_key, self.network) != address:
                return False
        return True

    def signature_items(self, txs: Iterable[Transaction]) -> list[tuple[bytes, bytes, bytes]]:
        """``(public key, signed bytes, signature)`` of every input of those of
        ``txs`` that are ``spendable``, for ``crypto.verify_batch`` (on any thread)
        ahead of their ``submit``."""
        items = []
        for tx in txs:  # parsed: every key and signature is hex of the right length
            if not self.spendable(tx):
                continue
            msg = tx.signing_bytes()
            items += [(bytes.fromhex(i.public_key), msg, bytes.fromhex(i.signature))
                      for i in tx.inputs]
        return items

    def checked(self, items: list[tuple[bytes, bytes, bytes]], good: bytes) -> None:
        """Signatures checked ahead (``good``: one byte per item, 1 when good):
        ``submit`` does not check them again until ``forget_checked``."""
        self._checked.update(item for item, ok in zip(items, good, strict=True) if ok)

    def forget_checked(self) -> None:
        """Drop the signatures checked ahead (their work has run)."""
        self._checked.clear()

    def submit(self, obj: Any) -> str:
        """Validate and accept a transaction; returns its txid (idempotent).

        ``obj`` is the upstream JSON object, or a ``Transaction`` from ``prepare``.

        Raises ``LedgerError`` with ``TX_INVALID`` or ``TX_CONFLICT``, or
        ``StorageError`` when it could not be stored (nothing is then accepted).
        """
        try:
            tx = obj if isinstance(obj, Transaction) else parse(obj)
        except TxFormatError as e:
            raise self._refuse("TX_INVALID", str(e)) from None
        # What the txid hashes is what every input signs: made once for both.
        msg = tx.signing_bytes()
        if txid_of(msg) != tx.txid:
            raise self._refuse("TX_INVALID", "txid does not match the transaction's contents")
        known = self.status_of(tx.txid)
        if known not in (None, "rejected"):
            return tx.txid
        ops = tx.outpoints()
        if len(set(ops)) != len(ops):
            raise self._refuse("TX_INVALID", "the same outpoint is spent twice")
        for o in tx.outputs:
            try:
                self.check_address(o.address, "output address")
            except LedgerError as e:
                raise self._refuse("TX_INVALID", e.message) from None
        total_in = 0
        in_addresses = []
        # Every input's coin and owner, and the amounts, first: a signature (the
        # costly check) is looked at only once everything else is found good.
        for n, inp in enumerate(tx.inputs):
            try:
                address, amount, state, spender, _, _ = self.utxos.get(inp.prev_txid, inp.vout)
            except UnknownOutpoint:
                spent = self._stored_utxo((inp.prev_txid, inp.vout))
                if spent is not None:
                    raise self._refuse("TX_CONFLICT", f"TX_CONFLICT: input {n} "
                                       f"{inp.prev_txid}:{inp.vout} is already {spent[2]}"
                                       f" by {spent[3]}") from None
                raise self._refuse("TX_INVALID", f"input {n} spends unknown outpoint "
                                   f"{inp.prev_txid}:{inp.vout}") from None
            if state != "Unspent":
                raise self._refuse("TX_CONFLICT", f"TX_CONFLICT: input {n} "
                                   f"{inp.prev_txid}:{inp.vout} is already {state}"
                                   + (f" by {spender}" if spender else ""))
            if address_of(inp.public_key, self.network) != address:
                raise self._refuse("TX_INVALID", f"input {n}: public key does not own {address}")
            total_in += amount
            in_addresses.append(address)
        total_out = sum(o.amount for o in tx.outputs)
        if total_out > total_in:
            raise self._refuse("TX_INVALID",
                               f"outputs ({total_out}) exceed inputs ({total_in})")
        for n, inp in enumerate(tx.inputs):
            pk, sig = bytes.fromhex(inp.public_key), bytes.fromhex(inp.signature)
            if (pk, msg, sig) not in self._checked and not verify(pk, msg, sig):
                raise self._refuse("TX_INVALID", f"input {n}: bad signature")
        addresses = tuple(dict.fromkeys([*in_addresses, *tx.addresses()]))
        raw = _kept(orjson.dumps(tx.to_json()))
        now = self.clock()

        def step(s: _Step) -> str:
            try:
                s.lock(tx.txid, ops, raw)
            except LockConflict as e:
                raise self._refuse("TX_CONFLICT", f"TX_CONFLICT: {e}") from None
            if known == "rejected":
                # A transaction rejected earlier may be tried again: its old votes go.
                s.cleared_votes.append(tx.txid)
            s.new_txs.append([tx.txid, raw, "pending", now, None, None,
                              orjson.dumps(addresses), None])
            s.event("TransactionPending", {}, addresses, raw, b"tx")
            p = _Pending(tx, raw, now, addresses)
            s.after.append(lambda: self.pending.__setitem__(tx.txid, p))
            s.after.append(lambda: self.outcomes.__setitem__(
                "accepted", self.outcomes["accepted"] + 1))
            if self.public_key in self.masternodes:
                vote = sign_vote(self.key, tx.txid, True)
                self._record_vote(s, p, vote)
            return tx.txid

        return str(self._run(step))

    def _record_vote(self, s: _Step, p: _Pending | None, vote: dict[str, Any]) -> None:
        s.votes.append((vote["txid"], vote["voter"], bool(vote["approve"]), vote["signature"]))
        if p is None:
            return
        (p.approvals if vote["approve"] else p.rejections).add(vote["voter"])
        self._tally(s, p, bool(vote["approve"]))

    def _tally(self, s: _Step, p: _Pending, approved: bool) -> None:
        votes = len(p.approvals)
        if votes >= self.quorum:
            self._finalize(s, p)
        elif len(p.rejections) > len(self.masternodes) - self.quorum:
            self._reject(s, p, "quorum against")
        elif approved:
            for op in p.tx.outpoints():
                s.move(op, "SpentPending", p.raw, votes=votes)

    def _finalize(self, s: _Step, p: _Pending) -> None:
        votes = len(p.approvals)
        txid = p.tx.txid
        for op in p.tx.outpoints():
            if s.utxo(op)[2] == "Locked":
                s.move(op, "SpentPending", p.raw, votes=votes)
            s.move(op, "SpentFinalized", p.raw, votes=votes)
        for vout, o in enumerate(p.tx.outputs):
            s.create((txid, vout), o.address, o.amount, p.raw)
        s.event("TransactionFinalized", {"txid": txid, "block_height": None, "votes": votes,
                                         "quorum": self.quorum}, p.addresses)
        s.tx_status[txid] = ("finalized", s.seq, None, None)
        final = _Final(p.tx, p.raw, p.addresses)

        def done() -> None:
            self.pending.pop(txid, None)
            self.unconfirmed[txid] = final
            self.outcomes["finalized"] += 1
        s.after.append(done)

    def _reject(self, s: _Step, p: _Pending, reason: str) -> None:
        txid = p.tx.txid
        for op in p.tx.outpoints():
            s.move(op, "Unspent", p.raw)
        s.event("TransactionRejected", {"txid": txid, "reason": reason}, p.addresses)
        s.tx_status[txid] = ("rejected", None, reason, None)

        def done() -> None:
            self.pending.pop(txid, None)
            self.outcomes["rejected"] += 1
        s.after.append(done)

    # -- votes ------------------------------------------------------------------------

    def submit_vote(self, vote: Any) -> dict[str, Any]:
        """Take a masternode's signed vote; returns the transaction's status after it."""
        if not isinstance(vote, dict):
            raise LedgerError("BAD_REQUEST", "vote must be an object")
        txid, voter, approve, sig = (vote.get("txid"), vote.get("voter"),
                                     vote.get("approve"), vote.get("signature"))
        if not isinstance(txid, str) or not TXID.fullmatch(txid):
            raise LedgerError("BAD_REQUEST", "vote.txid must be 64 lowercase hex characters")
        if not isinstance(voter, str) or not HEX64.fullmatch(voter):
            raise LedgerError("BAD_REQUEST", "vote.voter must be 64 hex characters")
        if not isinstance(approve, bool):
            raise LedgerError("BAD_REQUEST", "vote.approve must be true or false")
        if not isinstance(sig, str) or not HEX128.fullmatch(sig):
            raise LedgerError("BAD_REQUEST", "vote.signature must be 128 hex characters")
        voter = voter.lower()
        if voter not in self.masternodes:
            raise LedgerError("BAD_REQUEST", f"voter {voter} is not in the masternode set")
        if not verify(bytes.fromhex(voter), vote_bytes(txid, approve), bytes.fromhex(sig)):
            raise LedgerError("BAD_REQUEST", "bad vote signature")
        p = self.pending.get(txid)
        if p is None and self.status_of(txid) is None:
            raise LedgerError("NOT_FOUND", f"unknown transaction {txid}")
        voted = self._writes.has_vote(txid, voter)
        if voted is None:
            voted = any(v == voter for v, _ in self._stored_votes(txid))
        if voted:
            raise LedgerError("BAD_REQUEST", f"duplicate vote by {voter} on {txid}")
        clean = {"txid": txid, "voter": voter, "approve": approve, "signature": sig.lower()}
        self._run(lambda s: self._record_vote(s, p, clean))
        return {"txid": txid, "status": self.status_of(txid)}

    def _stored_votes(self, txid: str) -> list[tuple[str, int]]:
        """``(voter, approve)`` of every stored vote on ``txid``: the votes table's and
        those written inline with the transaction's row."""
        rows = self.store.query("SELECT voter, approve FROM votes WHERE txid=?", (txid,))
        inline = self.store.one("SELECT inline_votes FROM txs WHERE txid=?", (txid,))
        return [(v, a) for v, a in rows] + _inline(inline[0] if inline else None)

    # -- time -------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Reject every transaction that waited past FINALITY_TIMEOUT; returns how many."""
        now = self.clock() if now is None else now
        late = [p for p in self.pending.values()
                if p.accepted_at + self.finality_timeout <= now]
        if not late:
            return 0

        def step(s: _Step) -> None:
            for p in late:
                self._reject(s, p, "finality timeout")
        self._run(step)
        return len(late)

    def make_block(self) -> dict[str, Any]:
        """Confirm every finalized transaction in a new block; returns the block."""
        final = list(self.unconfirmed.values())
        txids = [f.tx.txid for f in final]
        height = self.height + 1
        ts = max(int(self.clock()), self.tip_timestamp)
        prev = self.tip
        h = block_hash(height, prev, ts, txids, self.public_key)
        block = {"height": height, "hash": h, "prev_hash": prev, "timestamp": ts,
                 "txids": txids, "producer": self.public_key}

        def step(s: _Step) -> None:
            s.blocks.append((height, h, prev, ts, orjson.dumps(txids), self.public_key))
            for f in final:
                for op in f.tx.outpoints():
                    s.move(op, "Confirmed", f.raw, height=height)
                s.tx_status[f.tx.txid] = ("confirmed", None, None, height)
                s.event("TransactionConfirmed", {"txid": f.tx.txid, "block_height": height,
                                                 "block_hash": h}, f.addresses)
            s.event("NewBlock", {"height": height, "hash": h, "prev_hash": prev,
                                 "timestamp": ts, "tx_count": len(txids)}, None)

            def done() -> None:
                # A Confirmed coin never moves again: memory keeps the live set only
                # (flat however long the node runs); reads fall back to the database.
                for f in final:
                    for op in f.tx.outpoints():
                        self.utxos.forget(*op)
                for t in txids:
                    self.unconfirmed.pop(t, None)
                self.height, self.tip, self.tip_timestamp = height, h, ts
                self.outcomes["confirmed"] += len(txids)
            s.after.append(done)

        self._run(step)
        return block

    # -- reads ------------------------------------------------------------------------

    def status_of(self, txid: str) -> str | None:
        """pending, finalized, confirmed, rejected, or None for an unknown txid."""
        if txid in self.pending:
            return "pending"
        if txid in self.unconfirmed:
            return "finalized"
        staged = self._writes.tx_status(txid)
        if staged is not None:
            return staged
        row = self.store.one("SELECT status FROM txs WHERE txid=?", (txid,))
        return None if row is None else str(row[0])

    def get_transaction(self, txid: Any) -> dict[str, Any]:
        """``{txid, status, votes, quorum, block_height, tx}``; raises NOT_FOUND."""
        if not isinstance(txid, str) or not TXID.fullmatch(txid):
            raise LedgerError("BAD_REQUEST", "txid must be 64 lowercase hex characters")
        self._flush_staged()
        row = self.store.one("SELECT raw, status, block_height, reason FROM txs WHERE txid=?",
                             (txid,))
        if row is None:
            raise LedgerError("NOT_FOUND", f"unknown transaction {txid}")
        votes = sum(1 for _, approve in self._stored_votes(txid) if approve)
        out = {"txid": txid, "status": row[1], "votes": votes, "quorum": self.quorum,
               "block_height": row[2], "tx": orjson.loads(row[0])}
        if row[3]:
            out["reason"] = row[3]
        return out

    def get_txout(self, txid: str, vout: int) -> dict[str, Any] | None:
        """One UTXO's record, or None when the outpoint is unknown."""
        try:
            address, amount, state, spender, votes, height = self.utxos.get(txid, vout)
        except UnknownOutpoint:
            row = self._stored_utxo((txid, vout))
            if row is None:
                return None
            address, amount, state, spender, votes, height = row
        return {"txid": txid, "vout": vout, "address": address, "amount": amount,
                "state": state, "spending_txid": spender, "votes": votes,
                "block_height": height}

    def list_unspent(self, address: str) -> list[dict[str, Any]]:
        """The address's UTXOs that are not yet spent-final."""
        out = []
        for txid, vout in self.utxos.by_address(address):
            _, amount, state, _, _, _ = self.utxos.get(txid, vout)
            if state in SPENDABLE_OR_PENDING:
                out.append({"txid": txid, "vout": vout, "address": address,
                            "amount": amount, "state": state})
        return out

    def balance(self, address: str) -> int:
        """Sum of the address's Unspent UTXOs."""
        return self.utxos.balance(address)

    def snapshot(self, address: str, after: tuple[str, int] | None = None,
                 limit: int = SNAPSHOT_PAGE) -> dict[str, Any]:
        """``{balance, utxos}``: the address's balance and one page of the UTXOs it
        owns with their state (SPEC 3.1).

        A page holds at most ``limit`` UTXOs, largest amount first, then txid, then
        vout, starting after the coin ``after`` (the last of the previous page);
        when more follow it also has ``more: true`` and ``utxo_count``.  A coin
        whose spend is confirmed in a block (``Confirmed``) is no longer owned and
        is not listed; ``gettxout`` still answers for it.  Raises ``LedgerError``
        (BAD_REQUEST) when ``after`` names no coin of the address.
        """
        coins = []
        balance = 0
        get = self.utxos.get
        for txid, vout in self.utxos.by_address(address):
            _, amount, state, spender, votes, height = get(txid, vout)
            coins.append((-amount, txid, vout, state, spender, votes, height))
            if state == "Unspent":
                balance += amount
        start = 0
        if after is not None:
            rec = self.get_txout(*after)
            if rec is None or rec["address"] != address:
                raise LedgerError("BAD_REQUEST", f"after: {after[0]}:{after[1]} is not a "
                                  f"coin of {address}")
            key = (-rec["amount"], after[0], after[1])
            # Sorted once per request, then a binary search for the cursor: the
            # order is total (txid and vout break ties), so a page never repeats
            # or skips a coin that stays owned between requests.
            coins.sort()
            start = bisect_right(coins, key, key=lambda c: c[:3])
            page = coins[start:start + limit]
        else:
            page = heapq.nsmallest(limit, coins) if len(coins) > limit else sorted(coins)
        out: dict[str, Any] = {"balance": balance, "utxos": [
            {"txid": t, "vout": v, "amount": -neg, "state": st, "spending_txid": sp,
             "votes": vo, "block_height": h} for neg, t, v, st, sp, vo, h in page]}
        if start + len(page) < len(coins):
            out["more"] = True
            out["utxo_count"] = len(coins)
        return out

    def get_block(self, ref: int | str) -> dict[str, Any]:
        """A block by height or hash; raises NOT_FOUND."""
        if isinstance(ref, bool) or not isinstance(ref, int | str):
            raise LedgerError("BAD_REQUEST", "block reference must be a height or a hash")
        self._flush_staged()
        if isinstance(ref, int):
            row = self.store.one("SELECT * FROM blocks WHERE height=?", (ref,))
        elif ref.isascii() and ref.isdigit():  # "²" is a digit to isdigit, not to int
            row = self.store.one("SELECT * FROM blocks WHERE height=?", (int(ref),))
        else:
            row = self.store.one("SELECT * FROM blocks WHERE hash=?", (ref.lower(),))
        if row is None:
            raise LedgerError("NOT_FOUND", f"no block {ref}")
        return {"height": row[0], "hash": row[1], "prev_hash": row[2], "timestamp": row[3],
                "txids": orjson.loads(row[4]), "producer": row[5]}

    def events_after(self, seq: int) -> tuple[bool, list[Event]]:
        """Kept events with ``seq`` above the argument; False if some were dropped."""
        if seq >= self.seq:
            return True, []
        if not self.recent or self.recent[0].seq > seq + 1:
            return False, []
        start = seq + 1 - self.recent[0].seq
        return True, [self.recent[i] for i in range(start, len(self.recent))]

    # -- regtest ----------------------------------------------------------------------

    def faucet(self, address: str, amount: int) -> str:
        """Regtest only: pay ``amount`` from the faucet to ``address``; returns the txid."""
        if self.network != "regtest":
            raise LedgerError("BAD_REQUEST", "the faucet exists only on regtest")
        self.check_address(address)
        if type(amount) is not int or amount <= 0:
            raise LedgerError("BAD_REQUEST", "amount must be a positive integer")
        faucet = address_of(public_key_hex(FAUCET_KEY), self.network)
        picked: list[tuple[str, int, SigningKey]] = []
        total = 0
        # Newest first: the faucet's change is its newest coin, so a busy faucet
        # finds one at once however long its history.
        for t, v, value in reversed(self.utxos.unspent(faucet)):
            picked.append((t, v, FAUCET_KEY))
            total += value
            if total >= amount:
                break
        if total < amount:
            raise LedgerError("BAD_REQUEST", "the faucet has no unspent coins for that amount"
                              " now (its change returns once its last payment finalizes)")
        outputs = [(address, amount)]
        if total > amount:
            outputs.append((faucet, total - amount))
        tx = build(picked, outputs, timestamp=int(self.clock()))
        return self.submit(tx.to_json())


__all__ = ["Event", "Ledger", "LedgerError", "StorageError", "block_hash"]
