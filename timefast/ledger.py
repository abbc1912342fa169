"""The ledger: state and the unit of work (SPEC 4).

Plain Python around the compiled ``UtxoTable``, with the rules in ``rules``, the
SQL in ``tables`` and the wallet events in ``journal``.  Every change is one
*step*: the step stages UTXO moves (checked against the transition table) and the
rows it changes, and only after they are committed applies the moves to the core,
updates the in-memory state and hands the changes to listeners.  A step that fails
(a rule, a full disk) leaves the core, the database and the listeners as they
were: durable before announced.

Entry points, for wallets, the RPC and the peers: ``submit`` (a transaction;
``relayed`` for one from a peer), ``add_votes`` (votes of one masternode),
``add_batch`` (a peer's signed vote batch), ``sign_batch`` (this masternode's own
votes, SPEC 7.4), ``propose_block`` and ``validate_proposal`` (a block proposed, by
this node or to it, neither committed), ``accept_block`` (a block the network
committed, with its commit), ``make_block`` (the block of a one-masternode network),
``expire`` (the timeout of a one-masternode network).  The ledger never touches a
socket.

In a network (more than one masternode, or this node outside the voting set) the
node's own votes are not cast inside the step that accepts a transaction: the
decision (approve once per outpoint) is queued and ``sign_batch`` signs up to 256
of them at once, storing the batch (and with it the approvals) in the commit
before anyone may send it.
"""

from __future__ import annotations

import heapq
import logging
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import orjson
from nacl.signing import SigningKey

from timefast import _core, crashpoints, wire
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
from timefast.privval import PrivValidator
from timefast.rules import (
    FAUCET_KEY,
    GENESIS_SUPPLY,
    GENESIS_TIMESTAMP,
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    ZERO_HASH,
    Header,
    LedgerError,
    block_hash,
    check_address,
    check_block_body,
    check_block_header,
    check_certificates,
    check_coinbase,
    check_commit,
    check_transaction,
    coinbase,
    genesis_hash,
    genesis_transaction,
    parse_commit,
    proposer,
    quorum,
    signed_bytes,
    tally,
)
from timefast.storage import StorageError, Store, unavailable
from timefast.tables import (
    BlockRow,
    Coin,
    EvidenceRow,
    HistoryRow,
    Rows,
    Tables,
    TxChange,
    TxRow,
    Vote,
)
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
# Relayed transactions whose inputs are not known yet (SPEC 7.4): kept this many, of at
# most this many bytes in all, for this many seconds.
ORPHANS_MAX = 10_000
ORPHAN_BYTES = 32 << 20
ORPHAN_TTL = 600.0
BATCH_VOTES = wire.MAX_VOTES_PER_BATCH  # own votes signed together at most
RECENT_REJECTED = 10_000  # rejected transactions passed on to peers that ask


@dataclass(slots=True)
class _Pending:
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
class _Final:
    tx: Transaction
    raw: bytes
    addresses: tuple[str, ...]


