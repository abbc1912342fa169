"""A fault-injection hook for tests, like Bitcoin Core's ``-dbcrashratio``.

``TIMEFAST_CRASH_AT=<point>[:<n>]`` (read once, at start, by ``arm``) makes the node
SIGKILL itself the ``n``-th time (default 1) it reaches ``point``: a real kill -9,
nothing flushed or closed.  The points are the edges where a masternode's votes
become durable before they leave (SPEC 7.4, 7.5):

- ``approval``: own votes decided (their transactions stored), the batch that will
  hold them not yet signed or stored (``ledger.votes.Votes.sign_batch``);
- ``batch``: the batch signed and its rows written in the open transaction, not yet
  committed.  The batch, its number (the highest stored) and its approvals are one
  commit: ``batch`` is that commit's near side, ``send`` its far side;
- ``send``: that commit done and synced, the batch not yet on the wire;
- ``precommit``: the consensus record holding the lock persisted, the precommit for
  that block not yet sent.

Unset, ``reached`` returns at its first test: nothing is counted or logged.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("timefast.crash")

ENV = "TIMEFAST_CRASH_AT"
POINTS = ("approval", "batch", "send", "precommit")

# (point, n): armed; None: every point is a no-op.
_armed: tuple[str, int] | None = None
_count = 0


def arm(spec: str | None) -> None:
    """Arm the hook from ``spec`` (``point`` or ``point:n``; None or empty: disarm).
    ``ValueError`` for an unknown point or an ``n`` below 1."""
    global _armed, _count
    _count = 0
    if not spec:
        _armed = None
        return
    point, _, n = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"{ENV}: {point!r} is not one of {', '.join(POINTS)}")
    if n and not (n.isdigit() and int(n) >= 1):
        raise ValueError(f"{ENV}: {n!r} is not a count of 1 or more")
    _armed = (point, int(n) if n else 1)


def reached(point: str) -> None:
    """The node is at ``point``: the armed point's ``n``-th time kills the process."""
    global _count
    if _armed is None or _armed[0] != point:
        return
    _count += 1
    if _count == _armed[1]:
        # Logged (and flushed: the handler writes each record at once) first, so that
        # a test can tell this death from any other.
        log.critical("crash point %s reached (time %d): SIGKILL", point, _count)
        os.kill(os.getpid(), signal.SIGKILL)
