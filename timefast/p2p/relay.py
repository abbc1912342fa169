"""What this node has relayed already (SPEC 7.3, 7.4): ``RelayFilter``, one per node,
shared by the reactors, so that each transaction and vote batch reaches every peer
once; and ``Equivocation``, the evidence of two batches under one number."""

from __future__ import annotations

from dataclasses import dataclass

from timefast.wire import Votes


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two different signed batches of one voter under one number (SPEC 7.4): the
    evidence, to keep, log and show; both batches' votes still count."""

    voter: str
    batch: int
    first: Votes
    second: Votes


class RelayFilter:
    """Which transactions and vote batches this node has already relayed, so that
    each reaches every peer once (SPEC 7.3, 7.4); one per node, shared by its links.

    Only what the caller verified goes in: a txid is added after the transaction's
    signatures verified, a batch after its signature verified, so that a copy with a
    broken signature never hides the real one. Both sets are bounded (oldest out
    first): they need to cover the time a message takes to spread, not the chain;
    the ledger remembers the rest.
    """

    def __init__(self, network_id: bytes, max_txids: int = 262_144,
                 max_batches: int = 65_536) -> None:
        """``network``: the network id (batch content hashes bind it)."""
        self.network_id = network_id
        self.max_txids = max_txids
        self.max_batches = max_batches
        self._txids: dict[str, None] = {}
        # (voter, batch) -> the batches seen under that number, by content hash
        self._batches: dict[tuple[str, int], dict[bytes, Votes]] = {}

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
        """Whether this very batch (voter, number and content) was relayed already."""
        seen = self._batches.get((votes.voter, votes.batch))
        return seen is not None and votes.content_hash(self.network_id) in seen

    def add_votes(self, votes: Votes) -> tuple[bool, Equivocation | None]:
        """Record a batch whose signature verified. Returns (new: relay it,
        evidence): evidence when another batch with other content was seen under the
        same (voter, batch); that batch is new too and is relayed, so every node sees
        both."""
        key = (votes.voter, votes.batch)
        content = votes.content_hash(self.network_id)
        seen = self._batches.get(key)
        if seen is None:
            self._batches[key] = {content: votes}
            if len(self._batches) > self.max_batches:
                del self._batches[next(iter(self._batches))]
            return True, None
        if content in seen:
            return False, None
        first = next(iter(seen.values()))
        seen[content] = votes
        return True, Equivocation(votes.voter, votes.batch, first, votes)