@dataclass(slots=True)
class _BlockTx:
    """A transaction of a block being made or checked, with what committing it needs."""

    tx: Transaction
    raw: bytes
    fee: int
    spent: list[tuple[str, int]]  # (address, amount) of each input
    # coinbase; final: finalized here (``final``); pending: voted on here, short of
    # quorum; new: first learnt from the block.
    kind: str
    final: _Final | None


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
        # -- the network (SPEC 7) --
        self.network_id = wire.network_id(genesis_hash(network), self.masternodes)
        self.voting = self.public_key in self.masternodes
        # A one-masternode network votes inline (TIMEVOTE), as it always has; any
        # other signs batches and waits for its peers.
        self.networked = len(self.masternodes) > 1 or not self.voting
        # Own approvals of pending transactions, per outpoint (approve once).
        self.approved: dict[tuple[str, int], str] = {}
        # Pending transactions spending each outpoint (more than one: a conflict).
        self.spenders: dict[tuple[str, int], set[str]] = {}
        self.own_queue: list[tuple[str, bool]] = []  # decided, not yet signed
        self.next_batch = 1
        # Called when ``own_queue`` gains votes (the peer layer then calls
        # ``sign_batch``); None: nobody signs (a node without peers yet).
        self.vote_wanted: Callable[[], None] | None = None
        self.orphans: OrderedDict[str, tuple[Transaction, float, int]] = OrderedDict()
        self._orphan_bytes = 0
        self.equivocations: dict[str, int] = {}
        self.last_vote: dict[str, float] = {}
        self.recent_rejected: OrderedDict[str, bytes] = OrderedDict()
        self._sync_commit = False  # the open commit holds own signed votes
        self.privval = PrivValidator(store, self.tables, key, self.network_id)
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
        self._load_network()

    def _load_network(self) -> None:
        """Rebuild the network's in-memory state from the database."""
        self.spenders.clear()
        self.approved.clear()
        self.own_queue.clear()
        self.next_batch = self.tables.last_batch(self.public_key) + 1
        self.recent_rejected.clear()
        if self.networked:
            self.recent_rejected.update(self.tables.recent_rejected(RECENT_REJECTED))
        self.equivocations = {}
        for row in self.tables.evidence():
            self.equivocations[row.voter] = self.equivocations.get(row.voter, 0) + 1
        for txid, p in sorted(self.pending.items(), key=lambda kv: kv[1].accepted_at):
            ops = p.tx.outpoints()
            try:
                p.holds = self.utxos.get(*ops[0])[3] == txid
            except UnknownOutpoint:
                p.holds = False
            for op in ops:
                self.spenders.setdefault(op, set()).add(txid)
            if not (self.networked and self.voting):
                continue
            if self.public_key in p.approvals:
                for op in ops:
                    self.approved[op] = txid
            elif self.public_key not in p.rejections:
                # Decided before a crash but never signed (so never sent): decide again,
                # in the order they were accepted, as the first time.
                self.own_queue.append((txid, self._own_decision(p)))

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
                self._sync_if_signed()
        except BaseException:
            # The step may have changed in-memory tallies before its commit failed.
            self._sync_commit = False
            self._load()
            raise
        # Committed: now, and only now, the core, memory and listeners learn of it.
        self._remember(committed)
        self._apply(step)
        self._announce(step.events, step.changes)
        return result

    def _sync_if_signed(self) -> None:
        """A commit holding this masternode's signed votes is synced to disk before
        they may leave (SPEC 7.4)."""
        if self._sync_commit:
            self._sync_commit = False
            self.store.sync_next_commit()
            # Inside the open transaction, the batch's rows written: its commit's near side.
            crashpoints.reached("batch")

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
                self._sync_if_signed()
        except BaseException:
            self._held = None
            self._sync_commit = False
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

    def submit(self, obj: Any, relayed: bool = False) -> str:
        """Validate and accept a transaction; returns its txid (idempotent).

        ``obj`` is the upstream JSON object, or a ``Transaction`` from ``prepare``.
        ``relayed``: it came from a peer (SPEC 7.4): one that spends coins another
        pending transaction locked is stored and voted on all the same, locking
        nothing; one whose inputs are not known yet waits as an orphan
        (``TX_ORPHAN``) and is tried again by ``take_orphans``.

        Raises ``LedgerError`` with ``TX_INVALID``, ``TX_CONFLICT`` or ``TX_ORPHAN``,
        or ``StorageError`` when it could not be stored (nothing is then accepted).
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
        if known == "rejected" and self.networked:
            # In a network a rejection is never revoked (SPEC 7.4).
            if relayed:
                return tx.txid
            raise self._refuse(LedgerError("TX_INVALID", f"transaction {tx.txid} was "
                                           "rejected by the network"))
        coin_of: Callable[[str, int], tuple[str, int, str, str | None] | None] = self._coin
        contested = False
        lost = False  # a peer's spend of a coin a finalized transaction took
        if relayed:
            if any(self._coin(i.prev_txid, i.vout) is None
                   and self.status_of(i.prev_txid) in (None, "pending") for i in tx.inputs):
                self._keep_orphan(tx)
                raise LedgerError("TX_ORPHAN",
                                  f"TX_ORPHAN: transaction {tx.txid} waits for its inputs")

            def contested_coin(t: str, v: int) -> tuple[str, int, str, str | None] | None:
                nonlocal contested
                nonlocal lost
                found = self._coin(t, v)
                if found is not None and found[2] in ("Locked", "SpentPending"):
                    contested = True
                    return found[0], found[1], "Unspent", None
                if found is not None and found[2] in ("SpentFinalized", "Confirmed"):
                    lost = True
                    return found[0], found[1], "Unspent", None
                return found
            coin_of = contested_coin
        try:
            _, spent = check_transaction(tx, msg, self.network, coin_of,
                                         self._good_signature)
        except LedgerError as e:
            raise self._refuse(e) from None
        addresses = tuple(dict.fromkeys([*(a for a, _ in spent), *tx.addresses()]))
        raw = kept(orjson.dumps(tx.to_json()))
        now = self.clock()
        ops = tx.outpoints()

        if lost:
            return self._store_lost(tx, raw, addresses, spent)

        def step(s: _Step) -> str:
            # A wallet's spend of a locked coin is refused; a peer's is kept unlocked.
            held = not (relayed and (contested or any(s.utxo(op).state != "Unspent"
                                                      for op in ops)))
            if held:
                try:
                    s.lock(tx.txid, ops, raw)
                except LockConflict as e:
                    raise self._refuse(LedgerError("TX_CONFLICT",
                                                   f"TX_CONFLICT: {e}")) from None
            if known == "rejected":
                # A transaction rejected earlier may be tried again: its old votes go.
                s.rows.clear_votes(tx.txid)
            else:
                self._index(s, tx, spent)
            s.rows.add_tx(TxRow(tx.txid, raw, "pending", now, None, None,
                                orjson.dumps(addresses), None))
            s.emit(TxAccepted(tx.txid, raw, addresses))
            p = _Pending(tx, raw, now, addresses, holds=held)
            s.after.append(lambda: self._add_pending(p))
            s.after.append(lambda: self.outcomes.__setitem__(
                "accepted", self.outcomes["accepted"] + 1))
            if self.networked:
                if self.voting:
                    s.after.append(lambda: self._queue_own(p))
            elif self.voting:
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

    def _store_lost(self, tx: Transaction, raw: bytes, addresses: tuple[str, ...],
                    spent: list[tuple[str, int]]) -> str:
        """A peer relays a spend of a coin that a finalized transaction took: it was
        pending at some node, and is rejected there and everywhere (``conflict``).
        Stored as such, with the events every other node's wallets saw for it."""
        now = self.clock()

        def step(s: _Step) -> str:
            self._index(s, tx, spent)
            s.rows.add_tx(TxRow(tx.txid, raw, "rejected", now, None, "conflict",
                                orjson.dumps(addresses), None))
            s.emit(TxAccepted(tx.txid, raw, addresses))
            s.emit(TxRejected(tx.txid, "conflict", addresses))

            def done() -> None:
                self._remember_rejected(tx.txid, raw)
                self.outcomes["rejected"] += 1
            s.after.append(done)
            return tx.txid
        return str(self._run(step))

    def _remember_rejected(self, txid: str, raw: bytes) -> None:
        """Recent rejections go to peers that ask (``pending_for``), so that a node
        that was away ends with the same status."""
        self.recent_rejected[txid] = raw
        self.recent_rejected.move_to_end(txid)
        while len(self.recent_rejected) > RECENT_REJECTED:
            self.recent_rejected.popitem(last=False)

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

    def _record_vote(self, s: _Step, p: _Pending | None, vote: Vote,
                     stored: bool = True) -> None:
        """Count ``vote`` (on ``p``, None when its transaction is decided); ``stored``:
        write its row (not for the second, contradicting vote of an equivocator,
        kept as evidence instead)."""
        if stored:
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
        elif vote.approve and p.holds:
            for op in p.tx.outpoints():
                s.move(op, "SpentPending", p.raw, votes=len(p.approvals))

    def _finalize(self, s: _Step, p: _Pending) -> None:
        s.keep(p)
        p.decided = True
        votes = len(p.approvals)
        txid = p.tx.txid
        ops = p.tx.outpoints()
        self._beat_conflicts(s, txid, ops)
        for op in ops:
            if s.utxo(op).spender != txid:
                # Held by a conflicting spend (rejected just above) or by nobody.
                s.move(op, "SpentFinalized", p.raw, votes=votes, spender=txid)
                continue
            if s.utxo(op).state == "Locked":
                s.move(op, "SpentPending", p.raw, votes=votes)
            s.move(op, "SpentFinalized", p.raw, votes=votes)
        for vout, o in enumerate(p.tx.outputs):
            s.create((txid, vout), o.address, o.amount, p.raw)
        s.emit(TxFinalized(txid, votes, p.addresses))
        s.rows.set_tx(txid, TxChange("finalized", finalized_seq=s.seq))
        final = _Final(p.tx, p.raw, p.addresses)

        def done() -> None:
            self._drop_pending(txid)
            self.unconfirmed[txid] = final
            self.outcomes["finalized"] += 1
        s.after.append(done)

    def _beat_conflicts(self, s: _Step, txid: str, ops: list[tuple[str, int]]) -> None:
        """``txid`` is finalized or confirmed: every pending spend of its inputs is
        rejected (``conflict``), the contested inputs left for ``txid`` to take."""
        losers = {t for op in ops for t in self.spenders.get(op, ()) if t != txid}
        for op in ops:
            spender = s.utxo(op).spender
            if spender and spender != txid:
                losers.add(spender)
        keep = set(ops)
        for t in sorted(losers):
            loser = self.pending.get(t)
            if loser is not None and not loser.decided:
                self._reject(s, loser, "conflict", keep=keep)

    def _reject(self, s: _Step, p: _Pending, reason: str,
                keep: set[tuple[str, int]] | frozenset[tuple[str, int]] = frozenset()
                ) -> None:
        """Reject ``p``: its inputs go back to Unspent, but for those in ``keep``
        (which the winning conflicting transaction moves itself)."""
        s.keep(p)
        p.decided = True
        txid = p.tx.txid
        for op in p.tx.outpoints():
            if op not in keep and s.utxo(op).spender == txid:
                s.move(op, "Unspent", p.raw)
        s.emit(TxRejected(txid, reason, p.addresses))
        s.rows.set_tx(txid, TxChange("rejected", reason=reason))

        def done() -> None:
            self._drop_pending(txid)
            self._remember_rejected(txid, p.raw)
            self.outcomes["rejected"] += 1
        s.after.append(done)

    def _add_pending(self, p: _Pending) -> None:
        txid = p.tx.txid
        self.pending[txid] = p
        for op in p.tx.outpoints():
            self.spenders.setdefault(op, set()).add(txid)

    def _drop_pending(self, txid: str) -> None:
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

    # -- votes ------------------------------------------------------------------------

    def submit_vote(self, vote: Any) -> dict[str, Any]:
        """Take a masternode's signed vote (the RPC's ``submitvote``); returns the
        transaction's status after it (None while the transaction is not seen yet:
        the vote is kept until it arrives)."""
        if not isinstance(vote, dict):
            raise LedgerError("BAD_REQUEST", "vote must be an object")
        if self.networked:
            return self._submit_batch(vote)
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

    def _submit_batch(self, vote: dict[str, Any]) -> dict[str, Any]:
        """``submitvote`` in a network: a signed ``Votes`` batch (SPEC 7.4; the
        ``TIMEVOTE`` form binds no network and is refused)."""
        if "txid" in vote and "votes" not in vote:
            raise LedgerError("BAD_REQUEST", "in a network of masternodes a vote is a signed "
                              "batch {voter, batch, votes: [[txid, approve]], signature} "
                              "(TIMEVOTES/1); the TIMEVOTE form binds no network")
        try:
            msg = wire.Votes.from_data(vote)
            wire.verify_votes(msg, self.network_id)
        except wire.WireError as e:
            raise LedgerError("BAD_REQUEST", f"vote: {e}") from None
        self.add_batch(msg)
        txid = msg.votes[0][0]
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

    # -- the network's votes (SPEC 7.4) ------------------------------------------------

    def _own_decision(self, p: _Pending) -> bool:
        """Approve once per outpoint: approve ``p`` unless this masternode approved
        another spend of one of its inputs that is still undecided."""
        txid = p.tx.txid
        ops = p.tx.outpoints()
        if any(self.approved.get(op, txid) != txid for op in ops):
            return False
        for op in ops:
            self.approved[op] = txid
        return True

    def _queue_own(self, p: _Pending) -> None:
        """Decide this masternode's vote on a newly accepted transaction; signed and
        stored by the next ``sign_batch`` before it may leave."""
        self.own_queue.append((p.tx.txid, self._own_decision(p)))
        if self.vote_wanted is not None:
            self.vote_wanted()

    def sign_batch(self) -> wire.Votes | None:
        """Sign up to 256 queued own votes as the next batch and count them; returns
        the batch to send once this step has committed (None: nothing queued).

        The batch, its number and the approvals it holds are written in the same
        commit, synced to disk before it returns (``Store.sync_next_commit``), so a
        restarted masternode never signs a second batch under one number nor
        approves a second spend."""
        if not self.own_queue:
            return None
        crashpoints.reached("approval")
        votes = self.own_queue[:BATCH_VOTES]
        batch = self.next_batch
        msg = wire.sign_votes(self.key, self.network_id, batch, votes)

        def step(s: _Step) -> None:
            self._record_batch(s, msg)

            def done() -> None:
                del self.own_queue[:len(votes)]
                self.next_batch = batch + 1
            s.after.append(done)
        self._sync_commit = True
        self._run(step)
        return msg

    def add_batch(self, msg: wire.Votes) -> bool:
        """Count a peer's signed vote batch; the caller verified its signature
        (``wire.verify_votes``, off the event loop).  Returns False when this very
        batch was counted before (relay it no further)."""
        if msg.voter not in self.masternodes:
            raise LedgerError("BAD_REQUEST", f"voter {msg.voter} is not in the masternode "
                              "set")
        if msg.voter == self.public_key and msg.batch >= self.next_batch:
            # Our own key signed a batch we have no record of: a restore from an
            # old backup (or a stolen key).  Never reuse that number.
            log.error("a batch %d signed by this masternode's key came from a peer; "
                      "own batches now continue after it", msg.batch)
        return bool(self._run(lambda s: self._record_batch(s, msg)))

    def _record_batch(self, s: _Step, msg: wire.Votes) -> bool:
        digest = msg.content_hash(self.network_id)
        key = (msg.voter, msg.batch, digest)
        if key in s.rows.batches or key in self._rows.batches:
            return False
        stored = self.tables.batch_bodies(msg.voter, msg.batch)
        if digest in stored:
            return False
        body = orjson.dumps(msg.to_data())
        now = self.clock()
        others = [b for k, b in self._rows.batches.items() if k[:2] == key[:2]]
        others += list(stored.values())
        if others:
            self._evidence(s, EvidenceRow(msg.voter, "batch", others[0], body, now))
        s.rows.batches[key] = body
        for txid, approve in msg.votes:
            self._count_vote(s, Vote(txid, msg.voter, approve, f"@{msg.batch}"), body, now)

        def done() -> None:
            self.last_vote[msg.voter] = now
            if msg.voter == self.public_key:
                self.next_batch = max(self.next_batch, msg.batch + 1)
        s.after.append(done)
        return True

    def add_evidence(self, voter: str, kind: str, first: bytes, second: bytes) -> bool:
        """Keep two signed block-consensus messages of ``voter`` that contradict each
        other (SPEC 7.5: two proposals, prevotes or precommits for one height, round
        and step; ``kind`` is ``proposal``, ``prevote`` or ``precommit``; the caller
        checked both signatures): stored, logged and counted in
        ``masternodelist.equivocations`` like vote evidence (SPEC 7.4).  Returns
        False when this pair was kept before (a restart may meet it again)."""
        if voter not in self.masternodes:
            raise LedgerError("BAD_REQUEST", f"voter {voter} is not in the masternode set")
        if kind not in ("proposal", "prevote", "precommit"):
            raise LedgerError("BAD_REQUEST", f"unknown kind of evidence {kind!r}")
        pair = {first, second}
        if any(r.kind == kind and {r.first, r.second} == pair
               for r in [*self._rows.evidence, *self.tables.evidence(voter)]):
            return False
        self._run(lambda s: self._evidence(
            s, EvidenceRow(voter, kind, first, second, self.clock())))
        return True

    def _evidence(self, s: _Step, row: EvidenceRow) -> None:
        s.rows.evidence.append(row)
        log.warning("equivocation by masternode %s (%s): evidence kept", row.voter, row.kind)

        def done() -> None:
            self.equivocations[row.voter] = self.equivocations.get(row.voter, 0) + 1
        s.after.append(done)

    def _count_vote(self, s: _Step, vote: Vote, body: bytes, now: float) -> None:
        """Count one vote of a signed batch, once per (voter, txid, approve)."""
        p = self.pending.get(vote.txid)
        if p is None:
            status = self.status_of(vote.txid)
            if status is None:
                self._keep_early(vote, now)
            return  # decided already: its outcome stands, the vote changes nothing
        mine, other = ((p.approvals, p.rejections) if vote.approve
                       else (p.rejections, p.approvals))
        if vote.voter in mine:
            return
        if vote.voter in other:
            # Signed both ways: both count (SPEC 7.4), the first one's row stays.
            self._evidence(s, EvidenceRow(vote.voter, "vote", self._batch_of(p, vote),
                                          body, now))
            self._record_vote(s, p, vote, stored=False)
            return
        if vote.approve:
            for op in p.tx.outpoints():
                for t in self.spenders.get(op, ()):
                    q = self.pending.get(t)
                    if t != vote.txid and q is not None and vote.voter in q.approvals:
                        self._evidence(s, EvidenceRow(vote.voter, "conflict",
                                                      self._batch_of(q, vote), body, now))
                        break
        self._record_vote(s, p, vote)

    def _batch_of(self, p: _Pending, vote: Vote) -> bytes:
        """The stored signed batch holding ``vote.voter``'s earlier vote on ``p``."""
        for voter, _, sig in self.tables.vote_refs(p.tx.txid):
            if voter == vote.voter and sig.startswith("@"):
                bodies = self.tables.batch_bodies(voter, int(sig[1:]))
                if bodies:
                    return next(iter(bodies.values()))
        staged = self._rows.votes.get((p.tx.txid, vote.voter))
        if staged is not None and staged.signature.startswith("@"):
            n = int(staged.signature[1:])
            for k, b in self._rows.batches.items():
                if k[0] == vote.voter and k[1] == n:
                    return b
        return b""

    def certificate(self, txid: str) -> list[wire.Votes]:
        """The signed batches holding the approvals stored for ``txid`` (its finality
        certificate once they are q)."""
        self._flush_staged()
        out: dict[tuple[str, int], wire.Votes] = {}
        for voter, approve, sig in self.tables.vote_refs(txid):
            if not approve or not sig.startswith("@"):
                continue
            for body in self.tables.batch_bodies(voter, int(sig[1:])).values():
                msg = wire.Votes.from_data(orjson.loads(body))
                if (txid, True) in msg.votes:
                    out[(voter, msg.batch)] = msg
                    break
        return list(out.values())

    def pending_for(self, txids: Sequence[str] | None, max_bytes: int
                    ) -> tuple[list[Transaction], list[wire.Votes]]:
        """What a peer's ``GetPending`` asks for: unconfirmed transactions (those
        named, or all) and the signed batches that vote on them, within about
        ``max_bytes``, parents before children."""
        self._flush_staged()
        rejected = self.recent_rejected
        if txids is None:
            wanted = [*self.unconfirmed, *sorted(self.pending,
                                                 key=lambda t: self.pending[t].accepted_at),
                      *reversed(rejected)]
        else:
            wanted = [t for t in txids
                      if t in self.pending or t in self.unconfirmed or t in rejected]
        txs: list[Transaction] = []
        batches: dict[tuple[str, int, bytes], wire.Votes] = {}
        size = 0
        for txid in wanted:
            held = self.pending.get(txid) or self.unconfirmed.get(txid)
            if held is not None:
                tx, raw = held.tx, held.raw
            else:
                raw = rejected[txid]
                tx = parse(orjson.loads(raw))
            size += len(raw)
            refs = [(v, int(sig[1:])) for v, _, sig in self.tables.vote_refs(txid)
                    if sig.startswith("@")]
            for voter, n in refs:
                for digest, body in self.tables.batch_bodies(voter, n).items():
                    if (voter, n, digest) not in batches:
                        batches[(voter, n, digest)] = wire.Votes.from_data(orjson.loads(body))
                        size += len(body)
            if size > max_bytes and txs:
                break
            txs.append(tx)
        return txs, list(batches.values())

    def overdue(self, now: float | None = None) -> list[str]:
        """Pending transactions that waited ``FINALITY_TIMEOUT`` since they were
        accepted or last asked about: the peer layer asks peers for their votes
        (in a network a timeout decides nothing, SPEC 7.4)."""
        now = self.clock() if now is None else now
        due = [p for p in self.pending.values()
               if max(p.accepted_at, p.asked_at) + self.finality_timeout <= now]
        for p in due:
            p.asked_at = now
        return [p.tx.txid for p in due]

    def _keep_orphan(self, tx: Transaction) -> None:
        if tx.txid in self.orphans:
            return
        now = self.clock()
        size = len(orjson.dumps(tx.to_json()))
        self.orphans[tx.txid] = (tx, now, size)
        self._orphan_bytes += size
        while self.orphans:
            txid, (_, seen, n) = next(iter(self.orphans.items()))
            if (seen + ORPHAN_TTL > now and len(self.orphans) <= ORPHANS_MAX
                    and self._orphan_bytes <= ORPHAN_BYTES):
                break
            del self.orphans[txid]
            self._orphan_bytes -= n

    def take_orphans(self, parents: Iterable[str]) -> list[Transaction]:
        """Orphans spending outputs of ``parents`` (just finalized or confirmed),
        taken out to be submitted again."""
        wanted = set(parents)
        found = [txid for txid, (tx, _, _) in self.orphans.items()
                 if any(i.prev_txid in wanted for i in tx.inputs)]
        out = []
        for txid in found:
            tx, _, n = self.orphans.pop(txid)
            self._orphan_bytes -= n
            out.append(tx)
        return out

    def masternode_info(self, key: str) -> dict[str, Any]:
        """What ``masternodelist`` shows of one masternode's votes."""
        return {"last_vote": self.last_vote.get(key),
                "equivocations": self.equivocations.get(key, 0)}

    # -- time -------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Reject every transaction that waited past FINALITY_TIMEOUT; returns how many."""
        if self.networked:
            return 0  # a timeout decides nothing in a network (``overdue``)
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
    # A block is made (``propose_block``), checked (``validate_proposal``) and
    # committed (``accept_block``) by the same few functions whatever the voting set;
    # with one masternode ``make_block`` is the whole consensus: it proposes round 0
    # as this node and commits the block with its own precommit.

    def make_block(self) -> dict[str, Any]:
        """Make and commit this node's block of every finalized, unconfirmed
        transaction (as many as a block holds), its coinbase first; returns the block
        as ``get_block`` shows it.

        The block of a one-masternode network: round 0, this node's key as producer,
        committed with this node's one precommit (n = 1: q = 1).  With more
        masternodes blocks are the network's decision (``propose_block``,
        ``validate_proposal``, ``accept_block``)."""
        header, items = self._propose(0, self.public_key, int(self.clock()))
        commit = [{"voter": self.public_key, "round": header.round,
                   "signature": self.key.sign(wire.bft_bytes(
                       self.network_id, wire.STEP_PRECOMMIT, header.height, header.round,
                       header.hash)).signature.hex()}]
        self._run(lambda s: self._add_block(s, header, items, commit))
        return self._header_json(header, commit)

    def propose_block(self, round_: int, producer: str, timestamp: int) -> wire.Block:
        """The proposal as a typed block (adapter of the peer layer's contract)."""
        return wire.Block.from_data(self._propose_block_data(round_, producer, timestamp),
                                    "block")

    def _propose_block_data(self, round_: int, producer: str, timestamp: int
                            ) -> dict[str, Any]:
        """The block ``producer`` proposes for the next height in round ``round_``
        (SPEC 7.5), without committing it: ``{height, prev_hash, timestamp, txids,
        producer, round, hash, txs}``, the coinbase first when there are fees, then
        finalized unconfirmed transactions in finality order (parents before
        children), at most ``MAX_BLOCK_TXS`` and ``MAX_BLOCK_BYTES``.  The timestamp
        is ``max(timestamp, the tip's)``.  Raises ``LedgerError(BAD_REQUEST)`` for a
        producer that is not a public key or a round out of range."""
        if type(round_) is not int or not 0 <= round_ <= U32:
            raise LedgerError("BAD_REQUEST", f"round {round_!r} is out of range")
        if not isinstance(producer, str) or not TXID.fullmatch(producer):
            raise LedgerError("BAD_REQUEST", "producer must be a public key "
                              "(64 lowercase hex characters)")
        header, items = self._propose(round_, producer, int(timestamp))
        out = self._header_json(header, [])
        del out["commit"]  # a proposal has none yet
        out["txs"] = [orjson.loads(i.raw) for i in items]
        return out

    def validate_proposal(self, block: wire.Block,
                          certificates: Sequence[wire.Votes] = ()) -> None:
        """Whether a validator may prevote ``block`` (header and ``txs``) for the next
        height (SPEC 7.5): returns None, or raises ``LedgerError(BAD_REQUEST)`` saying
        why not; nothing changes either way.

        Beyond what ``accept_block`` checks, the timestamp may be at most
        ``MAX_FUTURE_S`` ahead of this node's clock, and each transaction not
        finalized here must hold a finality certificate among ``certificates`` (the
        proposal's signed ``Votes`` batches): q approvals of distinct masternodes."""
        self._check_block(block.to_data(), None, certificates, self.clock())

    def accept_block(self, block: wire.Block) -> None:
        """Commit a typed block with the precommits of ``block.commit`` (adapter of
        the peer layer's contract; see ``_accept_block_data``)."""
        self._accept_block_data(block.to_data(),
                                [c.to_data() for c in block.commit or ()])

    def block_at(self, height: int) -> wire.Block:
        """A stored block with its txs and its commit; raises NOT_FOUND."""
        return wire.Block.from_data(self.get_block(height, with_txs=True), "block")

    def watch(self, fn: Callable[[list[Change]], None]) -> None:
        """Call ``fn`` with the typed changes of every commit, once committed."""
        self.watchers.append(fn)

    def on_own_votes(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` when own votes are queued for signing."""
        self.vote_wanted = fn

    def has_own_votes(self) -> bool:
        """Whether own votes wait to be signed."""
        return bool(self.own_queue)

    def pending_tx(self, txid: str) -> Transaction | None:
        """A pending transaction's parsed form."""
        held = self.pending.get(txid)
        return None if held is None else held.tx

    def has_orphans(self) -> bool:
        """Whether orphans wait for their parents."""
        return bool(self.orphans)

    def _accept_block_data(self, block: Any, commit: Any) -> None:
        """Commit a block the network decided: ``block`` is its header and ``txs``
        (the coinbase first when there are fees), ``commit`` its precommits
        ``[{voter, round, signature}]``, stored with it.

        Refused with ``LedgerError(BAD_REQUEST)``, and nothing changed, unless it
        is the valid next block: the commit holds q distinct precommits of the
        voting set for its height and hash in one round, its producer is the
        proposer of its round, its transactions are its txids (at most
        ``MAX_BLOCK_TXS`` and ``MAX_BLOCK_BYTES``, parents before children), each
        valid against the chain, and its coinbase pays exactly their fees to the
        producer.  A transaction not finalized here needs no certificate: the
        commit stands for it (q validators checked it before they prevoted;
        catch-up carries blocks with commits only).

        A transaction first learnt from the block goes ``SpentFinalized`` then
        ``Confirmed`` on its inputs, with ``TransactionFinalized`` then
        ``TransactionConfirmed``; a pending one that spends the same coins is
        rejected (``conflict``); the coinbase's output becomes ``Unspent`` before
        any ``TransactionConfirmed``, and ``NewBlock`` comes last.
        """
        if commit is None:
            raise LedgerError("BAD_REQUEST", "a block is committed with its commit")
        header, items, stored = self._check_block(block, commit, None, None)
        self._run(lambda s: self._add_block(s, header, items, stored))

    # The coinbase's JSON takes at most this many bytes (a txid, one output of at most
    # 20 digits to a 45-character address, a lock_time and a timestamp): room kept
    # for it when a proposal is filled up to MAX_BLOCK_BYTES.
    COINBASE_BYTES = 512

    def _propose(self, round_: int, producer: str, timestamp: int
                 ) -> tuple[Header, list[_BlockTx]]:
        height = self.height + 1
        ts = max(timestamp, self.tip_timestamp)
        items: list[_BlockTx] = []
        taken: set[str] = set()
        size = self.COINBASE_BYTES
        fees = 0
        for txid, f in self.unconfirmed.items():
            if len(items) >= MAX_BLOCK_TXS - 1:  # one place kept for the coinbase
                break
            if size + len(f.raw) > MAX_BLOCK_BYTES:
                continue  # a smaller one later may fit
            # A child of a transaction left out waits with it (parents before children).
            if any(i.prev_txid in self.unconfirmed and i.prev_txid not in taken
                   for i in f.tx.inputs):
                continue
            spent = [self._spent(op) for op in f.tx.outpoints()]
            fee = sum(a for _, a in spent) - sum(o.amount for o in f.tx.outputs)
            items.append(_BlockTx(f.tx, f.raw, fee, spent, "final", f))
            taken.add(txid)
            size += len(f.raw)
            fees += fee
        cb = coinbase(self.network, height, ts, producer, fees)
        if cb is not None:
            items.insert(0, _BlockTx(cb, kept(orjson.dumps(cb.to_json())), 0, [],
                                     "coinbase", None))
        txids = [i.tx.txid for i in items]
        h = block_hash(height, self.tip, ts, txids, producer, round_)
        return Header(height, h, self.tip, ts, txids, producer, round_), items

    def _spent(self, op: tuple[str, int]) -> tuple[str, int]:
        """``(address, amount)`` of a coin a finalized transaction spends (live)."""
        coin = self._coin(*op)
        if coin is None:  # the ledger's own state: a finalized spend's coins are held
            raise LedgerError("UNAVAILABLE", f"coin {op[0]}:{op[1]} is missing")
        return coin[0], coin[1]

    @staticmethod
    def _header_json(header: Header, commit: list[dict[str, Any]]) -> dict[str, Any]:
        """A block's header as ``get_block`` shows it."""
        return {"height": header.height, "hash": header.hash, "prev_hash": header.prev_hash,
                "timestamp": header.timestamp, "txids": list(header.txids),
                "producer": header.producer, "round": header.round, "commit": commit}

    def _check_block(self, block: Any, commit: Any, certificates: Sequence[wire.Votes] | None,
                     now: float | None
                     ) -> tuple[Header, list[_BlockTx], list[dict[str, Any]]]:
        """Every check of the next block (see ``accept_block``; ``commit`` None: no
        commit to check; ``certificates`` None: none needed; ``now``: the clock to
        hold the timestamp against, or None).  Changes nothing.  Returns the
        header, the transactions with their fees, and the commit as stored."""
        header = check_block_header(block, self.height + 1, self.tip, self.tip_timestamp,
                                    now)
        want = proposer(self.masternodes, header.height, header.round)
        if header.producer != want:
            raise LedgerError("BAD_REQUEST", f"block {header.height}: its producer "
                              f"{header.producer} is not the proposer of round "
                              f"{header.round} ({want})")
        # The commit to check is the one given apart (a proposal has none; a block of
        # ``Blocks`` carries its own, which the caller passes as ``commit``).
        fields = {k: v for k, v in block.items() if k != "commit"}
        try:
            parsed = wire.Block.from_data(fields | {"round": header.round}, "block")
        except wire.ParseError as e:
            raise LedgerError("BAD_REQUEST", str(e)) from None
        sigs: tuple[wire.CommitSig, ...] = ()
        if commit is not None:
            sigs = parse_commit(commit, header.height)
            check_commit(replace(parsed, commit=sigs), self.network_id, self.masternodes,
                         self.quorum)
        txs = parsed.txs
        raws = [kept(orjson.dumps(tx.to_json())) for tx in txs]
        check_block_body(txs, [len(r) for r in raws], header)
        items = self._check_chain(txs, raws, header)
        fees = sum(i.fee for i in items)
        if check_coinbase(txs, header, fees, self.network):
            items.insert(0, _BlockTx(txs[0], raws[0], 0, [], "coinbase", None))
        if certificates is not None:
            check_certificates([i.tx.txid for i in items if i.kind in ("pending", "new")],
                               certificates, self.network_id, self.masternodes,
                               self.quorum)
        return header, items, [c.to_data() for c in sigs]

    def _check_chain(self, txs: Sequence[Transaction], raws: Sequence[bytes],
                     header: Header) -> list[_BlockTx]:
        """Each transaction of a block (but a coinbase) valid against the chain as the
        block has it: its inputs exist and nothing but itself spends them for good
        (a pending spend here loses to the block's); returns each with its fee."""
        # Coins as the block's earlier transactions leave them.
        overlay: dict[tuple[str, int], tuple[str, int, str, str | None]] = {}

        def coin(t: str, v: int) -> tuple[str, int, str, str | None] | None:
            c = overlay.get((t, v)) or self._coin(t, v)
            if c is not None and c[2] in ("Locked", "SpentPending"):
                return c[0], c[1], "Unspent", c[3]
            return c

        items = []
        for tx, raw in zip(txs, raws, strict=True):
            if not tx.inputs:
                continue  # the coinbase, checked by rules.check_coinbase
            txid = tx.txid
            f = self.unconfirmed.get(txid)
            if f is not None:
                # Finalized here: its inputs are SpentFinalized by it, and no one
                # else's (a later transaction of the block spending them fails below).
                spent = [self._spent(op) for op in tx.outpoints()]
                fee = sum(a for _, a in spent) - sum(o.amount for o in tx.outputs)
                items.append(_BlockTx(f.tx, f.raw, fee, spent, "final", f))
                continue
            if self.status_of(txid) == "confirmed":
                raise LedgerError("BAD_REQUEST", f"transaction {txid} is already in a block")
            try:
                fee, spent = check_transaction(tx, signed_bytes(tx), self.network, coin,
                                               self._good_signature)
            except LedgerError as e:
                raise LedgerError("BAD_REQUEST", f"block {header.height}: transaction "
                                  f"{txid}: {e.message}") from None
            for op, (address, amount) in zip(tx.outpoints(), spent, strict=True):
                overlay[op] = (address, amount, "SpentFinalized", txid)
            for vout, o in enumerate(tx.outputs):
                overlay[(txid, vout)] = (o.address, o.amount, "Unspent", None)
            items.append(_BlockTx(tx, raw, fee, spent,
                                  "pending" if txid in self.pending else "new", None))
        return items

    def _learn(self, s: _Step, item: _BlockTx) -> _Final:
        """Finalize, inside a block's step, a transaction the block holds that was
        not finalized here (checked by ``_check_chain``)."""
        tx, raw, txid = item.tx, item.raw, item.tx.txid
        p = self.pending.get(txid)
        if p is not None:
            # Known and voted on here: the block's commit stands for its quorum.
            self._finalize(s, p)
            return _Final(p.tx, p.raw, p.addresses)
        addresses = tuple(dict.fromkeys([*(a for a, _ in item.spent), *tx.addresses()]))
        if self.status_of(txid) is None:
            self._index(s, tx, item.spent)
        ops = tx.outpoints()
        # Pending spends of the same coins lose to the block's: their other inputs go
        # back to Unspent, the contested ones straight to SpentFinalized under the
        # block's transaction (SPEC 3.3).
        self._beat_conflicts(s, txid, ops)
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

    def _add_block(self, s: _Step, header: Header, items: list[_BlockTx],
                   commit: list[dict[str, Any]]) -> None:
        height, h, prev, ts = header.height, header.hash, header.prev_hash, header.timestamp
        s.rows.blocks.append(BlockRow(height, h, prev, ts, orjson.dumps(header.txids),
                                      header.producer, orjson.dumps(commit), header.round))
        final: list[_Final] = []
        cb: _BlockTx | None = None
        for item in items:
            if item.kind == "coinbase":
                cb = item
                self._mint(s, item, height)
            else:
                final.append(item.final if item.final is not None else self._learn(s, item))
        if cb is not None:
            s.emit(TxConfirmed(cb.tx.txid, height, h, tuple(cb.tx.addresses())))
        for f in final:
            for op in f.tx.outpoints():
                s.move(op, "Confirmed", f.raw, height=height)
            s.rows.set_tx(f.tx.txid, TxChange("confirmed", block_height=height))
            s.emit(TxConfirmed(f.tx.txid, height, h, f.addresses))
        s.emit(BlockAdded(height, h, prev, ts, tuple(header.txids)))

        def done() -> None:
            # A Confirmed coin never moves again: memory keeps the live set only
            # (flat however long the node runs); reads fall back to the database.
            for f in final:
                for op in f.tx.outpoints():
                    self.utxos.forget(*op)
                self.unconfirmed.pop(f.tx.txid, None)
            self.height, self.tip, self.tip_timestamp = height, h, ts
            self.outcomes["confirmed"] += len(final)
        s.after.append(done)

    def _mint(self, s: _Step, item: _BlockTx, height: int) -> None:
        """Stage a block's coinbase: stored confirmed, its output Unspent (announced
        to the producer's wallets), in the producer's history."""
        tx = item.tx
        self._index(s, tx, [])
        for vout, o in enumerate(tx.outputs):
            s.create((tx.txid, vout), o.address, o.amount, item.raw, height=height)
        s.rows.add_tx(TxRow(tx.txid, item.raw, "confirmed", self.clock(), None, None,
                            orjson.dumps(tx.addresses()), height))

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
        """A block by height or hash: ``{height, hash, prev_hash, timestamp, txids,
        producer, round, commit}``; raises NOT_FOUND.  ``with_txs``: with its
        transactions (``txs``, in block order, the coinbase first), as
        ``accept_block`` takes it."""
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
        # A block stored before commits (and genesis) shows ``commit: []``.
        out = {"height": row.height, "hash": row.hash, "prev_hash": row.prev_hash,
               "timestamp": row.timestamp, "txids": txids, "producer": row.producer,
               "round": row.round,
               "commit": [] if row.commit is None else orjson.loads(row.commit)}
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
