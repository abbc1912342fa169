"""The events journal: typed ledger changes, the wallet payloads made of them, replay.

The ledger speaks in typed changes (a coin moved, a transaction accepted, finalized,
rejected or confirmed, a block added, a vote recorded): whoever listens to the
ledger, wallets or peers, gets those.  The journal turns the changes wallets hear
of into ``Event``s: the exact JSON bytes wallets receive, each with its ``seq``,
serialized once, stored in the same commit as the change (``tables.EventRow``) and
kept in a window for resume (SPEC 3.5).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from timefast.storage import StorageError
from timefast.tables import EventRow


@dataclass(slots=True)
class Event:
    """One pushed event: ``payload`` is the exact JSON message wallets receive.

    Shared by every connection and the replay window, and never changed once made
    (not frozen only because a frozen dataclass costs several times as much to
    build, and a payment makes seven).

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


# -- typed changes ------------------------------------------------------------------
# Plain (not frozen) slotted dataclasses: a payment makes about ten of them, and a
# frozen one costs several times as much to build.  Listeners read them, never
# change them.
# ``raw`` is a transaction's JSON, serialized once and spliced into every event that
# carries it.  ``addresses`` are those a transaction touches (its inputs' and
# outputs'), the wallets that hear of it.


@dataclass(slots=True)
class UtxoMoved:
    """A coin was created (``prev_state`` None) or changed state."""

    txid: str
    vout: int
    address: str
    amount: int
    state: str
    prev_state: str | None
    spender: str | None
    votes: int
    height: int | None
    raw: bytes | None  # the spending or creating transaction


@dataclass(slots=True)
class TxAccepted:
    """A transaction was accepted and waits for votes."""

    txid: str
    raw: bytes
    addresses: tuple[str, ...]


@dataclass(slots=True)
class TxFinalized:
    """A transaction reached quorum."""

    txid: str
    votes: int
    addresses: tuple[str, ...]


@dataclass(slots=True)
class TxRejected:
    """A transaction was rejected for good."""

    txid: str
    reason: str
    addresses: tuple[str, ...]


@dataclass(slots=True)
class TxConfirmed:
    """A block holds a transaction."""

    txid: str
    height: int
    block_hash: str
    addresses: tuple[str, ...]


@dataclass(slots=True)
class BlockAdded:
    """A block extends the chain."""

    height: int
    hash: str
    prev_hash: str
    timestamp: int
    txids: tuple[str, ...]


@dataclass(slots=True)
class VoteRecorded:
    """A masternode's vote was stored (wallets hear of its effect, not of the vote)."""

    txid: str
    voter: str
    approve: bool
    signature: str


Change = UtxoMoved | TxAccepted | TxFinalized | TxRejected | TxConfirmed | BlockAdded \
    | VoteRecorded

_TXID_HEAD = b'{"txid":"'
# A UtxoStateChange carries its transaction whole up to this many bytes of JSON,
# else {"txid", "size"} (SPEC 3.2): a thousand outputs must not carry it a thousand
# times.
TX_INLINE_MAX = 4096


def _txid_in(tx: bytes) -> str:
    """The txid of a transaction's JSON (``{"txid":"...``, as the ledger writes it)."""
    return tx[len(_TXID_HEAD):len(_TXID_HEAD) + 64].decode()


def kept(data: bytes) -> bytes:
    """A right-sized copy of orjson output that is kept.

    orjson returns its bytes inside the 4 KiB buffer it wrote them to, whatever
    their length: 100,000 kept events of 1 KB would hold 400 MB instead of 100.
    """
    return bytes(memoryview(data))


