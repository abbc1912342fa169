"""The ledger: state and the unit of work (SPEC 4).

Plain Python around the compiled ``UtxoTable``, with the rules in ``rules``, the
SQL in ``tables`` and the wallet events in ``journal``.  Every change is one
*step*: the step stages UTXO moves (checked against the transition table) and the
rows it changes, and only after they are committed applies the moves to the core,
updates the in-memory state and hands the changes to listeners.  A step that fails
(a rule, a full disk) leaves the core, the database and the listeners as they
were: durable before announced.

Entry points, for wallets, the RPC and next the peers: ``submit`` (a transaction),
``add_votes`` (votes of one masternode), ``accept_block`` (a block the network
committed), ``make_block`` (this node's block), ``expire`` (the timeout of a
one-masternode network).  The ledger never touches a socket.
"""

from __future__ import annotations

import heapq
import logging
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
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
    sign_vote,
    verify,
    vote_bytes,
)
from timefast.errors import IllegalTransition, LockConflict, UnknownOutpoint
from timefast.journal import (
    BlockAdded,
    Change,
    Event,
    Journal,
    TxAccepted,
    TxConfirmed,
    TxFinalized,
    TxRejected,
    UtxoMoved,
    VoteRecorded,
    events_of_rows,
    kept,
)
from timefast.rules import (
    FAUCET_KEY,
    GENESIS_SUPPLY,
    GENESIS_TIMESTAMP,
    ZERO_HASH,
    LedgerError,
    block_hash,
    check_address,
    check_block_header,
    check_transaction,
    genesis_transaction,
    quorum,
    signed_bytes,
    tally,
)
from timefast.storage import StorageError, Store, unavailable
from timefast.tables import BlockRow, Coin, HistoryRow, Rows, Tables, TxChange, TxRow, Vote
from timefast.transaction import ADDRESS_RE, U32, Transaction, TxFormatError, build, parse

log = logging.getLogger("timefast")

SPENDABLE_OR_PENDING = ("Unspent", "Locked", "SpentPending")
# Votes for a transaction this node has not seen yet are kept until it arrives:
# for at most this many transactions, and this many seconds.
EARLY_VOTES_MAX = 10_000
EARLY_VOTES_TTL = 600.0
# Addresses whose history count is kept in memory (cleared when full).
HISTORY_CACHE = 100_000
HISTORY_LIMIT = 1_000  # transactions on one page of GetHistory
SNAPSHOT_PAGE = 1000  # UTXOs per address in a snapshot or Utxos reply (SPEC 3.1)


@dataclass(slots=True)
class _Pending:
    tx: Transaction
    raw: bytes
    accepted_at: float
    addresses: tuple[str, ...]
    approvals: set[str] = field(default_factory=set)
    rejections: set[str] = field(default_factory=set)
    decided: bool = False  # finalized or rejected by a step that has not committed yet


@dataclass(slots=True)
class _Final:
    tx: Transaction
    raw: bytes
    addresses: tuple[str, ...]


