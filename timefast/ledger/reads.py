"""Reads for wallets, the RPC and the page: transactions, UTXOs, balances, pages of
an address's UTXOs and history, blocks, the transactions in flight, and the kept
events (SPEC 3, 5).  Nothing here changes the ledger."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable
from itertools import islice
from typing import Any

import orjson

from timefast import wire
from timefast.crypto import TXID
from timefast.errors import UnknownOutpoint
from timefast.journal import Event, Journal, events_of_rows
from timefast.ledger.config import LedgerConfig
from timefast.ledger.pool import Pool
from timefast.ledger.work import Work
from timefast.rules import LedgerError
from timefast.tables import Tables
from timefast.transaction import ADDRESS_RE, U32

SPENDABLE_OR_PENDING = ("Unspent", "Locked", "SpentPending")
HISTORY_LIMIT = 1_000  # transactions on one page of GetHistory
SNAPSHOT_PAGE = 1000  # UTXOs per address in a snapshot or Utxos reply (SPEC 3.1)


class Reads:
    """The ledger's read side (see the module docstring)."""

    def __init__(self, config: LedgerConfig, pool: Pool, work: Work, tables: Tables,
                 journal: Journal) -> None:
        self.config = config
        self.pool = pool
        self.work = work
        self.tables = tables
        self.journal = journal

    # -- transactions and coins ------------------------------------------------------

    def get_transaction(self, txid: Any) -> dict[str, Any]:
        """``{txid, status, votes, quorum, block_height, tx}``; raises NOT_FOUND."""
        if not isinstance(txid, str) or not TXID.fullmatch(txid):
            raise LedgerError("BAD_REQUEST", "txid must be 64 lowercase hex characters")
        self.work.flush_staged()
        row = self.tables.tx(txid)
        if row is None:
            raise LedgerError("NOT_FOUND", f"unknown transaction {txid}")
        raw, status, block_height, reason = row
        votes = sum(1 for _, approve in self.tables.votes(txid) if approve)
        out = {"txid": txid, "status": status, "votes": votes, "quorum": self.config.quorum,
               "block_height": block_height, "tx": orjson.loads(raw)}
        if reason:
            out["reason"] = reason
        return out

    def get_txout(self, txid: str, vout: int) -> dict[str, Any] | None:
        """One UTXO's record, or None when the outpoint is unknown."""
        if not 0 <= vout <= U32:  # no output has that index (and SQLite could not hold it)
            return None
        try:
            address, amount, state, spender, votes, height = self.pool.utxos.get(txid, vout)
        except UnknownOutpoint:
            coin = self.pool.stored_utxo((txid, vout))
            if coin is None:
                return None
            address, amount, state, spender, votes, height = coin.values()
        return {"txid": txid, "vout": vout, "address": address, "amount": amount,
                "state": state, "spending_txid": spender, "votes": votes,
                "block_height": height}

    def list_unspent(self, address: str) -> list[dict[str, Any]]:
        """The address's UTXOs that are not yet spent-final."""
        out = []
        utxos = self.pool.utxos
        for txid, vout in utxos.by_address(address):
            _, amount, state, _, _, _ = utxos.get(txid, vout)
            if state in SPENDABLE_OR_PENDING:
                out.append({"txid": txid, "vout": vout, "address": address,
                            "amount": amount, "state": state})
        return out

    def balance(self, address: str) -> int:
        """Sum of the address's Unspent UTXOs."""
        return self.pool.utxos.balance(address)

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
        utxos = self.pool.utxos
        get = utxos.get
        for txid, vout in utxos.by_address(address):
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

    def history(self, address: Any, limit: Any = None, before: Any = None) -> dict[str, Any]:
        """``{address, balance, tx_count, txs, next}``: the transactions that paid to
        or spent from ``address``, newest first in the order this node first stored
        them (so a page never shifts when one confirms), at most ``limit`` (default
        50, at most 1,000) below the cursor ``before`` (a page's ``next``); each
        ``{txid, status, block_height, timestamp, received, sent}``, rejected ones
        included.  ``timestamp`` is the block's, or the acceptance time while
        unconfirmed; ``next`` is None on the last page."""
        if not isinstance(address, str) or not ADDRESS_RE.fullmatch(address):
            raise LedgerError("INVALID_ADDRESS", "address must be 1 to 128 of [A-Za-z0-9_]")
        limit = 50 if limit is None else limit
        if type(limit) is not int or not 1 <= limit <= HISTORY_LIMIT:
            raise LedgerError("BAD_REQUEST", f"limit must be an integer from 1 to {HISTORY_LIMIT}")
        if before is None:
            cursor = 1 << 62
        elif type(before) is int and before > 0:
            cursor = before
        elif isinstance(before, str) and before.isascii() and before.isdigit() \
                and 0 < len(before) < 19:
            cursor = int(before)
        else:
            raise LedgerError("BAD_REQUEST", "before must be the next of an earlier page")
        self.work.flush_staged()
        rows = self.tables.history_page(address, cursor, limit)
        txs = [{"txid": txid, "status": status, "block_height": height,
                "timestamp": int(accepted_at) if block_ts is None else block_ts,
                "received": received, "sent": sent}
               for _, txid, received, sent, status, height, accepted_at, block_ts in rows]
        last = rows[-1][0] if rows else 0
        return {"address": address, "balance": self.balance(address),
                "tx_count": self.tables.history_count(address), "txs": txs,
                "next": last if len(rows) == limit and last > 1 else None}

    # -- blocks --------------------------------------------------------------------------

    def get_block(self, ref: int | str, with_txs: bool = False) -> dict[str, Any]:
        """A block by height or hash: ``{height, hash, prev_hash, timestamp, txids,
        producer, round, commit}``; raises NOT_FOUND.  ``with_txs``: with its
        transactions (``txs``, in block order, the coinbase first)."""
        if isinstance(ref, bool) or not isinstance(ref, int | str):
            raise LedgerError("BAD_REQUEST", "block reference must be a height or a hash")
        self.work.flush_staged()
        if isinstance(ref, str) and ref.isascii() and ref.isdigit():
            ref = int(ref)  # "²" is a digit to isdigit, not to int: hence isascii
        if isinstance(ref, int):
            # A height past SQLite's 64-bit integers names no block; it is not a fault.
            row = self.tables.block(height=ref) if -(2**63) <= ref < 2**63 else None
        else:
            row = self.tables.block(hash_=ref.lower())
        if row is None:
            raise LedgerError("NOT_FOUND", f"no block {ref}")
        txids = orjson.loads(row.txids)
        # A block stored before commits (and genesis) shows ``commit: []``.
        out = {"height": row.height, "hash": row.hash, "prev_hash": row.prev_hash,
               "timestamp": row.timestamp, "txids": txids, "producer": row.producer,
               "round": row.round,
               "commit": [] if row.commit is None else orjson.loads(row.commit)}
        if with_txs:
            raw = self.tables.txs_raw(txids)
            out["txs"] = [orjson.loads(raw[t]) for t in txids]
        return out

    def block_at(self, height: int) -> wire.Block:
        """A stored block with its transactions and its commit (a peer catching up);
        raises NOT_FOUND."""
        return wire.Block.from_data(self.get_block(height, with_txs=True), "block")

    # -- in flight -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Transactions waiting for quorum (``pending``) and for a block
        (``unconfirmed``)."""
        return {"pending": len(self.pool.pending), "unconfirmed": len(self.pool.unconfirmed)}

    def in_flight(self, limit: int, now: float | None = None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Transactions awaiting quorum, with their tallies (``votes`` for,
        ``against``), and those finalized awaiting a block: at most ``limit`` of each,
        oldest first."""
        now = self.config.clock() if now is None else now
        quorum = self.config.quorum
        pending = [{"txid": txid, "votes": len(p.approvals), "against": len(p.rejections),
                    "quorum": quorum, "amount": sum(o.amount for o in p.tx.outputs),
                    "age_s": round(max(0.0, now - p.accepted_at), 3)}
                   for txid, p in islice(self.pool.pending.items(), limit)]
        unconfirmed = [{"txid": txid, "amount": sum(o.amount for o in f.tx.outputs)}
                       for txid, f in islice(self.pool.unconfirmed.items(), limit)]
        return pending, unconfirmed

    def outcome_counts(self) -> dict[str, int]:
        """Transactions by outcome since start: accepted, finalized, confirmed,
        rejected, and refused as invalid or conflicting."""
        return dict(self.pool.outcomes)

    # -- events --------------------------------------------------------------------------

    def events_after(self, seq: int) -> tuple[bool, list[Event]]:
        """Kept events with ``seq`` above the argument; False if some were dropped."""
        return self.journal.events_after(seq, self.work.seq)

    def events_for(self, addresses: Iterable[str], seq: int) -> tuple[bool, list[Event]]:
        """Kept events with ``seq`` above the argument that name one of ``addresses``
        or go to every connection (a resume's replay); False if some were dropped."""
        return self.journal.events_for(addresses, seq, self.work.seq)

    def oldest_seq(self) -> int:
        """The lowest ``seq`` a wallet may resume from and miss nothing."""
        return self.journal.oldest(self.work.seq)

    def stored_events(self, seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` committed events after ``seq``, read from the database
        (an event bus catching up: they may be older than the replay window)."""
        t = self.tables
        return list(events_of_rows(islice(t.events_from(seq), limit), t.tx_raw))
