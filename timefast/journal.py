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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from timefast.storage import StorageError
from timefast.tables import EventRow


@dataclass(frozen=True, slots=True)
class Event:
    """One pushed event: ``payload`` is the exact JSON message wallets receive."""

    seq: int
    type: str
    addresses: tuple[str, ...] | None  # None: every connection (NewBlock)
    payload: bytes


# -- typed changes ------------------------------------------------------------------
# ``raw`` is a transaction's JSON, serialized once and spliced into every event that
# carries it.  ``addresses`` are those a transaction touches (its inputs' and
# outputs'), the wallets that hear of it.


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class TxAccepted:
    """A transaction was accepted and waits for votes."""

    txid: str
    raw: bytes
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TxFinalized:
    """A transaction reached quorum."""

    txid: str
    votes: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TxRejected:
    """A transaction was rejected for good."""

    txid: str
    reason: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TxConfirmed:
    """A block holds a transaction."""

    txid: str
    height: int
    block_hash: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BlockAdded:
    """A block extends the chain."""

    height: int
    hash: str
    prev_hash: str
    timestamp: int
    txids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VoteRecorded:
    """A masternode's vote was stored (wallets hear of its effect, not of the vote)."""

    txid: str
    voter: str
    approve: bool
    signature: str


Change = UtxoMoved | TxAccepted | TxFinalized | TxRejected | TxConfirmed | BlockAdded \
    | VoteRecorded

_TXID_HEAD = b'{"txid":"'


def kept(data: bytes) -> bytes:
    """A right-sized copy of orjson output that is kept.

    orjson returns its bytes inside the 4 KiB buffer it wrote them to, whatever
    their length: 100,000 kept events of 1 KB would hold 400 MB instead of 100.
    """
    return bytes(memoryview(data))


def _full_payload(stored: bytes, raw: bytes | None, at: int | None) -> bytes:
    """The event's payload from its stored form (see ``Journal.record``)."""
    if at is None:
        return stored
    if raw is None:
        raise StorageError("an event names a transaction the database does not hold")
    return stored[:at] + raw + stored[at:]


class Journal:
    """Wallet events of ledger changes, and the window of those kept for resume."""

    def __init__(self, keep: int, quorum: int) -> None:
        self.keep = max(1, keep)
        self.quorum = quorum
        self.recent: deque[Event] = deque(maxlen=self.keep)

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
            if change.raw is None:
                data["transaction"] = None
            return "UtxoStateChange", data, (change.address,), change.raw, b"transaction"
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
        ``_full_payload`` puts it back at start-up.
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
            payload = head + tx + tail
            stored = head + tail
            ref, at = tx[len(_TXID_HEAD):len(_TXID_HEAD) + 64].decode(), len(head)
        else:
            if tx is not None:
                data[tx_key.decode()] = orjson.Fragment(tx)
            data["seq"] = seq
            payload = stored = kept(orjson.dumps({"type": type_, "data": data}))
        row = EventRow(seq, type_, None if addresses is None else orjson.dumps(addresses),
                       stored, ref, at)
        return Event(seq, type_, addresses, payload), row

    # -- the replay window ------------------------------------------------------------

    def load(self, rows: Iterable[tuple[int, str, bytes | None, bytes, bytes | None,
                                        int | None]]) -> None:
        """Fill the window from stored rows (``Tables.events_from``)."""
        self.recent.clear()
        for seq, type_, addrs, payload, raw, at in rows:
            self.recent.append(Event(seq, type_, None if addrs is None
                                     else tuple(orjson.loads(addrs)),
                                     _full_payload(payload, raw, at)))

    def keep_events(self, events: Iterable[Event]) -> None:
        """Add committed events to the window."""
        self.recent.extend(events)

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
