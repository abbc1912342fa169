"""What this node has relayed already (SPEC 7.3, 7.4): ``RelayFilter``, one per node,
shared by the reactors, so that each transaction and vote batch reaches every peer
once; and ``Equivocation``, two batches seen under one number."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from timefast.wire import Votes


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two different signed batches of one voter under one number (SPEC 7.4), by
    their content hashes: the ledger keeps the batches themselves as the evidence;
    both batches' votes still count."""

    voter: str
    batch: int
    first: bytes
    second: bytes


class RelayFilter:
    """Which transactions and vote batches this node has already relayed, so that
    each reaches every peer once (SPEC 7.3, 7.4); one per node, shared by its links.

    Only what the caller verified goes in: a txid is added after the transaction's
    signatures verified, a batch after its signature verified, so that a copy with a
    broken signature never hides the real one. Both records are bounded (oldest out
    first): they need to cover the time a message takes to spread, not the chain;
    the ledger remembers the rest.  Batches are kept per voter (``max_batches``
    numbers each, by content hash only), so that one voter's flood of numbers
    pushes out only its own; the voters are the voting set's, checked before.

    A number under which two different batches were seen is used up: a third batch
    under it is ``votes_known``, dropped unread (SPEC 7.3 Budgets), since the
    evidence is there already and a voter that signs many batches under one number
    must not make every node check, count and relay each of them.
    """

    def __init__(self, network_id: bytes, max_txids: int = 262_144,
                 max_batches: int = 8_192) -> None:
        """``network_id``: the network id (batch content hashes bind it)."""
        self.network_id = network_id
        self.max_txids = max_txids
        self.max_batches = max_batches
        self._txids: dict[str, None] = {}
        # voter -> batch number -> the content hashes seen under it (at most two),
        # oldest number first
        self._batches: dict[str, OrderedDict[int, tuple[bytes, ...]]] = {}

    def tx_known(self, txid: str) -> bool:
        """Whether the transaction was relayed already (skip checking it again)."""
        return txid in self._txids

    def add_tx(self, txid: str) -> bool:
        """Record a transaction whose signatures verified; True if it is new here
        (relay it to every peer but the one it came from)."""
        if txid in self._txids:
            return False
        self._txids[txid] = None
        if len(self._txids) > self.max_txids:
            del self._txids[next(iter(self._txids))]
        return True

    def votes_known(self, votes: Votes) -> bool:
        """Whether to drop this batch unread: this very batch (voter, number and
        content) was relayed already, or its number is used up (two different
        batches seen under it)."""
        numbers = self._batches.get(votes.voter)
        seen = None if numbers is None else numbers.get(votes.batch)
        if seen is None:
            return False
        return len(seen) >= 2 or votes.content_hash(self.network_id) in seen

    def add_votes(self, votes: Votes) -> tuple[bool, Equivocation | None]:
        """Record a batch whose signature verified. Returns (new: relay it,
        evidence): evidence when another batch with other content was seen under the
        same (voter, batch); that batch is new too and is relayed, so every node sees
        both.  A batch under a used-up number is not new."""
        numbers = self._batches.setdefault(votes.voter, OrderedDict())
        content = votes.content_hash(self.network_id)
        seen = numbers.get(votes.batch)
        if seen is None:
            numbers[votes.batch] = (content,)
            if len(numbers) > self.max_batches:
                numbers.popitem(last=False)
            return True, None
        if content in seen or len(seen) >= 2:
            return False, None
        numbers[votes.batch] = (*seen, content)
        return True, Equivocation(votes.voter, votes.batch, seen[0], content)
