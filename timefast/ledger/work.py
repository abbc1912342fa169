"""The unit of work and its one commit procedure (durable before announced).

Every change of the ledger is one *step*: the step stages UTXO moves (checked
against the compiled transition table) and the rows it changes; the core, the
in-memory state and the listeners learn of it only once those rows are committed.
A step that fails (a rule, a full disk) leaves the core, the database and the
listeners as they were.

Steps run inside a group commit (``Work.batch``): each succeeds or fails alone and
sees the steps before it, and the batch's rows are written in one transaction.  A
step outside any batch is a batch of one: there is one commit procedure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from timefast import _core, crashpoints
from timefast.errors import IllegalTransition
from timefast.journal import Change, Event, Journal, UtxoMoved
from timefast.ledger.pool import Pending, Pool
from timefast.storage import StorageError, Store
from timefast.tables import Coin, Rows, Tables


class Step:
    """Changes of one atomic ledger step.

    A step never writes to the database itself: its rows go to the batch's rows
    when it succeeds (``Rows.absorb``), so a step that fails leaves nothing.
    """

    def __init__(self, work: Work) -> None:
        self.work = work
        self.utxos = work.pool.utxos
        self.seq = work.seq
        self.rows = Rows()
        self.changes: list[Change] = []
        self.events: list[Event] = []
        self.core_ops: list[Callable[[], Any]] = []
        self.after: list[Callable[[], None]] = []
        self.coins: dict[tuple[str, int], Coin] = {}
        # Pending transactions' tallies as they were before this step changed them.
        self.kept: dict[str, tuple[Pending, set[str], set[str], bool]] = {}

    def keep(self, p: Pending) -> None:
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
        made = self.work.journal.record(change, self.seq + 1)
        if made is not None:
            self.seq += 1
            self.events.append(made[0])
            self.rows.events.append(made[1])

    def utxo(self, op: tuple[str, int]) -> Coin:
        """The UTXO's record as this step has it (a copy, changed by the step)."""
        coin = self.coins.get(op)
        if coin is None:
            coin = Coin(*self.utxos.get(*op))
            self.coins[op] = coin
        return coin

    def _moved(self, op: tuple[str, int], coin: Coin, prev: str | None,
               raw: bytes | None) -> None:
        self.emit(UtxoMoved(op[0], op[1], coin.address, coin.amount, coin.state, prev,
                            coin.spender, coin.votes, coin.height, raw))

    def lock(self, txid: str, ops: list[tuple[str, int]], raw: bytes) -> None:
        """Lock every input of ``txid`` (all or nothing; ``LockConflict``)."""
        utxos = self.utxos
        utxos.check_lock(txid, ops)
        for op in ops:
            coin = self.utxo(op)
            coin.state, coin.spender = "Locked", txid
            self.rows.put_utxo(op, coin, False)
            self._moved(op, coin, "Unspent", raw)
        self.core_ops.append(lambda: utxos.lock(txid, ops))

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
        utxos = self.utxos
        self.core_ops.append(
            lambda: utxos.transition(op[0], op[1], state, votes, height, spender))

    def create(self, op: tuple[str, int], address: str, amount: int,
               raw: bytes | None, height: int | None = None) -> None:
        """A new Unspent coin (announced when ``raw``, its transaction, is given)."""
        coin = Coin(address, amount, "Unspent", None, 0, height)
        self.coins[op] = coin
        self.rows.put_utxo(op, coin, True)
        if raw is not None:
            self._moved(op, coin, None, raw)
        utxos = self.utxos
        self.core_ops.append(
            lambda: utxos.add(op[0], op[1], address, amount, block_height=height))


class Work:
    """Runs steps and commits them (see the module docstring).

    ``reload``: rebuild the ledger's memory from the database (a failed commit);
    ``written``: told the history counts a commit wrote (``index.AddressIndex``).
    """

    def __init__(self, store: Store, tables: Tables, journal: Journal, pool: Pool,
                 staged: Rows, replay_events: int, reload: Callable[[], None],
                 written: Callable[[dict[str, int]], None]) -> None:
        self.store = store
        self.tables = tables
        self.journal = journal
        self.pool = pool
        self.staged = staged  # rows of the open batch's steps, written at its commit
        self.replay_events = replay_events
        self.seq = 0
        self._reload = reload
        self._written = written
        # Wallet events of committed steps, and every typed change (peers).
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._watchers: list[Callable[[list[Change]], None]] = []
        # With EVENT_BUS: the last event the bus has stored (``keep_stored_after``).
        self._floor: int | None = None
        # Inside ``batch()``: events and changes of committed-to-be steps.
        self._held: tuple[list[Event], list[Change]] | None = None
        self._sync = False  # the open commit holds own signed votes or a commit

    def listen(self, fn: Callable[[list[Event]], None]) -> None:
        """Call ``fn`` with the wallet events of every commit, once committed."""
        self._listeners.append(fn)

    def watch(self, fn: Callable[[list[Change]], None]) -> None:
        """Call ``fn`` with the typed changes of every commit, once committed."""
        self._watchers.append(fn)

    def keep_stored_after(self, seq: int | None) -> None:
        """With EVENT_BUS: stored events above ``seq`` (the last one the bus has
        stored) are never pruned, so that the publisher can always catch up from
        SQLite; None: the replay window alone bounds them."""
        self._floor = seq

    def sync_commit(self) -> None:
        """The open commit holds what this masternode signed: it is synced to disk
        before anything of it may leave (SPEC 7.4)."""
        self._sync = True

    def run(self, fn: Callable[[Step], Any]) -> Any:
        """Run ``fn`` as one step; committed with the open batch, or alone."""
        if self._held is None:
            with self.batch():
                return self.run(fn)
        step = Step(self)
        try:
            result = fn(step)  # a refusal raises here, with nothing staged anywhere
        except BaseException:
            step.undo()  # tallies the step changed before it was refused
            raise
        self.staged.absorb(step.rows)
        # Later steps see this one's effects, but nobody hears of it before the
        # batch commits.
        self.seq = step.seq
        for op in step.core_ops:
            op()
        for f in step.after:
            f()
        self.journal.keep_events(step.events)
        self._held[0].extend(step.events)
        self._held[1].extend(step.changes)
        return result

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
                committed = self.staged.history_last
                self.staged.flush(db)
                self.tables.write_seq(db, seq_before, self.seq, self.replay_events,
                                      self._floor)
                if self._sync:
                    self.store.sync_next_commit()
                    # Inside the open transaction, the signed rows written: the
                    # commit's near side.
                    crashpoints.reached("batch")
        except BaseException:
            self._held = None
            self._sync = False
            self._reload()
            raise
        self._sync = False
        (events, changes), self._held = self._held, None
        # Committed: now, and only now, the listeners learn of it.
        self._written(committed)
        if events:
            for listener in self._listeners:
                listener(events)
        if changes:
            for watcher in self._watchers:
                watcher(changes)

    def flush_staged(self) -> None:
        """Write the open batch's staged rows now, inside its transaction, for a
        read that needs all of them."""
        if self._held is None or not self.staged:
            return
        written = self.staged.history_last
        try:
            self.staged.flush(self.store.db)
        except Exception as e:
            # The batch cannot commit any more: fail it whole (``batch`` reloads).
            self.store.failure = self.store.failure or str(e)
            raise StorageError(f"database write failed: {e}") from e
        # The cache follows what this connection reads (a failed batch clears it).
        self._written(written)