def events_of_rows(rows: Iterable[tuple[int, str, bytes | None, bytes, str | None,
                                       int | None]],
                   raw_of: Callable[[str], bytes | None]) -> Iterator[Event]:
    """Events of stored rows (``Tables.events_from``); ``raw_of(txid)`` reads a
    transaction's JSON, once per transaction however many events name it."""
    txs: dict[str, bytes] = {}
    for seq, type_, addrs, payload, ref, at in rows:
        raw = None
        if at is not None and ref is not None:
            raw = txs.get(ref)
            if raw is None:
                raw = raw_of(ref)
                if raw is None:
                    raise StorageError("an event names a transaction the database "
                                       "does not hold")
                txs[ref] = raw
        yield Event(seq, type_, None if addrs is None else tuple(orjson.loads(addrs)),
                    payload, raw, at or 0)


class Journal:
    """Wallet events of ledger changes, and the window of those kept for resume."""

    def __init__(self, keep: int, quorum: int, keep_bytes: int = 256 << 20) -> None:
        self.keep = max(1, keep)
        self.keep_bytes = keep_bytes
        self.quorum = quorum
        # The replay window: at most ``keep`` events and ``keep_bytes`` bytes of
        # payload (``recent_bytes``), whichever binds first (SPEC 3.2).
        self.recent: deque[Event] = deque()
        self.recent_bytes = 0
        # The same window by address, and its broadcasts (NewBlock): a resuming
        # wallet's replay is found from its own addresses' events, newest first,
        # never by a scan of the whole window (a restart brings every wallet back
        # at once).  Invariant: an event is in ``by_address[a]`` for each of its
        # addresses, or in ``broadcasts``, exactly while it is in ``recent``; each
        # deque is in seq order, and no deque is empty.
        self.by_address: dict[str, deque[Event]] = {}
        self.broadcasts: deque[Event] = deque()

    def payload_of(self, change: Change) -> tuple[str, dict[str, Any],
                                                  tuple[str, ...] | None,
                                                  bytes | None, bytes] | None:
        """``(type, data, addresses, embedded tx, its key)`` of the wallet event
        ``change`` makes, or None when wallets do not hear of it."""
        if isinstance(change, UtxoMoved):
            data: dict[str, Any] = {
                "outpoint": {"txid": change.txid, "vout": change.vout},
                "address": change.address, "amount": change.amount, "state": change.state,
                "prev_state": change.prev_state, "spending_txid": change.spender,
                "votes": change.votes, "quorum": self.quorum,
                "block_height": change.height,
            }
            raw = change.raw
            if raw is None:
                data["transaction"] = None
            elif len(raw) > TX_INLINE_MAX:
                data["transaction"] = {"txid": _txid_in(raw), "size": len(raw)}
                raw = None
            return "UtxoStateChange", data, (change.address,), raw, b"transaction"
        if isinstance(change, TxAccepted):
            return "TransactionPending", {}, change.addresses, change.raw, b"tx"
        if isinstance(change, TxFinalized):
            return ("TransactionFinalized", {"txid": change.txid, "block_height": None,
                                             "votes": change.votes, "quorum": self.quorum},
                    change.addresses, None, b"")
        if isinstance(change, TxRejected):
            return ("TransactionRejected", {"txid": change.txid, "reason": change.reason},
                    change.addresses, None, b"")
        if isinstance(change, TxConfirmed):
            return ("TransactionConfirmed", {"txid": change.txid,
                                             "block_height": change.height,
                                             "block_hash": change.block_hash},
                    change.addresses, None, b"")
        if isinstance(change, BlockAdded):
            return ("NewBlock", {"height": change.height, "hash": change.hash,
                                 "prev_hash": change.prev_hash,
                                 "timestamp": change.timestamp,
                                 "tx_count": len(change.txids)}, None, None, b"")
        return None

    def record(self, change: Change, seq: int) -> tuple[Event, EventRow] | None:
        """The event ``change`` makes under ``seq``, and its stored row; None when
        wallets do not hear of the change.

        An event that embeds its transaction is stored without it, naming it by
        txid and offset instead: the JSON is in the ``txs`` row already, and a
        payment would otherwise write it again in each of its half-dozen events
        (the database is most of what the ledger does per payment).
        ``load`` puts it back at start-up (one copy per transaction).
        """
        made = self.payload_of(change)
        if made is None:
            return None
        type_, data, addresses, tx, tx_key = made
        ref: str | None = None
        at: int | None = None
        if tx is not None and tx.startswith(_TXID_HEAD):
            # The bytes orjson would give for the whole object, assembled around
            # the transaction so that both forms come from one serialization.
            head = orjson.dumps({"type": type_, "data": data})[:-2]
            head += (b',"' if data else b'"') + tx_key + b'":'
            tail = b',"seq":%d}}' % seq
            stored = head + tail
            ref, at = _txid_in(tx), len(head)
        else:
            if tx is not None:
                data[tx_key.decode()] = orjson.Fragment(tx)
            data["seq"] = seq
            stored = kept(orjson.dumps({"type": type_, "data": data}))
            tx = None
        row = EventRow(seq, type_, None if addresses is None else orjson.dumps(addresses),
                       stored, ref, at)
        return Event(seq, type_, addresses, stored, tx, at or 0), row

    # -- the replay window ------------------------------------------------------------

    def load(self, rows: Iterable[tuple[int, str, bytes | None, bytes, str | None,
                                        int | None]],
             raw_of: Callable[[str], bytes | None]) -> None:
        """Fill the window from stored rows (``Tables.events_from``); ``raw_of(txid)``
        reads a transaction's JSON.  The window is trimmed as it fills."""
        self.recent.clear()
        self.recent_bytes = 0
        self.by_address.clear()
        self.broadcasts.clear()
        for e in events_of_rows(rows, raw_of):
            self.keep_events([e])

    def keep_events(self, events: Iterable[Event]) -> None:
        """Add committed events to the window, dropping its oldest past either bound
        (one event, however large, is always kept)."""
        recent, by_address = self.recent, self.by_address
        for e in events:
            recent.append(e)
            self.recent_bytes += e.size
            if e.addresses is None:
                self.broadcasts.append(e)
            else:
                for a in e.addresses:
                    q = by_address.get(a)
                    if q is None:
                        q = by_address[a] = deque()
                    if not q or q[-1] is not e:  # an address named twice
                        q.append(e)
        while len(recent) > 1 and (len(recent) > self.keep
                                   or self.recent_bytes > self.keep_bytes):
            old = recent.popleft()
            self.recent_bytes -= old.size
            # The oldest kept event is the oldest in each of its deques.
            if old.addresses is None:
                self.broadcasts.popleft()
                continue
            for a in old.addresses:
                q = by_address.get(a)
                if q and q[0] is old:
                    q.popleft()
                    if not q:
                        del by_address[a]

    def oldest(self, now: int) -> int:
        """The lowest ``seq`` a wallet may resume from and miss nothing (``now``
        when no event is kept)."""
        return self.recent[0].seq - 1 if self.recent else now

    def events_after(self, seq: int, now: int) -> tuple[bool, list[Event]]:
        """Kept events with ``seq`` above the argument; False if some were dropped."""
        if seq >= now:
            return True, []
        if not self.recent or self.recent[0].seq > seq + 1:
            return False, []
        start = seq + 1 - self.recent[0].seq
        return True, [self.recent[i] for i in range(start, len(self.recent))]

    def events_for(self, addresses: Iterable[str], seq: int,
                   now: int) -> tuple[bool, list[Event]]:
        """Kept events with ``seq`` above the argument that name one of
        ``addresses`` or go to every connection, in seq order; False if some
        events after ``seq`` were dropped.  The cost follows the events found,
        not the window's length."""
        if seq >= now:
            return True, []
        if not self.recent or self.recent[0].seq > seq + 1:
            return False, []
        found: dict[int, Event] = {}
        for q in (self.broadcasts, *(self.by_address.get(a, ()) for a in addresses)):
            for e in reversed(q):
                if e.seq <= seq:
                    break
                found[e.seq] = e
        return True, [found[s] for s in sorted(found)]
