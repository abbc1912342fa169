"""What a peer may ask of this node (SPEC 7.3 "Budgets"), sans-I/O.

Requests (``GetBlocks``, ``GetPending``, later ``GetEntries``) cost the answering
node reads, encoding and output bytes while costing the asker a few bytes: without
limits a 31-byte ``GetPending`` buys a 4 MB answer.  So a peer's requests, all kinds
together, are answered at most ``RATE`` times a second (``RequestBudget``), the answers
to peers outside the voting set share one node-wide byte budget (``TokenBucket``), and
an answer is encoded once and shared by every peer asking the same thing while the
ledger state it depends on holds (``AnswerCache``).  Callers pass ``now`` (any
monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Hashable

RATE = 2.0  # answers per second per peer, whatever it asks (SPEC 7.3)
BURST = 2.0  # ...taken at once after a quiet while: a new link's first requests


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; starts full."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
            self._at = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if held; False (nothing taken) if not."""
        self._refill(now)
        if self.tokens < n:
            return False
        self.tokens -= n
        return True

    def available(self, now: float) -> bool:
        """Whether any token is held (a cost known only afterwards may then be
        ``charge``d, the bucket going below zero and refilling from there)."""
        self._refill(now)
        return self.tokens > 0

    def charge(self, now: float, n: float) -> None:
        """Take ``n`` tokens whether held or not."""
        self._refill(now)
        self.tokens -= n


class RequestBudget:
    """One peer's request rate: one ``TokenBucket`` for every kind of request (SPEC
    7.3: ``GetBlocks``, ``GetPending`` and ``GetEntries`` are answered at most twice
    a second per peer, not twice each). An honest node asks for blocks at most once a
    second and for missing votes at most once a second; a new link's first two
    requests (pending, then blocks when behind) are the burst."""

    def __init__(self, rate: float = RATE, burst: float = BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._bucket: TokenBucket | None = None

    def allow(self, now: float) -> bool:
        """Whether one more request is answered now (counted if so)."""
        if self._bucket is None:
            self._bucket = TokenBucket(self.rate, self.burst, now)
        return self._bucket.take(now)


class AnswerCache:
    """Encoded answers per kind of request, for the ledger state they were made from.

    An entry is used only while its kind's ``state`` is the one given (a new state
    drops every entry of the kind at once) and for at most ``ttl`` seconds (what a
    state key does not capture, such as votes still arriving, goes stale no longer
    than that).  At most ``max_entries`` entries and ``max_bytes`` per kind, the oldest
    dropped first.
    """

    def __init__(self, *, ttl: float = 1.0, max_entries: int = 16,
                 max_bytes: int = 32 << 20) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        # kind -> (state, {request key: (made at, frame)}), oldest first
        self._kinds: dict[str, tuple[Hashable, dict[Hashable, tuple[float, bytes]]]] = {}

    def _entries(self, kind: str, state: Hashable) -> dict[Hashable, tuple[float, bytes]]:
        held = self._kinds.get(kind)
        if held is None or held[0] != state:
            held = self._kinds[kind] = (state, {})
        return held[1]

    def get(self, kind: str, key: Hashable, state: Hashable, now: float) -> bytes | None:
        """The frame held for ``key`` made at ``state`` and not older than ``ttl``."""
        entries = self._entries(kind, state)
        entry = entries.get(key)
        if entry is None or now - entry[0] > self.ttl:
            entries.pop(key, None)
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, kind: str, key: Hashable, state: Hashable, frame: bytes, now: float
            ) -> None:
        """Keep ``frame`` as the answer to ``key`` at ``state``."""
        entries = self._entries(kind, state)
        entries.pop(key, None)
        entries[key] = (now, frame)
        size = sum(len(f) for _, f in entries.values())
        while len(entries) > self.max_entries or (size > self.max_bytes and entries):
            _, (_, old) = next(iter(entries.items()))
            del entries[next(iter(entries))]
            size -= len(old)

    def __len__(self) -> int:
        return sum(len(e) for _, e in self._kinds.values())
