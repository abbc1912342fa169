"""Votes that come before their transaction (SPEC 7.3 Budgets, 7.4), and the batch
numbers a voter used without anything being written.

A vote for a transaction this node does not hold is kept in memory only, with the
signed batch it came in (the certificate material, written to disk with the vote
once the transaction arrives): at most ``EARLY_PER_VOTER`` votes and
``EARLY_BYTES_PER_VOTER`` bytes of batches per voter, each for ``EARLY_VOTES_TTL``
seconds.  A voter past its quota has its new early votes dropped, not its older
ones: the quota is the voter's own, so a member that floods votes for transactions
nobody holds only spends it, never another voter's.

Invariant: a batch body is held exactly while some early vote refers to it
(``_Voter.bodies`` counts the references), so the memory held per voter is within
its quotas whatever the batches' sizes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from timefast.tables import Vote

EARLY_PER_VOTER = 4_096
EARLY_BYTES_PER_VOTER = 4 << 20
EARLY_VOTES_TTL = 600.0
# Batch numbers remembered per voter for batches that wrote nothing (their votes
# were all early or on decided transactions): enough to tell the same batch again,
# or a second one under its number, while it still spreads.
NUMBERS_PER_VOTER = 4_096

BatchKey = tuple[str, int, bytes]  # (voter, batch number, content digest)


@dataclass(slots=True)
class EarlyVote:
    """One early vote; ``batch``: the signed batch it came in (None: a single
    ``TIMEVOTE`` vote, which carries its own signature)."""

    vote: Vote
    batch: BatchKey | None
    seen: float


@dataclass(slots=True)
class _Body:
    """A signed batch held for early votes, and how many of them refer to it."""

    body: bytes
    refs: int = 0


class _Voter:
    """One voter's early votes, the batch bodies they refer to, and its unwritten
    batch numbers."""

    __slots__ = ("bodies", "bytes", "numbers", "votes")

    def __init__(self) -> None:
        self.votes: OrderedDict[tuple[str, bool], EarlyVote] = OrderedDict()
        self.bodies: dict[BatchKey, _Body] = {}
        self.bytes = 0
        self.numbers: OrderedDict[int, bytes] = OrderedDict()  # number -> digest


class EarlyVotes:
    """Early votes and unwritten batch numbers, per voter (see the module docstring)."""

    def __init__(self, quota: int = EARLY_PER_VOTER,
                 quota_bytes: int = EARLY_BYTES_PER_VOTER,
                 ttl: float = EARLY_VOTES_TTL) -> None:
        self.quota = quota
        self.quota_bytes = quota_bytes
        self.ttl = ttl
        self._voters: dict[str, _Voter] = {}
        self._by_tx: dict[str, dict[tuple[str, bool], EarlyVote]] = {}
        self.dropped = 0  # early votes refused over a voter's quota

    def __len__(self) -> int:
        return sum(len(v.votes) for v in self._voters.values())

    def held_bytes(self) -> int:
        """Bytes of signed batches held for early votes."""
        return sum(v.bytes for v in self._voters.values())

    def has(self, txid: str, voter: str) -> bool:
        """Whether ``voter`` has an early vote on ``txid``."""
        held = self._by_tx.get(txid)
        return held is not None and ((voter, True) in held or (voter, False) in held)

    def room(self, voter: str, now: float) -> bool:
        """Whether ``voter`` may have another early vote kept (expired ones go first)."""
        v = self._voters.get(voter)
        if v is None:
            return True
        self._expire(v, now)
        return len(v.votes) < self.quota

    def keep(self, vote: Vote, now: float, batch: BatchKey | None = None,
             body: bytes = b"") -> bool:
        """Keep ``vote`` until its transaction arrives; ``batch`` and ``body``: the
        signed batch it came in.  False when the voter's quota refuses it."""
        v = self._voters.setdefault(vote.voter, _Voter())
        k = (vote.txid, vote.approve)
        if k in v.votes:
            return True
        self._expire(v, now)
        if len(v.votes) >= self.quota:
            self.dropped += 1
            return False
        if batch is not None:
            held = v.bodies.get(batch)
            if held is None:
                if v.bytes + len(body) > self.quota_bytes:
                    self.dropped += 1
                    return False
                held = v.bodies[batch] = _Body(body)
                v.bytes += len(body)
            held.refs += 1
        entry = EarlyVote(vote, batch, now)
        v.votes[k] = entry
        self._by_tx.setdefault(vote.txid, {})[(vote.voter, vote.approve)] = entry
        return True

    def votes_for(self, txid: str) -> list[tuple[Vote, BatchKey | None, bytes]]:
        """The early votes on ``txid``, each with its batch's key and body (kept
        until ``forget``)."""
        out: list[tuple[Vote, BatchKey | None, bytes]] = []
        for entry in self._by_tx.get(txid, {}).values():
            body = b""
            if entry.batch is not None:
                body = self._voters[entry.vote.voter].bodies[entry.batch].body
            out.append((entry.vote, entry.batch, body))
        return out

    def forget(self, txid: str) -> None:
        """Drop the early votes on ``txid`` (its transaction arrived)."""
        for entry in list(self._by_tx.get(txid, {}).values()):
            v = self._voters[entry.vote.voter]
            del v.votes[(txid, entry.vote.approve)]
            self._release(v, entry)

    def note_number(self, voter: str, batch: int, digest: bytes) -> None:
        """``voter``'s batch ``batch`` (content ``digest``) was taken and nothing of
        it written."""
        v = self._voters.setdefault(voter, _Voter())
        v.numbers[batch] = digest
        v.numbers.move_to_end(batch)
        while len(v.numbers) > NUMBERS_PER_VOTER:
            v.numbers.popitem(last=False)

    def number(self, voter: str, batch: int) -> tuple[bytes, bytes | None] | None:
        """``(digest, body)`` of an unwritten batch of ``voter`` under ``batch``
        (body None when no early vote holds it any more), or None."""
        v = self._voters.get(voter)
        digest = None if v is None else v.numbers.get(batch)
        if v is None or digest is None:
            return None
        held = v.bodies.get((voter, batch, digest))
        return digest, None if held is None else held.body

    def _expire(self, v: _Voter, now: float) -> None:
        while v.votes:
            entry = next(iter(v.votes.values()))
            if entry.seen + self.ttl > now:
                return
            del v.votes[(entry.vote.txid, entry.vote.approve)]
            self._release(v, entry)

    def _release(self, v: _Voter, entry: EarlyVote) -> None:
        vote = entry.vote
        on_tx = self._by_tx.get(vote.txid)
        if on_tx is not None:
            on_tx.pop((vote.voter, vote.approve), None)
            if not on_tx:
                del self._by_tx[vote.txid]
        if entry.batch is None:
            return
        held = v.bodies[entry.batch]
        held.refs -= 1
        if held.refs == 0:
            del v.bodies[entry.batch]
            v.bytes -= len(held.body)