class _Step:
    """Changes of one atomic ledger step (see the module docstring).

    A step never writes to the database itself: its rows go to the batch's rows
    when it succeeds (``Rows.absorb``), so a step that fails leaves nothing.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.seq = ledger.seq
        self.rows = Rows()
        self.changes: list[Change] = []
        self.events: list[Event] = []
        self.core_ops: list[Callable[[], Any]] = []
        self.after: list[Callable[[], None]] = []
        self.coins: dict[tuple[str, int], Coin] = {}
        # Pending transactions' tallies as they were before this step changed them.
        self.kept: dict[str, tuple[_Pending, set[str], set[str], bool]] = {}

    def keep(self, p: _Pending) -> None:
        """Remember ``p``'s tally before this step changes it (see ``undo``)."""
        if p.tx.txid not in self.kept:
            self.kept[p.tx.txid] = (p, set(p.approvals), set(p.rejections), p.decided)

    def undo(self) -> None:
        """Put back the tallies a refused step changed (nothing else of it is
        anywhere yet: its rows, core moves and events are still its own)."""
        for p, approvals, rejections, decided in self.kept.values():
            p.approvals, p.rejections, p.decided = approvals, rejections, decided

    def emit(self, change: Change) -> None:
        """Record one change, and the wallet event it makes (with the next ``seq``)."""
        self.changes.append(change)
        made = self.ledger.journal.record(change, self.seq + 1)
        if made is not None:
            self.seq += 1
            self.events.append(made[0])
            self.rows.events.append(made[1])

    def utxo(self, op: tuple[str, int]) -> Coin:
        """The UTXO's record as this step has it (a copy, changed by the step)."""
        coin = self.coins.get(op)
        if coin is None:
            coin = Coin(*self.ledger.utxos.get(*op))
            self.coins[op] = coin
        return coin

    def _moved(self, op: tuple[str, int], coin: Coin, prev: str | None,
               raw: bytes | None) -> None:
        self.emit(UtxoMoved(op[0], op[1], coin.address, coin.amount, coin.state, prev,
                            coin.spender, coin.votes, coin.height, raw))

    def lock(self, txid: str, ops: list[tuple[str, int]], raw: bytes) -> None:
        """Lock every input of ``txid`` (all or nothing; ``LockConflict``)."""
        self.ledger.utxos.check_lock(txid, ops)
        for op in ops:
            coin = self.utxo(op)
            coin.state, coin.spender = "Locked", txid
            self.rows.put_utxo(op, coin, False)
            self._moved(op, coin, "Unspent", raw)
        self.core_ops.append(lambda: self.ledger.utxos.lock(txid, ops))

    def move(self, op: tuple[str, int], state: str, raw: bytes | None,
             votes: int | None = None, height: int | None = None,
             spender: str | None = None) -> None:
        """Move one UTXO along the transition table (``IllegalTransition``);
        ``spender``: the transaction spending it from now on."""
        coin = self.utxo(op)
        prev = coin.state
        if not _core.allowed(prev, state):
            raise IllegalTransition(op[0], op[1], prev, state)
        coin.state = state
        if spender is not None:
            coin.spender = spender
        if state == "Unspent":
            coin.spender, coin.votes = None, 0
        if votes is not None:
            coin.votes = votes
        if height is not None:
            coin.height = height
        self.rows.put_utxo(op, coin, op in self.rows.new_utxos)
        self._moved(op, coin, prev, raw)
        self.core_ops.append(
            lambda: self.ledger.utxos.transition(op[0], op[1], state, votes, height, spender))

    def create(self, op: tuple[str, int], address: str, amount: int,
               raw: bytes | None, height: int | None = None) -> None:
        """A new Unspent coin (announced when ``raw``, its transaction, is given)."""
        coin = Coin(address, amount, "Unspent", None, 0, height)
        self.coins[op] = coin
        self.rows.put_utxo(op, coin, True)
        if raw is not None:
            self._moved(op, coin, None, raw)
        self.core_ops.append(
            lambda: self.ledger.utxos.add(op[0], op[1], address, amount, block_height=height))


