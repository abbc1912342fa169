"""Votes on transactions (SPEC 4.3, 7.4): this masternode's own, signed in batches,
and every other masternode's, in batches or in the upstream ``TIMEVOTE`` form;
votes that come before their transaction; and the evidence of a masternode that
signed two contradicting votes.

In a network (more than one masternode, or this node outside the voting set) the
node's own votes are not cast inside the step that accepts a transaction: the
decision (approve once per outpoint) is queued, and ``sign_batch`` signs up to 256
of them at once, storing the batch (and with it the approvals) in a commit synced
to disk before anyone may send it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from timefast import crashpoints, wire
from timefast.crypto import HEX64, HEX128, TXID, verify, vote_bytes
from timefast.ledger.config import LedgerConfig
from timefast.ledger.early import BatchKey, EarlyVotes
from timefast.ledger.finality import Finality
from timefast.ledger.pool import Pending, Pool
from timefast.ledger.work import Step, Work
from timefast.privval import PrivValidator
from timefast.rules import LedgerError
from timefast.tables import EvidenceRow, Tables, Vote

log = logging.getLogger("timefast")

BATCH_VOTES = wire.MAX_VOTES_PER_BATCH  # own votes signed together at most


class Votes:
    """Own and others' votes, early votes and evidence (see the module docstring)."""

    def __init__(self, config: LedgerConfig, pool: Pool, work: Work, tables: Tables,
                 finality: Finality, privval: PrivValidator) -> None:
        self.config = config
        self.pool = pool
        self.work = work
        self.tables = tables
        self.finality = finality
        self.privval = privval
        self.own_queue: list[tuple[str, bool]] = []  # decided, not yet signed
        self.next_batch = 1
        self.equivocations: dict[str, int] = {}
        self.last_vote: dict[str, float] = {}
        # Votes for transactions not held yet, in memory only (SPEC 7.3 Budgets).
        self.early_votes = EarlyVotes()
        self._wanted: list[Callable[[], None]] = []

    def load(self) -> None:
        """Rebuild the batch counter and the evidence counts from the database."""
        self.own_queue.clear()
        self.next_batch = self.tables.last_batch(self.config.public_key) + 1
        self.equivocations.clear()
        for row in self.tables.evidence():
            self.equivocations[row.voter] = self.equivocations.get(row.voter, 0) + 1

    # -- own votes ---------------------------------------------------------------------

    def on_own_votes(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` whenever own votes are queued (its caller then has them signed
        by ``sign_batch``, through the group commit)."""
        self._wanted.append(fn)

    def decide(self, p: Pending) -> bool:
        """Approve once per outpoint: approve ``p`` unless this masternode approved
        another spend of one of its inputs that is still undecided."""
        txid = p.tx.txid
        ops = p.tx.outpoints()
        approved = self.pool.approved
        if any(approved.get(op, txid) != txid for op in ops):
            return False
        for op in ops:
            approved[op] = txid
        return True

    def queue_own(self, p: Pending) -> None:
        """Decide this masternode's vote on a newly accepted transaction; signed and
        stored by the next ``sign_batch`` before it may leave."""
        self.own_queue.append((p.tx.txid, self.decide(p)))
        for fn in self._wanted:
            fn()

    def sign_batch(self) -> wire.Votes | None:
        """Sign up to 256 queued own votes as the next batch and count them; returns
        the batch to send once this step has committed (None: nothing queued).

        The batch, its number and the approvals it holds are written in the same
        commit, synced to disk before it returns (``Store.sync_next_commit``), so a
        restarted masternode never signs a second batch under one number nor
        approves a second spend."""
        if not self.own_queue:
            return None
        crashpoints.reached("approval")
        votes = self.own_queue[:BATCH_VOTES]
        batch = self.next_batch
        msg = self.privval.sign_votes(batch, votes)

        def step(s: Step) -> None:
            self._record_batch(s, msg)

            def done() -> None:
                del self.own_queue[:len(votes)]
                self.next_batch = batch + 1
            s.after.append(done)
        self.work.sync_commit()
        self.work.run(step)
        return msg

    # -- others' votes -------------------------------------------------------------------

    def submit_vote(self, vote: Any) -> dict[str, Any]:
        """Take a masternode's signed vote (the RPC's ``submitvote``); returns the
        transaction's status after it (None while the transaction is not seen yet:
        the vote is kept until it arrives)."""
        if not isinstance(vote, dict):
            raise LedgerError("BAD_REQUEST", "vote must be an object")
        if self.config.networked:
            return self._submit_batch(vote)
        txid, voter, approve, sig = (vote.get("txid"), vote.get("voter"),
                                     vote.get("approve"), vote.get("signature"))
        if not isinstance(txid, str) or not TXID.fullmatch(txid):
            raise LedgerError("BAD_REQUEST", "vote.txid must be 64 lowercase hex characters")
        if not isinstance(voter, str) or not HEX64.fullmatch(voter):
            raise LedgerError("BAD_REQUEST", "vote.voter must be 64 hex characters")
        if not isinstance(approve, bool):
            raise LedgerError("BAD_REQUEST", "vote.approve must be true or false")
        if not isinstance(sig, str) or not HEX128.fullmatch(sig):
            raise LedgerError("BAD_REQUEST", "vote.signature must be 128 hex characters")
        voter = voter.lower()
        self.config.check_voter(voter)
        if not verify(bytes.fromhex(voter), vote_bytes(txid, approve), bytes.fromhex(sig)):
            raise LedgerError("BAD_REQUEST", "bad vote signature")
        if self._has_vote(txid, voter):
            raise LedgerError("BAD_REQUEST", f"duplicate vote by {voter} on {txid}")
        self.add_votes(voter, [(txid, approve, sig.lower())], verified=True)
        return {"txid": txid, "status": self.pool.status_of(txid)}

    def _submit_batch(self, vote: dict[str, Any]) -> dict[str, Any]:
        """``submitvote`` in a network: a signed ``Votes`` batch (SPEC 7.4; the
        ``TIMEVOTE`` form binds no network and is refused)."""
        if "txid" in vote and "votes" not in vote:
            raise LedgerError("BAD_REQUEST", "in a network of masternodes a vote is a signed "
                              "batch {voter, batch, votes: [[txid, approve]], signature} "
                              "(TIMEVOTES/1); the TIMEVOTE form binds no network")
        try:
            msg = wire.Votes.from_data(vote)
            wire.verify_votes(msg, self.config.network_id)
        except wire.WireError as e:
            raise LedgerError("BAD_REQUEST", f"vote: {e}") from None
        self.add_batch(msg)
        txid = msg.votes[0][0]
        return {"txid": txid, "status": self.pool.status_of(txid)}

    def _has_vote(self, txid: str, voter: str) -> bool:
        if self.early_votes.has(txid, voter):
            return True
        voted = self.work.staged.has_vote(txid, voter)
        if voted is None:
            voted = any(v == voter for v, _ in self.tables.votes(txid))
        return voted

    def add_votes(self, voter: str, votes: Sequence[tuple[str, bool, str]],
                  verified: bool = False) -> None:
        """Take votes of one masternode of the voting set: ``(txid, approve,
        signature)`` each, in one step.

        ``verified``: the caller has checked the signatures (a peer's signed batch);
        otherwise each is checked here in the upstream ``TIMEVOTE`` form and a bad one
        refuses them all.  A vote on a transaction already voted on by ``voter`` is
        ignored; one on a transaction not seen yet is kept in memory
        (``early.EarlyVotes``) and counted when it arrives.
        """
        voter = voter.lower()
        self.config.check_voter(voter)
        if not verified:
            for txid, approve, sig in votes:
                if not verify(bytes.fromhex(voter), vote_bytes(txid, approve),
                              bytes.fromhex(sig)):
                    raise LedgerError("BAD_REQUEST", "bad vote signature")
        now = self.config.clock()
        known: list[tuple[Pending | None, Vote]] = []
        for txid, approve, sig in votes:
            vote = Vote(txid, voter, approve, sig)
            if self._has_vote(txid, voter):
                continue
            p = self.pool.pending.get(txid)
            if p is None and self.pool.status_of(txid) is None:
                self.early_votes.keep(vote, now)
            else:
                known.append((p, vote))
        if known:
            def step(s: Step) -> None:
                for p, vote in known:
                    self.finality.record_vote(s, p, vote)
            self.work.run(step)

    # -- early votes ---------------------------------------------------------------------

    def early(self, s: Step, p: Pending) -> None:
        """Count, in the step that accepts ``p``, the votes that came before it, and
        write the signed batches they came in (certificate material from now on)."""
        txid = p.tx.txid
        votes = self.early_votes.votes_for(txid)
        if not votes:
            return
        now = self.config.clock()
        for vote, key, body in votes:
            if vote.voter == self.config.public_key:
                continue
            if key is None:
                if vote.voter not in p.approvals and vote.voter not in p.rejections:
                    self.finality.record_vote(s, p, vote)
                continue
            s.rows.batches[key] = body
            self._count_on(s, p, vote, body, now)
        early_votes = self.early_votes
        s.after.append(lambda: early_votes.forget(txid))

    # -- signed batches (SPEC 7.4) -------------------------------------------------------

    def add_batch(self, msg: wire.Votes) -> bool:
        """Count a peer's signed vote batch; the caller verified its signature
        (``wire.verify_votes``, off the event loop).  Returns False when this very
        batch was counted before, or is dropped (relay it no further): a batch under
        a number used up by two others (SPEC 7.3 Budgets), or one whose every vote
        is for a transaction this node does not hold while its voter's early votes
        are at their quota (refused without a step: nothing to write)."""
        self.config.check_voter(msg.voter)
        if msg.voter == self.config.public_key and msg.batch >= self.next_batch:
            # Our own key signed a batch we have no record of: a restore from an
            # old backup (or a stolen key).  Never reuse that number.
            log.error("a batch %d signed by this masternode's key came from a peer; "
                      "own batches now continue after it", msg.batch)
        if (not self.early_votes.room(msg.voter, self.config.clock())
                and not any(self._held(txid) for txid, _ in msg.votes)):
            self.early_votes.dropped += len(msg.votes)
            return False
        return bool(self.work.run(lambda s: self._record_batch(s, msg)))

    def admits(self, msg: wire.Votes) -> bool:
        """Whether a peer's batch is worth its signature check (asked before it):
        False when its voter's early votes are at their quota and none of its votes
        is for a transaction in flight here (pending, or finalized awaiting a
        block). Such a batch could only add early votes over the quota, or votes on
        what is decided already: dropped unread (SPEC 7.3 Budgets), the check that
        ``add_batch`` makes again after the signature held, without the database."""
        if self.early_votes.room(msg.voter, self.config.clock()):
            return True
        pending, unconfirmed = self.pool.pending, self.pool.unconfirmed
        return any(txid in pending or txid in unconfirmed for txid, _ in msg.votes)

    def _held(self, txid: str) -> bool:
        return txid in self.pool.pending or self.pool.status_of(txid) is not None

    def _record_batch(self, s: Step, msg: wire.Votes) -> bool:
        """Count a verified batch in step ``s``; True when it is new (relay it).

        Its body is written only when a vote in it was written (its certificate
        material) or it is evidence: a batch whose votes are all early or on decided
        transactions writes nothing, and its number is remembered in memory."""
        digest = msg.content_hash(self.config.network_id)
        key = (msg.voter, msg.batch, digest)
        staged = self.work.staged
        if key in s.rows.batches or key in staged.batches:
            return False
        # Every batch seen under this number, by digest (None: body no longer held).
        seen: dict[bytes, bytes | None] = {
            k[2]: b for k, b in [*staged.batches.items(), *s.rows.batches.items()]
            if k[:2] == key[:2]}
        seen.update(self.tables.batch_bodies(msg.voter, msg.batch))
        unwritten = self.early_votes.number(msg.voter, msg.batch)
        if unwritten is not None:
            seen.setdefault(unwritten[0], unwritten[1])
        if digest in seen:
            return False
        if len(seen) >= 2:
            # The number is used up: its evidence is kept; the voter's further
            # batches under it are dropped unread (SPEC 7.3 Budgets).
            return False
        body = orjson.dumps(msg.to_data())
        now = self.config.clock()
        written = False
        if seen:
            first_digest, first = next(iter(seen.items()))
            if first is not None:
                self.evidence(s, EvidenceRow(msg.voter, "batch", first, body, now))
                s.rows.batches[(msg.voter, msg.batch, first_digest)] = first
            written = True  # both kept: the number shows as used up from now on
        for txid, approve in msg.votes:
            vote = Vote(txid, msg.voter, approve, f"@{msg.batch}")
            written = self._count_vote(s, vote, key, body, now) or written
        if written:
            s.rows.batches[key] = body

        def done() -> None:
            self.last_vote[msg.voter] = now
            if msg.voter == self.config.public_key:
                self.next_batch = max(self.next_batch, msg.batch + 1)
            if not written:
                self.early_votes.note_number(msg.voter, msg.batch, digest)
        s.after.append(done)
        return True

    def _count_vote(self, s: Step, vote: Vote, key: BatchKey, body: bytes,
                    now: float) -> bool:
        """Count one vote of a signed batch, once per (voter, txid, approve); True
        when it was written (so must its batch be)."""
        p = self.pool.pending.get(vote.txid)
        if p is None:
            if self.pool.status_of(vote.txid) is None:
                self.early_votes.keep(vote, now, key, body)
            return False  # decided already: its outcome stands, the vote changes nothing
        return self._count_on(s, p, vote, body, now)

    def _count_on(self, s: Step, p: Pending, vote: Vote, body: bytes, now: float) -> bool:
        """Count ``vote`` on the pending ``p``; True when it was written."""
        mine, other = ((p.approvals, p.rejections) if vote.approve
                       else (p.rejections, p.approvals))
        if vote.voter in mine:
            return False
        if vote.voter in other:
            # Signed both ways: both count (SPEC 7.4), the first one's row stays.
            self.evidence(s, EvidenceRow(vote.voter, "vote", self._batch_of(p, vote),
                                         body, now))
            self.finality.record_vote(s, p, vote, stored=False)
            return True
        if vote.approve:
            for op in p.tx.outpoints():
                for t in self.pool.spenders.get(op, ()):
                    q = self.pool.pending.get(t)
                    if t != vote.txid and q is not None and vote.voter in q.approvals:
                        self.evidence(s, EvidenceRow(vote.voter, "conflict",
                                                     self._batch_of(q, vote), body, now))
                        break
        self.finality.record_vote(s, p, vote)
        return True

    def _batch_of(self, p: Pending, vote: Vote) -> bytes:
        """The stored signed batch holding ``vote.voter``'s earlier vote on ``p``."""
        for voter, _, sig in self.tables.vote_refs(p.tx.txid):
            if voter == vote.voter and sig.startswith("@"):
                bodies = self.tables.batch_bodies(voter, int(sig[1:]))
                if bodies:
                    return next(iter(bodies.values()))
        staged = self.work.staged
        row = staged.votes.get((p.tx.txid, vote.voter))
        if row is not None and row.signature.startswith("@"):
            n = int(row.signature[1:])
            for k, b in staged.batches.items():
                if k[0] == vote.voter and k[1] == n:
                    return b
        return b""

    # -- evidence ------------------------------------------------------------------------

    def add_evidence(self, voter: str, kind: str, first: bytes, second: bytes) -> bool:
        """Keep two signed block-consensus messages of ``voter`` that contradict each
        other (SPEC 7.5: two proposals, prevotes or precommits for one height, round
        and step; ``kind`` is ``proposal``, ``prevote`` or ``precommit``; the caller
        checked both signatures): stored, logged and counted in
        ``masternodelist.equivocations`` like vote evidence (SPEC 7.4).  Returns
        False when this pair was kept before (a restart may meet it again)."""
        self.config.check_voter(voter)
        if kind not in ("proposal", "prevote", "precommit"):
            raise LedgerError("BAD_REQUEST", f"unknown kind of evidence {kind!r}")
        pair = {first, second}
        if any(r.kind == kind and {r.first, r.second} == pair
               for r in [*self.work.staged.evidence, *self.tables.evidence(voter)]):
            return False
        self.work.run(lambda s: self.evidence(
            s, EvidenceRow(voter, kind, first, second, self.config.clock())))
        return True

    def evidence(self, s: Step, row: EvidenceRow) -> None:
        """Stage one piece of evidence against ``row.voter``."""
        s.rows.evidence.append(row)
        log.warning("equivocation by masternode %s (%s): evidence kept", row.voter, row.kind)

        def done() -> None:
            self.equivocations[row.voter] = self.equivocations.get(row.voter, 0) + 1
        s.after.append(done)

    def masternode_info(self, key: str) -> dict[str, Any]:
        """What ``masternodelist`` shows of one masternode's votes."""
        return {"last_vote": self.last_vote.get(key),
                "equivocations": self.equivocations.get(key, 0)}
