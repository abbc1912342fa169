"""Finality: counting votes on pending transactions and the transitions they decide
(SPEC 4.3, 7.4): finalized at quorum, rejected once the rest cannot reach it, a
conflicting spend rejected when its rival wins, and the finality timeout of a
one-masternode network."""

from __future__ import annotations

from timefast.journal import TxFinalized, TxRejected, VoteRecorded
from timefast.ledger.config import LedgerConfig
from timefast.ledger.pool import Final, Pending, Pool
from timefast.ledger.work import Step, Work
from timefast.rules import tally
from timefast.tables import TxChange, Vote


class Finality:
    """Tallies and the transitions they decide (see the module docstring)."""

    def __init__(self, config: LedgerConfig, pool: Pool, work: Work) -> None:
        self.config = config
        self.pool = pool
        self.work = work

    def record_vote(self, s: Step, p: Pending | None, vote: Vote,
                    stored: bool = True) -> None:
        """Count ``vote`` (on ``p``, None when its transaction is decided); ``stored``:
        write its row (not for the second, contradicting vote of an equivocator,
        kept as evidence instead)."""
        if stored:
            s.rows.add_vote(vote)
            s.changes.append(VoteRecorded(*vote))
        if p is None or p.decided:
            return
        s.keep(p)
        (p.approvals if vote.approve else p.rejections).add(vote.voter)
        decision = tally(len(p.approvals), len(p.rejections), len(self.config.masternodes))
        if decision == "finalized":
            self.finalize(s, p)
        elif decision == "rejected":
            self.reject(s, p, "quorum against")
        elif vote.approve and p.holds:
            for op in p.tx.outpoints():
                s.move(op, "SpentPending", p.raw, votes=len(p.approvals))

    def finalize(self, s: Step, p: Pending) -> None:
        """``p`` reached quorum (or a block's commit stands for it)."""
        s.keep(p)
        p.decided = True
        votes = len(p.approvals)
        txid = p.tx.txid
        ops = p.tx.outpoints()
        self.beat_conflicts(s, txid, ops)
        for op in ops:
            if s.utxo(op).spender != txid:
                # Held by a conflicting spend (rejected just above) or by nobody.
                s.move(op, "SpentFinalized", p.raw, votes=votes, spender=txid)
                continue
            if s.utxo(op).state == "Locked":
                s.move(op, "SpentPending", p.raw, votes=votes)
            s.move(op, "SpentFinalized", p.raw, votes=votes)
        for vout, o in enumerate(p.tx.outputs):
            s.create((txid, vout), o.address, o.amount, p.raw)
        s.emit(TxFinalized(txid, votes, p.addresses))
        s.rows.set_tx(txid, TxChange("finalized", finalized_seq=s.seq))
        final = Final(p.tx, p.raw, p.addresses)
        pool = self.pool

        def done() -> None:
            pool.drop_pending(txid)
            pool.unconfirmed[txid] = final
            pool.count("finalized")
        s.after.append(done)

    def beat_conflicts(self, s: Step, txid: str, ops: list[tuple[str, int]]) -> None:
        """``txid`` is finalized or confirmed: every pending spend of its inputs is
        rejected (``conflict``), the contested inputs left for ``txid`` to take."""
        losers = {t for op in ops for t in self.pool.spenders.get(op, ()) if t != txid}
        for op in ops:
            spender = s.utxo(op).spender
            if spender and spender != txid:
                losers.add(spender)
        keep = set(ops)
        for t in sorted(losers):
            loser = self.pool.pending.get(t)
            if loser is not None and not loser.decided:
                self.reject(s, loser, "conflict", keep=keep)

    def reject(self, s: Step, p: Pending, reason: str,
               keep: set[tuple[str, int]] | frozenset[tuple[str, int]] = frozenset()
               ) -> None:
        """Reject ``p``: its inputs go back to Unspent, but for those in ``keep``
        (which the winning conflicting transaction moves itself)."""
        s.keep(p)
        p.decided = True
        txid = p.tx.txid
        for op in p.tx.outpoints():
            if op not in keep and s.utxo(op).spender == txid:
                s.move(op, "Unspent", p.raw)
        s.emit(TxRejected(txid, reason, p.addresses))
        s.rows.set_tx(txid, TxChange("rejected", reason=reason))
        pool = self.pool

        def done() -> None:
            pool.drop_pending(txid)
            pool.remember_rejected(txid, p.raw)
            pool.count("rejected")
        s.after.append(done)

    def expire(self, now: float | None = None) -> int:
        """Reject every transaction that waited past FINALITY_TIMEOUT; returns how
        many.  In a network a timeout decides nothing (``overdue``)."""
        if self.config.networked:
            return 0
        now = self.config.clock() if now is None else now
        late = [p for p in self.pool.pending.values()
                if p.accepted_at + self.config.finality_timeout <= now]
        if not late:
            return 0

        def step(s: Step) -> None:
            for p in late:
                self.reject(s, p, "finality timeout")
        self.work.run(step)
        return len(late)

    def overdue(self, now: float | None = None) -> list[str]:
        """Pending transactions that waited ``FINALITY_TIMEOUT`` since they were
        accepted or last asked about: the peer layer asks peers for their votes
        (in a network a timeout decides nothing, SPEC 7.4)."""
        now = self.config.clock() if now is None else now
        timeout = self.config.finality_timeout
        due = [p for p in self.pool.pending.values()
               if max(p.accepted_at, p.asked_at) + timeout <= now]
        for p in due:
            p.asked_at = now
        return [p.tx.txid for p in due]
