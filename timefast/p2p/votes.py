"""Finality votes between masternodes (SPEC 7.4): the ``Votes`` reactor.

- a ``Votes`` batch has its signature checked off the event loop (many at once),
  then is counted by the ledger and relayed once per (voter, batch, content);
- the node's own votes are signed in batches (``Ledger.sign_batch``) a few
  milliseconds after the ledger queues them, and leave only after the commit that
  stores them.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from timefast import crashpoints, wire
from timefast.commits import GroupCommit
from timefast.crypto import verify_batch
from timefast.ledger import Ledger
from timefast.p2p.relay import RelayFilter
from timefast.p2p.switch import Peer, Reactor, Switch

log = logging.getLogger("timefast.p2p")

VOTE_DELAY = 0.005  # seconds own votes wait to be signed together


class VotesReactor(Reactor):
    """Takes, checks, counts and relays vote batches; signs the node's own."""

    MESSAGES: ClassVar[tuple[type[wire.Message], ...]] = (wire.Votes,)

    def __init__(self, ledger: Ledger, commits: GroupCommit, switch: Switch,
                 relay: RelayFilter) -> None:
        self.ledger = ledger
        self.commits = commits
        self.switch = switch
        self.relay = relay
        self.masternodes = frozenset(ledger.masternodes)
        self.received = 0
        self.dropped_unread = 0  # batches dropped before their signature check
        self.relayed = 0
        self.signed = 0
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="timefast-p2p-verify")
        self._to_check: list[tuple[Peer, wire.Votes]] = []
        self._checking_votes: set[tuple[str, int, str]] = set()
        # Voters logged as equivocators (once each: one may use up many numbers).
        self._equivocators: set[str] = set()
        self._checking = False
        self._vote_timer: asyncio.TimerHandle | None = None
        self._signing = False
        self._started = False
        ledger.on_own_votes(self._want_votes)

    def start(self) -> None:
        """Sign what the ledger queued before the peers were up."""
        self._started = True
        if self.ledger.has_own_votes():
            self._want_votes()

    def stop(self) -> None:
        """Cancel the signing timer and the checker thread."""
        if self._vote_timer is not None:
            self._vote_timer.cancel()
        self._checker.shutdown(wait=False)

    def metrics(self) -> list[tuple[str, str, str, float | int]]:
        """Vote batch counters for ``/metrics``."""
        return [
            ("timefast_peer_votes_received_total", "counter",
             "Vote batches from peers", self.received),
            ("timefast_peer_votes_dropped_unread_total", "counter",
             "Vote batches dropped before their signature check (a voter past its "
             "early-vote quota voting on nothing in flight)", self.dropped_unread),
            ("timefast_peer_votes_relayed_total", "counter",
             "Vote batches relayed or sent to peers", self.relayed),
            ("timefast_vote_batches_signed_total", "counter",
             "Vote batches this masternode signed", self.signed),
            ("timefast_early_votes", "gauge",
             "Votes kept in memory for transactions not held yet",
             len(self.ledger.votes.early_votes)),
            ("timefast_early_votes_dropped_total", "counter",
             "Votes for transactions not held dropped over their voter's quota",
             self.ledger.votes.early_votes.dropped)]

    def receive(self, peer: Peer, msg: wire.Message) -> None:
        """A ``Votes`` batch from a peer."""
        if not isinstance(msg, wire.Votes):
            self.refuse(msg)
            return
        self.received += 1
        self.take(peer, msg)

    def take(self, peer: Peer, votes: wire.Votes) -> None:
        """Check, count and relay a batch (from ``Votes`` or from ``Pending``)."""
        if self.relay.votes_known(votes):
            return
        if votes.voter not in self.masternodes:
            self.switch.misbehaved(peer, f"votes by {votes.voter}, not a masternode")
            return
        if not self.ledger.votes.admits(votes):
            # A voter past its early-vote quota voting on nothing in flight here: not
            # worth a signature check (89k one-vote batches in 40 s kept four nodes'
            # cores busy checking them).
            self.dropped_unread += 1
            return
        # The same batch from several peers while the first copy is being checked:
        # checked and counted once.
        key = (votes.voter, votes.batch, votes.signature)
        if key in self._checking_votes:
            return
        self._checking_votes.add(key)
        self._to_check.append((peer, votes))
        if not self._checking:
            self._check_votes()

    def _check_votes(self) -> None:
        batch, self._to_check = self._to_check, []
        if not batch:
            return
        self._checking = True
        items = [wire.votes_check(v, self.switch.network_id) for _, v in batch]
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._checker, verify_batch, items)

        def checked(f: asyncio.Future[bytes]) -> None:
            self._checking = False
            if f.cancelled() or f.exception() is not None:
                return
            good = f.result()
            for _, votes in batch:
                self._checking_votes.discard((votes.voter, votes.batch, votes.signature))
            for (peer, votes), ok in zip(batch, good, strict=True):
                if ok:
                    self._count_votes(peer, votes)
                else:
                    self.switch.misbehaved(peer, f"Votes {votes.voter[:16]}/{votes.batch}: "
                                           "signature does not verify")
            self._check_votes()
        fut.add_done_callback(checked)

    def _count_votes(self, peer: Peer | None, votes: wire.Votes) -> None:
        new, evidence = self.relay.add_votes(votes)
        if not new:
            return
        if evidence is not None and votes.voter not in self._equivocators:
            self._equivocators.add(votes.voter)
            log.warning("masternode %s signed two batches numbered %d (logged once; its "
                        "further batches under used numbers are dropped unread)",
                        votes.voter[:16], votes.batch)

        def done(_: Any, err: BaseException | None) -> None:
            if err is not None:
                log.warning("votes %s/%d not counted: %s", votes.voter[:16], votes.batch, err)
                return
            self._relay_votes(votes, peer)
        self.commits.submit(lambda: self.ledger.add_batch(votes), done)

    def _relay_votes(self, votes: wire.Votes, source: Peer | None) -> None:
        """Pass a counted batch on.  Masternodes link to every other masternode, so a
        batch that came straight from its voter reached the others the same way: it
        goes on to one masternode only (the next after this one in key order), and
        to peers outside the voting set.  That one copy is what spreads a voter's
        second, different batch under one number: whoever gets it second-hand and
        finds it new passes it to every peer, so every node ends with both (the
        evidence, and both count).  A batch that came second-hand goes to every
        other peer.  A masternode that missed a batch gets it when it asks again for
        the votes of what it holds pending (``GetPending``, every FINALITY_TIMEOUT)."""
        frame = wire.encode(votes)
        by_key = self.switch.by_key
        direct = source is not None and source.key == votes.voter
        ring: str | None = None
        if direct:
            others = sorted(k for k, p in by_key.items() if p.link.peer_masternode
                            and k != votes.voter and p is not source)
            later = [k for k in others if k > self.ledger.public_key]
            ring = (later or others)[0] if others else None
        to = [p for key, p in by_key.items()
              if p is not source and key != votes.voter
              and not (direct and p.link.peer_masternode and key != ring)]
        self.relayed += self.switch.broadcast(frame, to=to)

    # -- own votes -----------------------------------------------------------------

    def _want_votes(self) -> None:
        # The ledger queues own votes from the start; they are signed once the
        # switch is up (``start``), as before there was anyone to send them to.
        if self._started and self._vote_timer is None and not self._signing:
            self._vote_timer = asyncio.get_running_loop().call_later(VOTE_DELAY,
                                                                      self._sign_votes)

    def _sign_votes(self) -> None:
        self._vote_timer = None
        self._signing = True

        def done(msg: wire.Votes | None, err: BaseException | None) -> None:
            self._signing = False
            if err is not None:
                log.error("could not store own votes: %s", err)
            elif msg is not None:
                # Stored (with the approvals it holds) before it leaves.
                crashpoints.reached("send")
                self.relay.add_votes(msg)
                self.switch.broadcast(msg)
                self.signed += 1
            if self.ledger.has_own_votes():
                self._want_votes()
        self.commits.submit(self.ledger.sign_batch, done)