class Ledger:
    """The node's state: UTXOs (in the core), transactions, votes, blocks, events."""

    def __init__(self, store: Store, network: str, key: SigningKey,
                 masternodes: Iterable[str] | None = None, finality_timeout: float = 10.0,
                 replay_events: int = 100_000, clock: Callable[[], float] = time.time,
                 replay_bytes: int = 256 << 20) -> None:
        if network not in ("mainnet", "testnet", "regtest"):
            raise ValueError(f"unknown network {network!r}")
        self.store = store
        self.tables = Tables(store)
        self.network = network
        self.key = key
        self.public_key = public_key_hex(key)
        self.address = address_of(self.public_key, network)
        voters = [m.lower() for m in (masternodes or [self.public_key])]
        for m in voters:
            if not is_public_key_hex(m):
                raise ValueError(f"masternode key {m!r} is not 64 hex characters")
        self.masternodes: tuple[str, ...] = tuple(dict.fromkeys(voters))
        self.quorum = quorum(len(self.masternodes))
        self.finality_timeout = finality_timeout
        self.replay_events = replay_events
        self.clock = clock
        self.utxos = _core.UtxoTable()
        self.journal = Journal(replay_events, self.quorum, replay_bytes)
        self.pending: dict[str, _Pending] = {}
        self.unconfirmed: dict[str, _Final] = {}
        self.seq = 0
        self.height = -1
        self.tip = ZERO_HASH
        self.tip_timestamp = 0
        # Wallet events of committed steps, and every typed change (peers).
        self.listeners: list[Callable[[list[Event]], None]] = []
        # With EVENT_BUS: the last event the bus has stored.  Stored events above it
        # are never pruned, so that the publisher can always catch up from SQLite.
        self.publish_floor: int | None = None
        self.watchers: list[Callable[[list[Change]], None]] = []
        # Inside ``batch()``: events and changes of committed-to-be steps.
        self._held: tuple[list[Event], list[Change]] | None = None
        # Rows of committed-to-be steps, written at the commit.
        self._rows = Rows()
        # (public key, signed bytes, signature) found good ahead of a batch.
        self._checked: set[tuple[bytes, bytes, bytes]] = set()
        # txid -> (first seen, votes) for transactions not seen yet, oldest first.
        self._early: OrderedDict[str, tuple[float, list[Vote]]] = OrderedDict()
        # address -> its highest history ``k`` in the database (see ``_index``).
        self._history_cache: dict[str, int] = {}
        self.outcomes = {"accepted": 0, "finalized": 0, "confirmed": 0, "rejected": 0,
                         "invalid": 0, "conflict": 0}
        self._load()

    @property
    def recent(self) -> Any:
        """The kept events, oldest first (the journal's window)."""
        return self.journal.recent

    # -- start-up ----------------------------------------------------------------

    def _load(self) -> None:
        t = self.tables
        self.utxos = _core.UtxoTable()
        self.pending.clear()
        self.unconfirmed.clear()
        self._rows.clear()
        self._history_cache.clear()
        if not t.has_blocks():
            self._genesis()
        if not t.history_built():
            self._build_history()
        self.seq = t.seq()
        self.height, self.tip, self.tip_timestamp = t.tip()
        # Confirmed coins stay on disk only (see ``make_block``).
        for row in t.live_coins():
            self.utxos.add(*row)
        for txid, raw, accepted_at, addrs, votes in t.pending_txs():
            p = _Pending(parse(orjson.loads(raw)), raw, accepted_at,
                         tuple(orjson.loads(addrs)))
            for voter, approve in votes:
                (p.approvals if approve else p.rejections).add(voter)
            self.pending[txid] = p
        for txid, raw, addrs in t.finalized_txs():
            self.unconfirmed[txid] = _Final(parse(orjson.loads(raw)), raw,
                                            tuple(orjson.loads(addrs)))
        self.journal.load(t.events_from(self.seq - self.replay_events), t.tx_raw)

    def _genesis(self) -> None:
        gtx = genesis_transaction(self.network)
        txids = [gtx.txid] if gtx else []
        h = block_hash(0, ZERO_HASH, GENESIS_TIMESTAMP, txids, "")
        block = BlockRow(0, h, ZERO_HASH, GENESIS_TIMESTAMP, orjson.dumps(txids), "")
        row = None
        coins: list[tuple[tuple[str, int], Coin]] = []
        if gtx is not None:
            row = TxRow(gtx.txid, orjson.dumps(gtx.to_json()), "confirmed",
                        GENESIS_TIMESTAMP, None, None, orjson.dumps(gtx.addresses()), 0)
            coins = [((gtx.txid, vout), Coin(o.address, o.amount, "Unspent", None, 0, 0))
                     for vout, o in enumerate(gtx.outputs)]
        with self.store.transaction() as db:
            self.tables.write_genesis(db, block, row, coins, self.network)

    def _build_history(self) -> None:
        """Index the transactions of a database from before the address history."""
        started = time.monotonic()
        log.info("📚 building the address history of the stored transactions (once)")
        n = self.tables.build_history(
            lambda done, total: log.info("📚 address history: %d of %d transactions",
                                         done, total))
        log.info("📚 address history built: %d transactions in %.1f s", n,
                 time.monotonic() - started)

    # -- the step machinery --------------------------------------------------------

    def _apply(self, step: _Step) -> None:
        self.seq = step.seq
        for op in step.core_ops:
            op()
        for f in step.after:
            f()
        self.journal.keep_events(step.events)

    def _announce(self, events: list[Event], changes: list[Change]) -> None:
        if events:
            for listener in self.listeners:
                listener(events)
        if changes:
            for watcher in self.watchers:
                watcher(changes)

    def _run(self, fn: Callable[[_Step], Any]) -> Any:
        step = _Step(self)
        try:
            result = fn(step)  # a refusal raises here, with nothing staged anywhere
        except BaseException:
            step.undo()  # tallies the step changed before it was refused
            raise
        self._rows.absorb(step.rows)
        if self._held is not None:
            # Inside a batch: later steps see this one's effects, but nobody hears
            # of it before the batch commits.
            self._apply(step)
            self._held[0].extend(step.events)
            self._held[1].extend(step.changes)
            return result
        committed = self._rows.history_last
        try:
            with self.store.transaction() as db:
                self._rows.flush(db)
                self.tables.write_seq(db, self.seq, step.seq, self.replay_events,
                                     self.publish_floor)
        except BaseException:
            # The step may have changed in-memory tallies before its commit failed.
            self._load()
            raise
        # Committed: now, and only now, the core, memory and listeners learn of it.
        self._remember(committed)
        self._apply(step)
        self._announce(step.events, step.changes)
        return result

    def _flush_staged(self) -> None:
        """Write the open batch's staged rows now, for a read that needs all of them."""
        if self._held is None or not self._rows:
            return
        written = self._rows.history_last
        try:
            self._rows.flush(self.store.db)
        except Exception as e:
            # The batch cannot commit any more: fail it whole (``batch`` reloads).
            self.store.failure = self.store.failure or str(e)
            raise StorageError(f"database write failed: {e}") from e
        # The cache follows what this connection reads (a failed batch clears it).
        self._remember(written)

    def _stored_utxo(self, op: tuple[str, int]) -> Coin | None:
        """A UTXO the core no longer holds (Confirmed): staged row or database row."""
        return self._rows.utxo(op) or self.tables.utxo(op)

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
        self._held = ([], [])
        seq_before = self.seq
        committed: dict[str, int] = {}
        try:
            with self.store.transaction() as db:
                yield
                committed = self._rows.history_last
                self._rows.flush(db)
                self.tables.write_seq(db, seq_before, self.seq, self.replay_events,
                                     self.publish_floor)
        except BaseException:
            self._held = None
            self._load()
            raise
        (events, changes), self._held = self._held, None
        self._remember(committed)
        self._announce(events, changes)

    # -- transactions ----------------------------------------------------------------

    def _refuse(self, e: LedgerError) -> LedgerError:
        self.outcomes["conflict" if e.code == "TX_CONFLICT" else "invalid"] += 1
        return e

    def check_address(self, address: object, what: str = "address") -> str:
        """An output address of this network, or ``LedgerError(INVALID_ADDRESS)``."""
        return check_address(address, self.network, what)

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

    def _good_signature(self, pk: bytes, msg: bytes, sig: bytes) -> bool:
        return (pk, msg, sig) in self._checked or verify(pk, msg, sig)

    def _coin(self, txid: str, vout: int) -> tuple[str, int, str, str | None] | None:
        """A coin for ``rules.check_transaction``: live, or stored once Confirmed."""
        try:
            address, amount, state, spender, _, _ = self.utxos.get(txid, vout)
        except UnknownOutpoint:
            spent = self._stored_utxo((txid, vout))
            if spent is None:
                return None
            return spent.address, spent.amount, spent.state, spent.spender
        return address, amount, state, spender

    def submit(self, obj: Any) -> str:
        """Validate and accept a transaction; returns its txid (idempotent).

        ``obj`` is the upstream JSON object, or a ``Transaction`` from ``prepare``.

        Raises ``LedgerError`` with ``TX_INVALID`` or ``TX_CONFLICT``, or
        ``StorageError`` when it could not be stored (nothing is then accepted).
        """
        try:
            tx = obj if isinstance(obj, Transaction) else parse(obj)
            msg = signed_bytes(tx)
        except TxFormatError as e:
            raise self._refuse(LedgerError("TX_INVALID", str(e))) from None
        except LedgerError as e:
            raise self._refuse(e) from None
        known = self.status_of(tx.txid)
        if known not in (None, "rejected"):
            return tx.txid
        try:
            _, spent = check_transaction(tx, msg, self.network, self._coin,
                                         self._good_signature)
        except LedgerError as e:
            raise self._refuse(e) from None
        addresses = tuple(dict.fromkeys([*(a for a, _ in spent), *tx.addresses()]))
        raw = kept(orjson.dumps(tx.to_json()))
        now = self.clock()
        ops = tx.outpoints()

        def step(s: _Step) -> str:
            try:
                s.lock(tx.txid, ops, raw)
            except LockConflict as e:
                raise self._refuse(LedgerError("TX_CONFLICT", f"TX_CONFLICT: {e}")) from None
            if known == "rejected":
                # A transaction rejected earlier may be tried again: its old votes go.
                s.rows.clear_votes(tx.txid)
            else:
                self._index(s, tx, spent)
            s.rows.add_tx(TxRow(tx.txid, raw, "pending", now, None, None,
                                orjson.dumps(addresses), None))
            s.emit(TxAccepted(tx.txid, raw, addresses))
            p = _Pending(tx, raw, now, addresses)
            s.after.append(lambda: self.pending.__setitem__(tx.txid, p))
            s.after.append(lambda: self.outcomes.__setitem__(
                "accepted", self.outcomes["accepted"] + 1))
            if self.public_key in self.masternodes:
                own = sign_vote(self.key, tx.txid, True)
                self._record_vote(s, p, Vote(tx.txid, self.public_key, True,
                                             str(own["signature"])))
            early = self._early.get(tx.txid)
            if early is not None:
                for vote in early[1]:
                    if vote.voter != self.public_key:
                        self._record_vote(s, p, vote)
                s.after.append(lambda: self._forget_early(tx.txid))
            return tx.txid

        return str(self._run(step))

    def _index(self, s: _Step, tx: Transaction, spent: list[tuple[str, int]]) -> None:
        """Stage ``tx`` in the history of every address it pays or spends from."""
        flows: dict[str, list[int]] = {}
        for o in tx.outputs:
            flows.setdefault(o.address, [0, 0])[0] += o.amount
        for address, amount in spent:
            flows.setdefault(address, [0, 0])[1] += amount
        for address, (received, sent) in flows.items():
            k = (s.rows.history_last.get(address) or self._rows.history_last.get(address)
                 or self._history_last(address)) + 1
            s.rows.add_history(HistoryRow(address, k, tx.txid, received, sent))

    def _history_last(self, address: str) -> int:
        """The highest ``k`` stored for ``address`` (a cache of the database's)."""
        k = self._history_cache.get(address)
        if k is None:
            if len(self._history_cache) >= HISTORY_CACHE:
                self._history_cache.clear()
            k = self._history_cache[address] = self.tables.history_count(address)
        return k

    def _remember(self, written: dict[str, int]) -> None:
        """History counts just written: the cache learns those it holds."""
        cache = self._history_cache
        for address, k in written.items():
            if address in cache:
                cache[address] = k

    def _record_vote(self, s: _Step, p: _Pending | None, vote: Vote) -> None:
        s.rows.add_vote(vote)
        s.changes.append(VoteRecorded(*vote))
        if p is None or p.decided:
            return
        s.keep(p)
        (p.approvals if vote.approve else p.rejections).add(vote.voter)
        decision = tally(len(p.approvals), len(p.rejections), len(self.masternodes))
        if decision == "finalized":
            self._finalize(s, p)
        elif decision == "rejected":
            self._reject(s, p, "quorum against")
        elif vote.approve:
            for op in p.tx.outpoints():
                s.move(op, "SpentPending", p.raw, votes=len(p.approvals))

    def _finalize(self, s: _Step, p: _Pending) -> None:
        s.keep(p)
        p.decided = True
        votes = len(p.approvals)
        txid = p.tx.txid
        for op in p.tx.outpoints():
            if s.utxo(op).state == "Locked":
                s.move(op, "SpentPending", p.raw, votes=votes)
            s.move(op, "SpentFinalized", p.raw, votes=votes)
        for vout, o in enumerate(p.tx.outputs):
            s.create((txid, vout), o.address, o.amount, p.raw)
        s.emit(TxFinalized(txid, votes, p.addresses))
        s.rows.set_tx(txid, TxChange("finalized", finalized_seq=s.seq))
        final = _Final(p.tx, p.raw, p.addresses)

        def done() -> None:
            self.pending.pop(txid, None)
            self.unconfirmed[txid] = final
            self.outcomes["finalized"] += 1
        s.after.append(done)

    def _reject(self, s: _Step, p: _Pending, reason: str,
                keep: set[tuple[str, int]] | frozenset[tuple[str, int]] = frozenset()
                ) -> None:
        """Reject ``p``: its inputs go back to Unspent, but for those in ``keep``
        (which the winning conflicting transaction moves itself)."""
        s.keep(p)
        p.decided = True
        txid = p.tx.txid
        for op in p.tx.outpoints():
            if op not in keep:
                s.move(op, "Unspent", p.raw)
        s.emit(TxRejected(txid, reason, p.addresses))
        s.rows.set_tx(txid, TxChange("rejected", reason=reason))

        def done() -> None:
            self.pending.pop(txid, None)
            self.outcomes["rejected"] += 1
        s.after.append(done)

    # -- votes ------------------------------------------------------------------------

    def submit_vote(self, vote: Any) -> dict[str, Any]:
        """Take a masternode's signed vote (the RPC's ``submitvote``); returns the
        transaction's status after it (None while the transaction is not seen yet:
        the vote is kept until it arrives)."""
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
        if self._has_vote(txid, voter):
            raise LedgerError("BAD_REQUEST", f"duplicate vote by {voter} on {txid}")
        self.add_votes(voter, [(txid, approve, sig.lower())], verified=True)
        return {"txid": txid, "status": self.status_of(txid)}

    def _has_vote(self, txid: str, voter: str) -> bool:
        early = self._early.get(txid)
        if early is not None and any(v.voter == voter for v in early[1]):
            return True
        voted = self._rows.has_vote(txid, voter)
        if voted is None:
            voted = any(v == voter for v, _ in self.tables.votes(txid))
        return voted

    def add_votes(self, voter: str, votes: Sequence[tuple[str, bool, str]],
                  verified: bool = False) -> None:
        """Take votes of one masternode of the voting set: ``(txid, approve,
        signature)`` each, in one step.

        ``verified``: the caller has checked the signatures (a peer's signed batch);
        otherwise each is checked here in the upstream ``TIMEVOTE`` form and a bad one
        refuses them all.  A vote on a transaction already voted on by ``voter`` is
        ignored; one on a transaction not seen yet is kept (at most
        ``EARLY_VOTES_MAX`` transactions, for ``EARLY_VOTES_TTL`` seconds) and counted
        when it arrives.
        """
        voter = voter.lower()
        if voter not in self.masternodes:
            raise LedgerError("BAD_REQUEST", f"voter {voter} is not in the masternode set")
        if not verified:
            for txid, approve, sig in votes:
                if not verify(bytes.fromhex(voter), vote_bytes(txid, approve),
                              bytes.fromhex(sig)):
                    raise LedgerError("BAD_REQUEST", "bad vote signature")
        now = self.clock()
        known: list[tuple[_Pending | None, Vote]] = []
        for txid, approve, sig in votes:
            vote = Vote(txid, voter, approve, sig)
            if self._has_vote(txid, voter):
                continue
            p = self.pending.get(txid)
            if p is None and self.status_of(txid) is None:
                self._keep_early(vote, now)
            else:
                known.append((p, vote))
        if known:
            def step(s: _Step) -> None:
                for p, vote in known:
                    self._record_vote(s, p, vote)
            self._run(step)

    def _forget_early(self, txid: str) -> None:
        self._early.pop(txid, None)

    def _keep_early(self, vote: Vote, now: float) -> None:
        while self._early:
            txid, (seen, _) = next(iter(self._early.items()))
            if seen + EARLY_VOTES_TTL > now and len(self._early) < EARLY_VOTES_MAX:
                break
            del self._early[txid]
        entry = self._early.get(vote.txid)
        if entry is None:
            self._early[vote.txid] = (now, [vote])
        elif len(entry[1]) < len(self.masternodes):
            entry[1].append(vote)

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

    # -- blocks -----------------------------------------------------------------------

    def make_block(self) -> dict[str, Any]:
        """Confirm every finalized transaction in a new block made by this node;
        returns the block's header."""
        final = list(self.unconfirmed.values())
        txids = [f.tx.txid for f in final]
        height = self.height + 1
        ts = max(int(self.clock()), self.tip_timestamp)
        h = block_hash(height, self.tip, ts, txids, self.public_key)
        block = {"height": height, "hash": h, "prev_hash": self.tip, "timestamp": ts,
                 "txids": txids, "producer": self.public_key}
        self._run(lambda s: self._add_block(s, block, final, None))
        return block

    def accept_block(self, block: Any, commit: Any = None) -> None:
        """Apply a block the network committed (header, ``txs`` for the transactions
        this node may not hold, and its ``commit``, kept as given).

        Each transaction must be finalized here already, or valid against the chain
        as the block has it (parents before children): one first learnt from the
        block goes ``SpentFinalized`` then ``Confirmed`` on its inputs, with
        ``TransactionFinalized`` then ``TransactionConfirmed``; a pending one that
        spends the same coins is rejected (``conflict``).  Raises ``LedgerError``
        (BAD_REQUEST) for a block that is not the valid next one, with nothing
        changed.
        """
        _, _, _, txids, _ = check_block_header(block, self.height + 1, self.tip,
                                               self.tip_timestamp)
        given: dict[str, Any] = {}
        for obj in block.get("txs") or []:
            if isinstance(obj, dict) and isinstance(obj.get("txid"), str):
                given[obj["txid"]] = obj
        wanted = [t for t in txids if t not in self.unconfirmed]
        stored = self.tables.txs_raw([t for t in wanted if t not in given])
        header = {k: block[k] for k in ("height", "hash", "prev_hash", "timestamp", "txids",
                                        "producer")}

        def step(s: _Step) -> None:
            final: list[_Final] = []
            for txid in txids:
                f = self.unconfirmed.get(txid)
                if f is None:
                    f = self._learn(s, txid, given.get(txid), stored.get(txid))
                final.append(f)
            self._add_block(s, header, final, commit)
        self._run(step)

    def _learn(self, s: _Step, txid: str, obj: Any, stored: bytes | None) -> _Final:
        """Finalize, inside a block's step, a transaction the block holds."""
        if self.status_of(txid) in ("confirmed", "finalized"):
            raise LedgerError("BAD_REQUEST", f"transaction {txid} is already in a block")
        if obj is None and stored is not None:
            obj = orjson.loads(stored)
        if obj is None:
            raise LedgerError("BAD_REQUEST", f"the block does not carry transaction {txid}")
        try:
            tx = parse(obj)
            msg = signed_bytes(tx)
        except (TxFormatError, LedgerError) as e:
            raise LedgerError("BAD_REQUEST", f"transaction {txid}: {e}") from None
        if tx.txid != txid:
            raise LedgerError("BAD_REQUEST", f"transaction {txid} does not match its txid")
        p = self.pending.get(txid)
        if p is not None:
            # Known and voted on here: the block's commit stands for its quorum.
            self._finalize(s, p)
            return _Final(p.tx, p.raw, p.addresses)

        def coin(t: str, v: int) -> tuple[str, int, str, str | None] | None:
            # As the block has it: a coin this block's earlier transactions made, or
            # one a pending conflicting spend holds (the block's spend wins).
            c = s.coins.get((t, v))
            if c is None:
                found = self._coin(t, v)
                if found is None:
                    return None
                c = Coin(found[0], found[1], found[2], found[3], 0, None)
            state = "Unspent" if c.state in ("Locked", "SpentPending") else c.state
            return c.address, c.amount, state, c.spender

        try:
            _, spent = check_transaction(tx, msg, self.network, coin, verify)
        except LedgerError as e:
            raise LedgerError("BAD_REQUEST", f"transaction {txid}: {e.message}") from None
        raw = kept(orjson.dumps(tx.to_json()))
        addresses = tuple(dict.fromkeys([*(a for a, _ in spent), *tx.addresses()]))
        if self.status_of(txid) is None:
            self._index(s, tx, spent)
        ops = tx.outpoints()
        # Pending spends of the same coins lose to the block's: their other inputs go
        # back to Unspent, the contested ones straight to SpentFinalized under the
        # block's transaction (SPEC 3.3).
        for op in ops:
            spender = s.utxo(op).spender
            loser = self.pending.get(spender) if spender else None
            if loser is not None and not loser.decided:
                self._reject(s, loser, "conflict", keep=set(ops))
        # Learnt with its certificate (the block's commit): Unspent (or locked by the
        # loser) -> SpentFinalized, its outputs Unspent, then finalized (SPEC 7.5).
        for op in ops:
            s.move(op, "SpentFinalized", raw, votes=self.quorum, spender=txid)
        for vout, o in enumerate(tx.outputs):
            s.create((txid, vout), o.address, o.amount, raw)
        s.emit(TxFinalized(txid, self.quorum, addresses))
        s.rows.add_tx(TxRow(txid, raw, "finalized", self.clock(), s.seq, None,
                            orjson.dumps(addresses), None))
        return _Final(tx, raw, addresses)

    def _add_block(self, s: _Step, block: dict[str, Any], final: list[_Final],
                   commit: Any) -> None:
        height, h, prev, ts = (block["height"], block["hash"], block["prev_hash"],
                               block["timestamp"])
        txids = [f.tx.txid for f in final]
        s.rows.blocks.append(BlockRow(height, h, prev, ts, orjson.dumps(txids),
                                      block["producer"],
                                      None if commit is None else orjson.dumps(commit)))
        for f in final:
            for op in f.tx.outpoints():
                s.move(op, "Confirmed", f.raw, height=height)
            s.rows.set_tx(f.tx.txid, TxChange("confirmed", block_height=height))
            s.emit(TxConfirmed(f.tx.txid, height, h, f.addresses))
        s.emit(BlockAdded(height, h, prev, ts, tuple(txids)))

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

    # -- reads ------------------------------------------------------------------------

    def status_of(self, txid: str) -> str | None:
        """pending, finalized, confirmed, rejected, or None for an unknown txid."""
        if txid in self.pending:
            return "pending"
        if txid in self.unconfirmed:
            return "finalized"
        staged = self._rows.tx_status(txid)
        if staged is not None:
            return staged
        return self.tables.tx_status(txid)

    def get_transaction(self, txid: Any) -> dict[str, Any]:
        """``{txid, status, votes, quorum, block_height, tx}``; raises NOT_FOUND."""
        if not isinstance(txid, str) or not TXID.fullmatch(txid):
            raise LedgerError("BAD_REQUEST", "txid must be 64 lowercase hex characters")
        self._flush_staged()
        row = self.tables.tx(txid)
        if row is None:
            raise LedgerError("NOT_FOUND", f"unknown transaction {txid}")
        raw, status, block_height, reason = row
        votes = sum(1 for _, approve in self.tables.votes(txid) if approve)
        out = {"txid": txid, "status": status, "votes": votes, "quorum": self.quorum,
               "block_height": block_height, "tx": orjson.loads(raw)}
        if reason:
            out["reason"] = reason
        return out

    def get_txout(self, txid: str, vout: int) -> dict[str, Any] | None:
        """One UTXO's record, or None when the outpoint is unknown."""
        if not 0 <= vout <= U32:  # no output has that index (and SQLite could not hold it)
            return None
        try:
            address, amount, state, spender, votes, height = self.utxos.get(txid, vout)
        except UnknownOutpoint:
            coin = self._stored_utxo((txid, vout))
            if coin is None:
                return None
            address, amount, state, spender, votes, height = coin.values()
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
        self._flush_staged()
        rows = self.tables.history_page(address, cursor, limit)
        txs = [{"txid": txid, "status": status, "block_height": height,
                "timestamp": int(accepted_at) if block_ts is None else block_ts,
                "received": received, "sent": sent}
               for _, txid, received, sent, status, height, accepted_at, block_ts in rows]
        last = rows[-1][0] if rows else 0
        return {"address": address, "balance": self.balance(address),
                "tx_count": self.tables.history_count(address), "txs": txs,
                "next": last if len(rows) == limit and last > 1 else None}

    def get_block(self, ref: int | str, with_txs: bool = False) -> dict[str, Any]:
        """A block by height or hash; raises NOT_FOUND.  ``with_txs``: with its
        transactions (``txs``, in block order), as ``accept_block`` takes it."""
        if isinstance(ref, bool) or not isinstance(ref, int | str):
            raise LedgerError("BAD_REQUEST", "block reference must be a height or a hash")
        self._flush_staged()
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
        out = {"height": row.height, "hash": row.hash, "prev_hash": row.prev_hash,
               "timestamp": row.timestamp, "txids": txids, "producer": row.producer}
        if with_txs:
            raw = self.tables.txs_raw(txids)
            out["txs"] = [orjson.loads(raw[t]) for t in txids]
        return out

    def counts(self) -> dict[str, int]:
        """Transactions waiting for quorum (``pending``) and for a block
        (``unconfirmed``)."""
        return {"pending": len(self.pending), "unconfirmed": len(self.unconfirmed)}

    def in_flight(self, limit: int, now: float | None = None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Transactions awaiting quorum, with their tallies (``votes`` for,
        ``against``), and those finalized awaiting a block: at most ``limit`` of each,
        oldest first."""
        now = self.clock() if now is None else now
        pending = [{"txid": txid, "votes": len(p.approvals), "against": len(p.rejections),
                    "quorum": self.quorum, "amount": sum(o.amount for o in p.tx.outputs),
                    "age_s": round(max(0.0, now - p.accepted_at), 3)}
                   for txid, p in islice(self.pending.items(), limit)]
        unconfirmed = [{"txid": txid, "amount": sum(o.amount for o in f.tx.outputs)}
                       for txid, f in islice(self.unconfirmed.items(), limit)]
        return pending, unconfirmed

    def outcome_counts(self) -> dict[str, int]:
        """Transactions by outcome since start: accepted, finalized, confirmed,
        rejected, and refused as invalid or conflicting."""
        return dict(self.outcomes)

    def events_after(self, seq: int) -> tuple[bool, list[Event]]:
        """Kept events with ``seq`` above the argument; False if some were dropped."""
        return self.journal.events_after(seq, self.seq)

    def events_for(self, addresses: Iterable[str], seq: int) -> tuple[bool, list[Event]]:
        """Kept events with ``seq`` above the argument that name one of ``addresses``
        or go to every connection (a resume's replay); False if some were dropped."""
        return self.journal.events_for(addresses, seq, self.seq)

    def oldest_seq(self) -> int:
        """The lowest ``seq`` a wallet may resume from and miss nothing."""
        return self.journal.oldest(self.seq)

    def stored_events(self, seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` committed events after ``seq``, read from the database
        (an event bus catching up: they may be older than the replay window)."""
        t = self.tables
        return list(events_of_rows(islice(t.events_from(seq), limit), t.tx_raw))

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


# Ports see storage failures through the ledger (they never import storage).
__all__ = ["FAUCET_KEY", "GENESIS_SUPPLY", "Event", "Ledger", "LedgerError", "StorageError",
           "block_hash", "unavailable"]
