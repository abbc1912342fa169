"""What the wallet port serves from: the interface the server and its sessions use.

The wallet port (``server.py``, ``session.py``) needs an event feed (committed events,
in ``seq`` order, with a window of them kept for resume) and answers (snapshots,
transactions, histories, submissions).  A masternode has both in its ledger
(``LedgerSource``); an edge (``edge.py``) has the feed from NATS JetStream and the
answers from the masternode's RPC.  Both satisfy ``WalletSource``, so the sessions,
the compiled index and the fan-out are one code for both.

Answers are given to a callback, ``done(result, error)``: the ledger calls it at once
(or after the group commit, for a submission), an edge when its RPC has answered and
its stream has reached the ``seq`` the answer was taken at.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from timefast.commits import GroupCommit
from timefast.errors import RequestError
from timefast.journal import Event
from timefast.ledger import Ledger, StorageError
from timefast.page import status
from timefast.transaction import Transaction, TxFormatError
from timefast.transaction import parse as parse_tx

Done = Callable[[Any, BaseException | None], None]
Listener = Callable[[list[Event]], None]
Gauge = tuple[str, str, str, float | int]
Labelled = tuple[str, str, str, dict[str, int]]


class WalletSource(ABC):
    """The event feed and the answers behind one wallet port."""

    network: str
    public_key: str
    address: str

    @abstractmethod
    def listen(self, fn: Listener) -> None:
        """Call ``fn`` with each list of new events, in seq order, once they may be
        served."""

    @property
    @abstractmethod
    def seq(self) -> int:
        """The ``seq`` of the last event handed to the listeners."""

    @property
    @abstractmethod
    def height(self) -> int:
        """The best block height as of ``seq``."""

    @abstractmethod
    def oldest_seq(self) -> int:
        """The lowest ``seq`` a wallet may resume from and miss nothing."""

    @abstractmethod
    def events_for(self, addresses: Iterable[str], seq: int) -> tuple[bool, list[Event]]:
        """Kept events above ``seq`` (up to ``self.seq``) that name one of
        ``addresses`` or go to everyone; False when some were dropped."""

    @abstractmethod
    def reach(self, seq: int, done: Done) -> None:
        """``done(None)`` once ``self.seq`` has reached ``seq``."""

    @abstractmethod
    def snapshots(self, addresses: list[str], after: tuple[str, int] | None,
                  done: Done) -> None:
        """``done((seq, {address: snapshot}))``, taken atomically at ``seq``; called
        once ``self.seq`` has reached that ``seq``."""

    @abstractmethod
    def get_transaction(self, txid: Any, done: Done) -> None:
        """``done(the Transaction reply's data)``."""

    @abstractmethod
    def history(self, address: Any, limit: Any, before: Any, done: Done) -> None:
        """``done(the History reply's data)``."""

    def prepare_submit(self, tx: Any) -> tuple[int, Any]:
        """``(signatures the submission will have checked here, what to pass to
        submit)``: the session bounds the signatures one wallet has waiting."""
        return 0, tx

    @abstractmethod
    def submit(self, prepared: Any, done: Done) -> None:
        """Submit a transaction; ``done(txid)`` once the events of its acceptance
        have gone to the listeners."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """What ``GET /status`` answers."""

    @abstractmethod
    def metrics(self) -> tuple[list[Gauge], list[Labelled]]:
        """Prometheus rows of this source, beside the port's own."""


class LedgerSource(WalletSource):
    """The masternode's own ledger: answers at once, submissions by group commit."""

    def __init__(self, ledger: Ledger, commits: GroupCommit | None = None, *,
                 peer_info: Callable[[], list[dict[str, Any]]] | None = None,
                 extra_metrics: Callable[[], list[Gauge]] | None = None) -> None:
        """``peer_info``: getpeerinfo's rows for /status; ``extra_metrics``: more
        gauges and counters for /metrics (a node with peers has both)."""
        self.ledger = ledger
        self.commits = commits
        self.network = ledger.network
        self.public_key = ledger.public_key
        self.address = ledger.address
        self.peer_info = peer_info
        self.extra_metrics = extra_metrics

    def listen(self, fn: Listener) -> None:
        self.ledger.listen(fn)

    @property
    def seq(self) -> int:
        return self.ledger.seq

    @property
    def height(self) -> int:
        return self.ledger.height

    def oldest_seq(self) -> int:
        return self.ledger.reads.oldest_seq()

    def events_for(self, addresses: Iterable[str], seq: int) -> tuple[bool, list[Event]]:
        return self.ledger.reads.events_for(addresses, seq)

    def reach(self, seq: int, done: Done) -> None:
        # The ledger is the source of every seq: a wallet ahead of it (a database
        # replaced under it) is answered from where the ledger is.
        done(None, None)

    def snapshots(self, addresses: list[str], after: tuple[str, int] | None,
                  done: Done) -> None:
        reads = self.ledger.reads
        try:
            # One loop turn, no commit between: the seq and the snapshots agree.
            out = (self.ledger.seq, {a: reads.snapshot(a, after) for a in addresses})
        except (RequestError, StorageError) as e:
            done(None, e)
            return
        done(out, None)

    def get_transaction(self, txid: Any, done: Done) -> None:
        _now(done, lambda: self.ledger.reads.get_transaction(txid))

    def history(self, address: Any, limit: Any, before: Any, done: Done) -> None:
        _now(done, lambda: self.ledger.reads.history(address, limit, before))

    def prepare_submit(self, tx: Any) -> tuple[int, Any]:
        if self.commits is None:
            return 0, tx
        # Only a transaction that passes the checks that cost no signature has any
        # checked (``Mempool.spendable``); those count against the budget.
        try:
            prepared = parse_tx(tx)
        except TxFormatError:
            return 0, tx  # ``submit`` refuses it with the reason
        return (len(prepared.inputs) if self.ledger.mempool.spendable(prepared) else 0), \
            prepared

    def submit(self, prepared: Any, done: Done) -> None:
        if self.commits is None:
            _now(done, lambda: self.ledger.submit(prepared))
            return
        tx = prepared if isinstance(prepared, Transaction) else None
        self.commits.submit(lambda: self.ledger.submit(prepared), done, tx)

    def status(self) -> dict[str, Any]:
        return status(self.ledger,
                      peers=self.peer_info() if self.peer_info is not None else None)

    def metrics(self) -> tuple[list[Gauge], list[Labelled]]:
        reads = self.ledger.reads
        extra = self.extra_metrics() if self.extra_metrics is not None else []
        return ([("timefast_pending_transactions", "gauge", "Transactions awaiting quorum",
                  reads.counts()["pending"]), *extra],
                [("timefast_transactions_total", "outcome", "Transactions by outcome",
                  reads.outcome_counts())])


def _now(done: Done, fn: Callable[[], Any]) -> None:
    try:
        value = fn()
    except (RequestError, StorageError) as e:  # refusals; a bug propagates
        done(None, e)
        return
    done(value, None)
