"""Misbehaviour scores (SPEC 7.3 "Budgets", last bullet), sans-I/O.

Each peer key (and, for keys outside the voting set, each IP) has a score; each
fault adds points (``FATAL`` for a bad signature or a message that does not parse,
fewer for softer faults such as requests over budget).  Points fade at ``decay`` a
second, so a peer that overshoots now and then never adds up; one that reaches
``threshold`` is refused for ``refusal`` seconds (10 minutes).  The switch decides
who may be refused at all (never a member of the voting set, never loopback or a
``PEERS`` address); this class only counts, fed ``now`` (any monotonic seconds).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

THRESHOLD = 100.0
FATAL = THRESHOLD  # a bad signature, a message that does not parse: refused at once
SOFT = 1.0  # a request over budget, a re-spend the sender should know was spent
PREAUTH = 10.0  # a fault before Auth, on the IP only (the key is not proven yet)
REFUSAL = 600.0  # seconds a key (or IP) that reached the threshold is refused
DECAY = 1.0  # points a second


class Scores:
    """Scores and refusals by subject (a key or an IP), bounded in memory.

    An entry is (points, when, refused until); one whose points faded and whose
    refusal ran out is forgotten.  At most ``max_entries`` are held: past that the
    least recently touched of those not refused go first (a flood of fresh keys
    pushes out fresh keys, each of whose IPs is counted too).
    """

    def __init__(self, *, threshold: float = THRESHOLD, refusal: float = REFUSAL,
                 decay: float = DECAY, max_entries: int = 4096) -> None:
        self.threshold = threshold
        self.refusal = refusal
        self.decay = decay
        self.max_entries = max_entries
        self.refusals = 0  # subjects that reached the threshold and may be refused
        self._entries: dict[str, tuple[float, float, float]] = {}

    def _points(self, who: str, now: float) -> tuple[float, float]:
        entry = self._entries.get(who)
        if entry is None:
            return 0.0, 0.0
        points, at, until = entry
        return max(0.0, points - (now - at) * self.decay), until

    def add(self, who: str, points: float, now: float, refusable: bool = True) -> bool:
        """Add ``points`` to ``who``'s score; True when this brought it to the
        threshold and ``who`` is ``refusable`` (refused from now for ``refusal``)."""
        score, until = self._points(who, now)
        score += points
        crossed = refusable and score >= self.threshold and until <= now
        if crossed:
            until = now + self.refusal
            self.refusals += 1
            score = 0.0  # the refusal is the penalty: counting starts again after it
        self._entries.pop(who, None)  # re-inserted last: the dict is oldest-touched first
        self._entries[who] = (score, now, until)
        self._trim(now)
        return crossed

    def refused_for(self, who: str, now: float) -> float:
        """Seconds ``who`` is still refused (0: it is not)."""
        entry = self._entries.get(who)
        return 0.0 if entry is None else max(0.0, entry[2] - now)

    def score(self, who: str, now: float) -> int:
        """``who``'s score now, rounded (0 when not known)."""
        return round(self._points(who, now)[0])

    def refused(self, now: float) -> int:
        """How many subjects are refused now."""
        return sum(1 for _, _, until in self._entries.values() if until > now)

    def _trim(self, now: float) -> None:
        if len(self._entries) <= self.max_entries:
            return
        # First what no longer matters (points faded, refusal over); then the oldest
        # touched, down to three quarters, so that a flood sweeps once in a while and
        # not on every point.
        for who in [w for w, (_, _, until) in self._entries.items()
                    if until <= now and self._points(w, now)[0] == 0.0]:
            del self._entries[who]
        excess = len(self._entries) - (self.max_entries - self.max_entries // 4)
        if excess <= 0:
            return
        # Refusals running go last: a flood of fresh subjects must not wash them out.
        order = sorted(self._entries, key=lambda w: self._entries[w][2] > now)
        for who in order[:excess]:
            del self._entries[who]

    def __len__(self) -> int:
        return len(self._entries)


class Refusals:
    """The scores of peer keys and IPs and who is refused (SPEC 7.3).

    A key of the voting set is scored (``getpeerinfo`` shows it) but never refused;
    any other key that reaches the threshold is refused, and its IP with it (keys are
    free, addresses are not) unless the IP is loopback or ``exempt`` (the hosts of
    ``PEERS`` and ``addnode``).  Before a peer's Auth its key is not proven: a fault
    then counts ``PREAUTH`` points against its IP only, so that a misconfigured node
    redialling with backoff is never refused, while a flood from one IP is.
    """

    def __init__(self, masternodes: Collection[str], *, max_entries: int = 4096) -> None:
        self.masternodes = frozenset(masternodes)
        self.keys = Scores(max_entries=max_entries)
        self.ips = Scores(max_entries=max_entries)
        self.exempt: set[str] = set()

    def refusable_ip(self, host: str | None) -> str | None:
        """``host`` if it may be refused (not None, loopback or exempt)."""
        if host is None or host in self.exempt:
            return None
        try:
            if ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            pass
        return host

    def fault(self, key: str | None, host: str | None, points: float, now: float) -> bool:
        """Count a fault of the peer with the proven ``key`` (None before its Auth)
        at ``host`` (None: not refusable by IP, e.g. an address this node dialled);
        True when the peer is refused now."""
        member = key is not None and key in self.masternodes
        if key is None:
            points = min(points, PREAUTH)
        key_refused = key is not None and self.keys.add(key, points, now,
                                                        refusable=not member)
        host = None if member else self.refusable_ip(host)
        if host is None:
            return key_refused
        self.ips.add(host, self.ips.threshold if key_refused else points, now)
        return key_refused or self.ips.refused_for(host, now) > 0

    def key_refused(self, key: str, now: float) -> float:
        """Seconds ``key`` is still refused (0 for any key of the voting set)."""
        return 0.0 if key in self.masternodes else self.keys.refused_for(key, now)

    def ip_refused(self, host: str, now: float) -> float:
        """Seconds ``host`` is still refused."""
        return self.ips.refused_for(host, now)

    def score(self, key: str, now: float) -> int:
        """``key``'s score now."""
        return self.keys.score(key, now)

    @property
    def refusals(self) -> int:
        """Keys and IPs that reached the threshold and were refused, in all."""
        return self.keys.refusals + self.ips.refusals

    def refused(self, now: float) -> int:
        """Keys and IPs refused now."""
        return self.keys.refused(now) + self.ips.refused(now)
