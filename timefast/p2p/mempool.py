"""Transactions between peers (SPEC 7.3): the ``Tx``, ``GetPending`` and ``Pending``
reactor.  It decides no ledger rule: transactions from peers go through the node's
group commit like a wallet's, and it relays what the ledger accepted:

- a ``Tx`` is submitted as relayed (its signatures are checked ahead on the group
  commit's thread); once accepted it is relayed to every other peer (the ledger's
  ``TxAccepted`` change), each transaction once;
- an orphan whose parents were finalized or confirmed is submitted again;
- ``GetPending`` is sent to each new peer and, for transactions still without
  quorum, every ``FINALITY_TIMEOUT``; its answer carries the transactions and the
  signed batches that vote on them (handed to the votes reactor).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from timefast import wire
from timefast.commits import GroupCommit
from timefast.journal import Change, TxAccepted, TxConfirmed, TxFinalized
from timefast.ledger import Ledger, LedgerError, SpentConflict
from timefast.p2p.relay import RelayFilter
from timefast.p2p.scores import SOFT
from timefast.p2p.switch import Peer, Reactor, Switch
from timefast.transaction import Transaction
from timefast.transaction import parse as parse_tx

log = logging.getLogger("timefast.p2p")

ASK_LIMIT = 1000  # txids per GetPending sent for transactions without quorum
ASKS_OPEN = 4  # unanswered GetPending counted per peer


class MempoolReactor(Reactor):
    """Takes and relays transactions; asks peers for what lacks quorum."""

    MESSAGES: ClassVar[tuple[type[wire.Message], ...]] = (
        wire.Tx, wire.GetPending, wire.Pending)

    def __init__(self, ledger: Ledger, commits: GroupCommit, switch: Switch,
                 relay: RelayFilter, take_votes: Callable[[Peer, wire.Votes], None]
                 ) -> None:
        self.ledger = ledger
        self.commits = commits
        self.switch = switch
        self.relay = relay
        self.take_votes = take_votes
        self.received = 0
        self.relayed = 0
        self.asked = 0
        self._source: dict[str, Peer] = {}  # txid -> the peer it came from
        # GetPending sent to each peer and not answered yet (at most ASKS_OPEN): only
        # an answer may carry the rejections a peer passes on (``_take_tx``).
        self._asked: dict[Peer, int] = {}
        self._ticker: asyncio.Task[None] | None = None
        ledger.watch(self._changes)

    def start(self) -> None:
        """Every second, ask again for what lacks quorum past FINALITY_TIMEOUT."""
        self._ticker = asyncio.ensure_future(self._tick())

    def stop(self) -> None:
        """Stop asking."""
        if self._ticker is not None:
            self._ticker.cancel()

    def metrics(self) -> list[tuple[str, str, str, float | int]]:
        """Transaction counters for ``/metrics``."""
        return [
            ("timefast_peer_tx_received_total", "counter", "Tx messages from peers",
             self.received),
            ("timefast_peer_tx_relayed_total", "counter", "Transactions relayed to peers",
             self.relayed),
            ("timefast_pending_asked_total", "counter",
             "GetPending requests for transactions still without quorum", self.asked)]

    def peer_up(self, peer: Peer, hello: wire.Hello) -> None:
        """A new peer is asked for everything it holds pending."""
        self._asked[peer] = 1
        self.switch.send_to(peer, wire.GetPending(None))

    def peer_down(self, peer: Peer) -> None:
        """Nothing of a closed link is kept."""
        self._asked.pop(peer, None)

    def receive(self, peer: Peer, msg: wire.Message) -> None:
        """A ``Tx``, ``GetPending`` or ``Pending`` from a peer."""
        if isinstance(msg, wire.Tx):
            self.received += 1
            self._take_tx(peer, msg.tx)
        elif isinstance(msg, wire.GetPending):
            self._answer_pending(peer, msg)
        elif isinstance(msg, wire.Pending):
            asked = self._asked.get(peer, 0)
            if asked:
                self._asked[peer] = asked - 1
            for tx in msg.txs:
                self._take_tx(peer, tx, answered=asked > 0)
            for votes in msg.votes:
                self.take_votes(peer, votes)
        else:
            self.refuse(msg)

    def _answer_pending(self, peer: Peer, msg: wire.GetPending) -> None:
        """Within the switch's request budgets (SPEC 7.3), and made once for every
        peer asking the same while the ledger's seq and height hold (the switch's
        answer cache also ages it out: votes arriving do not all move the seq)."""
        def make() -> bytes:
            txs, batches = self.ledger.pending_for(
                msg.txids, self.switch.max_message_bytes // 2)
            return wire.encode(wire.Pending(tuple(txs), tuple(batches)))
        self.switch.answer(peer, "pending", msg.txids, (self.ledger.seq, self.ledger.height),
                           make)

    def _take_tx(self, peer: Peer, tx: Transaction, answered: bool = False) -> None:
        """Submit a peer's transaction as relayed.  ``answered``: it came in the
        peer's answer to this node's ``GetPending``, where an honest peer passes on
        what it rejected lately (``Ledger.pending_for``): a spend of a coin spent for
        good is then stored rejected, as there (``Ledger.submit``), and counts
        against the peer only in a ``Tx`` or an unasked ``Pending``."""
        txid = tx.txid
        if self.relay.tx_known(txid):
            return
        if txid in self._source or self.ledger.status_of(txid) is not None:
            return  # on its way in, or known (pending, decided for good, confirmed)
        self._source[txid] = peer
        # The height the peer claimed before it sent this (SPEC 7.3 Budgets): frames
        # on a link arrive in order and a node sends ``Status`` after every block it
        # applies, and it relays a transaction when the commit accepting it is
        # announced.  A peer that claimed a height above the block confirming a rival
        # spend had applied that block before it relayed this, and an honest node then
        # refuses such a spend.  Strictly above: a spend accepted in the same group
        # commit as the block may be announced after that commit's ``Status``.
        height = peer.height

        def done(_: Any, err: BaseException | None) -> None:
            self._source.pop(txid, None)  # (the relay, on TxAccepted, has used it)
            if err is None:
                return
            if isinstance(err, SpentConflict):
                # Only the height rule: whether the finality certificate reached the
                # peer earlier would need a record of every certificate sent to
                # every peer; without a block a finalized spend may still be news.
                if (not answered and err.confirmed_at is not None
                        and height > err.confirmed_at):
                    # A soft fault (SPEC 7.3): a member's link stays, the score
                    # refuses an outsider that keeps at it.
                    self.switch.penalize(peer, SOFT, f"transaction {txid} spends an output "
                                         f"confirmed spent at height {err.confirmed_at}, "
                                         f"which the peer had (height {height})")
                else:
                    log.debug("peer %s: transaction %s not taken: %s",
                              (peer.key or "?")[:16], txid, err.message)
            elif isinstance(err, LedgerError) and "bad signature" in err.message:
                self.switch.misbehaved(peer, f"transaction {txid}: {err.message}")
            elif isinstance(err, LedgerError):
                log.debug("peer %s: transaction %s not taken: %s", (peer.key or "?")[:16],
                          txid, err.message)

        self.commits.submit(lambda: self.ledger.submit(tx, relayed=True, answered=answered),
                            done, tx)

    def _changes(self, changes: list[Change]) -> None:
        parents: list[str] = []
        for c in changes:
            if isinstance(c, TxAccepted):
                source = self._source.pop(c.txid, None)
                if self.relay.add_tx(c.txid):
                    # Relayed whatever became of it since: one accepted and then
                    # rejected (or finalized) within one group commit is no longer
                    # pending when the commit is announced, and the other nodes must
                    # still hear of it, to end it as this node did.
                    tx = self.ledger.pending_tx(c.txid)
                    if tx is None:
                        tx = parse_tx(orjson.loads(c.raw))
                    self.switch.broadcast(wire.Tx(tx), but=source)
                    self.relayed += 1
            elif isinstance(c, TxFinalized | TxConfirmed):
                parents.append(c.txid)
        if parents and self.ledger.has_orphans():
            for tx in self.ledger.take_orphans(parents):
                self._resubmit(tx)

    def _resubmit(self, tx: Transaction) -> None:
        """An orphan whose inputs appeared: submitted again (or kept again)."""
        def done(_: Any, err: BaseException | None) -> None:
            if err is not None and not (isinstance(err, LedgerError)
                                        and err.code == "TX_ORPHAN"):
                log.debug("orphan %s not taken: %s", tx.txid, err)
        self.commits.submit(lambda: self.ledger.submit(tx, relayed=True), done, tx)

    async def _tick(self) -> None:
        # Peers answer this node's requests at most twice a second, GetBlocks and
        # GetPending together (SPEC 7.3): asking for votes once a second leaves the
        # other for blocks (block sync asks at most once a second).
        period = 1.0
        while True:
            await asyncio.sleep(period)
            due = self.ledger.overdue()
            if due and self.switch.by_key:
                self.asked += 1
                for p in self.switch.by_key.values():
                    self._asked[p] = min(ASKS_OPEN, self._asked.get(p, 0) + 1)
                self.switch.broadcast(wire.GetPending(tuple(due[:ASK_LIMIT])))
