"""What peers ask of the ledger (SPEC 7.4, 7.5): a transaction's finality
certificate (the signed batches holding its approvals) and the unconfirmed set with
the batches that vote on it (``GetPending``)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from timefast import wire
from timefast.ledger.pool import Pool
from timefast.ledger.work import Work
from timefast.tables import Tables
from timefast.transaction import Transaction, parse


class Certificates:
    """Signed batches and pending transactions as peers want them."""

    def __init__(self, pool: Pool, work: Work, tables: Tables) -> None:
        self.pool = pool
        self.work = work
        self.tables = tables

    def certificate(self, txid: str) -> list[wire.Votes]:
        """The signed batches holding the approvals stored for ``txid`` (its finality
        certificate once they are q)."""
        self.work.flush_staged()
        out: dict[tuple[str, int], wire.Votes] = {}
        for voter, approve, sig in self.tables.vote_refs(txid):
            if not approve or not sig.startswith("@"):
                continue
            for body in self.tables.batch_bodies(voter, int(sig[1:])).values():
                msg = wire.Votes.from_data(orjson.loads(body))
                if (txid, True) in msg.votes:
                    out[(voter, msg.batch)] = msg
                    break
        return list(out.values())

    def pending_for(self, txids: Sequence[str] | None, max_bytes: int
                    ) -> tuple[list[Transaction], list[wire.Votes]]:
        """What a peer's ``GetPending`` asks for: unconfirmed transactions (those
        named, or all) and the signed batches that vote on them, within about
        ``max_bytes``, parents before children."""
        self.work.flush_staged()
        pool = self.pool
        rejected = pool.recent_rejected
        if txids is None:
            wanted = [*pool.unconfirmed, *sorted(pool.pending,
                                                 key=lambda t: pool.pending[t].accepted_at),
                      *reversed(rejected)]
        else:
            wanted = [t for t in txids
                      if t in pool.pending or t in pool.unconfirmed or t in rejected]
        txs: list[Transaction] = []
        batches: dict[tuple[str, int, bytes], wire.Votes] = {}
        size = 0
        for txid in wanted:
            held = pool.pending.get(txid) or pool.unconfirmed.get(txid)
            if held is not None:
                tx, raw = held.tx, held.raw
            else:
                raw = rejected[txid]
                tx = parse(orjson.loads(raw))
            size += len(raw)
            refs = [(v, int(sig[1:])) for v, _, sig in self.tables.vote_refs(txid)
                    if sig.startswith("@")]
            for voter, n in refs:
                for digest, body in self.tables.batch_bodies(voter, n).items():
                    if (voter, n, digest) not in batches:
                        batches[(voter, n, digest)] = wire.Votes.from_data(orjson.loads(body))
                        size += len(body)
            if size > max_bytes and txs:
                break
            txs.append(tx)
        return txs, list(batches.values())
