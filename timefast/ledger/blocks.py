"""Blocks (SPEC 3.3, 7.5): proposed, validated and applied by one executor, whatever
the voting set; with one masternode ``make_block`` is the whole consensus: it
proposes round 0 as this node and commits the block with its own precommit.

Blocks cross this boundary typed (``wire.Block``); ``parse_block`` reads one from
its JSON (``getblock``'s form with ``txs``) for callers that hold JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from timefast import wire
from timefast.crypto import TXID
from timefast.journal import BlockAdded, TxConfirmed, TxFinalized, kept
from timefast.ledger.config import LedgerConfig
from timefast.ledger.finality import Finality
from timefast.ledger.index import AddressIndex
from timefast.ledger.mempool import Mempool
from timefast.ledger.pool import Final, Pool
from timefast.ledger.work import Step, Work
from timefast.privval import PrivValidator
from timefast.rules import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    Header,
    LedgerError,
    block_hash,
    check_block_body,
    check_certificates,
    check_coinbase,
    check_commit,
    check_header,
    check_transaction,
    coinbase,
    header_of,
    parse_commit,
    proposer,
    signed_bytes,
)
from timefast.tables import BlockRow, TxChange, TxRow
from timefast.transaction import U32, Transaction

# The coinbase's JSON takes at most this many bytes (a txid, one output of at most
# 20 digits to a 45-character address, a lock_time and a timestamp): room kept for it
# when a proposal is filled up to MAX_BLOCK_BYTES.
COINBASE_BYTES = 512


def parse_block(data: Any, commit: Any = None) -> wire.Block:
    """A block from its JSON (header and ``txs``; ``commit``: its precommits
    ``[{voter, round, signature}]``, or None for a proposal's block);
    ``LedgerError(BAD_REQUEST)`` when it does not parse."""
    header = header_of(data)
    fields = {k: v for k, v in data.items() if k != "commit"}
    try:
        block = wire.Block.from_data(fields | {"round": header.round}, "block")
    except wire.ParseError as e:
        raise LedgerError("BAD_REQUEST", str(e)) from None
    if commit is None:
        return block
    return replace(block, commit=parse_commit(commit, header.height))


def header_json(header: Header | wire.Block, commit: Sequence[wire.CommitSig] = ()
                ) -> dict[str, Any]:
    """A block's header as ``getblock`` shows it."""
    return {"height": header.height, "hash": header.hash, "prev_hash": header.prev_hash,
            "timestamp": header.timestamp, "txids": list(header.txids),
            "producer": header.producer, "round": header.round,
            "commit": [c.to_data() for c in commit]}


@dataclass(slots=True)
class _BlockTx:
    """A transaction of a block being made or checked, with what committing it needs."""

    tx: Transaction
    raw: bytes
    fee: int
    spent: list[tuple[str, int]]  # (address, amount) of each input
    # coinbase; final: finalized here (``final``); pending: voted on here, short of
    # quorum; new: first learnt from the block.
    kind: str
    final: Final | None


class BlockExecutor:
    """Makes, checks and applies blocks (see the module docstring)."""

    def __init__(self, config: LedgerConfig, pool: Pool, work: Work, index: AddressIndex,
                 finality: Finality, mempool: Mempool, privval: PrivValidator) -> None:
        self.config = config
        self.pool = pool
        self.work = work
        self.index = index
        self.finality = finality
        self.mempool = mempool
        self.privval = privval

    def make_block(self) -> dict[str, Any]:
        """Make and commit this node's block of every finalized, unconfirmed
        transaction (as many as a block holds), its coinbase first; returns the block
        as ``getblock`` shows it.

        The block of a one-masternode network: round 0, this node's key as producer,
        committed with this node's one precommit (n = 1: q = 1).  With more
        masternodes blocks are the network's decision (``propose``, ``validate``,
        ``accept``)."""
        header, items = self._propose(0, self.config.public_key, int(self.config.clock()))
        commit = (self.privval.sign_commit(header.height, header.round, header.hash),)
        self.work.run(lambda s: self._add(s, header, items, commit))
        return header_json(header, commit)

    def propose(self, round_: int, producer: str, timestamp: int) -> wire.Block:
        """The block ``producer`` proposes for the next height in round ``round_``
        (SPEC 7.5), without committing it: the coinbase first when there are fees,
        then finalized unconfirmed transactions in finality order (parents before
        children), at most ``MAX_BLOCK_TXS`` and ``MAX_BLOCK_BYTES``.  The timestamp
        is ``max(timestamp, the tip's)``.  Raises ``LedgerError(BAD_REQUEST)`` for a
        producer that is not a public key or a round out of range."""
        if type(round_) is not int or not 0 <= round_ <= U32:
            raise LedgerError("BAD_REQUEST", f"round {round_!r} is out of range")
        if not isinstance(producer, str) or not TXID.fullmatch(producer):
            raise LedgerError("BAD_REQUEST", "producer must be a public key "
                              "(64 lowercase hex characters)")
        h, items = self._propose(round_, producer, int(timestamp))
        return wire.Block(h.height, h.prev_hash, h.timestamp, tuple(h.txids), h.producer,
                          h.round, h.hash, tuple(i.tx for i in items))

    def validate(self, block: wire.Block, certificates: Sequence[wire.Votes] = ()) -> None:
        """Whether a validator may prevote ``block`` for the next height (SPEC 7.5):
        returns None, or raises ``LedgerError(BAD_REQUEST)`` saying why not; nothing
        changes either way.

        Beyond what ``accept`` checks, the timestamp may be at most ``MAX_FUTURE_S``
        ahead of this node's clock, and each transaction not finalized here must
        hold a finality certificate among ``certificates`` (the proposal's signed
        ``Votes`` batches): q approvals of distinct masternodes."""
        self._check(block, False, certificates, self.config.clock())

    def accept(self, block: wire.Block) -> None:
        """Commit a block the network decided, with its commit (``block.commit``: its
        precommits), stored with it.

        Refused with ``LedgerError(BAD_REQUEST)``, and nothing changed, unless it
        is the valid next block: the commit holds q distinct precommits of the
        voting set for its height and hash in one round, its producer is the
        proposer of its round, its transactions are its txids (at most
        ``MAX_BLOCK_TXS`` and ``MAX_BLOCK_BYTES``, parents before children), each
        valid against the chain, and its coinbase pays exactly their fees to the
        producer.  A transaction not finalized here needs no certificate: the
        commit stands for it (q validators checked it before they prevoted;
        catch-up carries blocks with commits only).

        A transaction first learnt from the block goes ``SpentFinalized`` then
        ``Confirmed`` on its inputs, with ``TransactionFinalized`` then
        ``TransactionConfirmed``; a pending one that spends the same coins is
        rejected (``conflict``); the coinbase's output becomes ``Unspent`` before
        any ``TransactionConfirmed``, and ``NewBlock`` comes last.
        """
        if block.commit is None:
            raise LedgerError("BAD_REQUEST", "a block is committed with its commit")
        header, items = self._check(block, True, None, None)
        self.work.run(lambda s: self._add(s, header, items, block.commit or ()))

    # -- making -------------------------------------------------------------------------

    def _propose(self, round_: int, producer: str, timestamp: int
                 ) -> tuple[Header, list[_BlockTx]]:
        pool = self.pool
        height = pool.height + 1
        ts = max(timestamp, pool.tip_timestamp)
        items: list[_BlockTx] = []
        taken: set[str] = set()
        size = COINBASE_BYTES
        fees = 0
        for txid, f in pool.unconfirmed.items():
            if len(items) >= MAX_BLOCK_TXS - 1:  # one place kept for the coinbase
                break
            if size + len(f.raw) > MAX_BLOCK_BYTES:
                continue  # a smaller one later may fit
            # A child of a transaction left out waits with it (parents before children).
            if any(i.prev_txid in pool.unconfirmed and i.prev_txid not in taken
                   for i in f.tx.inputs):
                continue
            spent = [self._spent(op) for op in f.tx.outpoints()]
            fee = sum(a for _, a in spent) - sum(o.amount for o in f.tx.outputs)
            items.append(_BlockTx(f.tx, f.raw, fee, spent, "final", f))
            taken.add(txid)
            size += len(f.raw)
            fees += fee
        cb = coinbase(self.config.network, height, ts, producer, fees)
        if cb is not None:
            items.insert(0, _BlockTx(cb, kept(orjson.dumps(cb.to_json())), 0, [],
                                     "coinbase", None))
        txids = [i.tx.txid for i in items]
        h = block_hash(height, pool.tip, ts, txids, producer, round_)
        return Header(height, h, pool.tip, ts, txids, producer, round_), items

    def _spent(self, op: tuple[str, int]) -> tuple[str, int]:
        """``(address, amount)`` of a coin a finalized transaction spends (live)."""
        coin = self.pool.coin(*op)
        if coin is None:  # the ledger's own state: a finalized spend's coins are held
            raise LedgerError("UNAVAILABLE", f"coin {op[0]}:{op[1]} is missing")
        return coin[0], coin[1]

    # -- checking -----------------------------------------------------------------------

    def _check(self, block: wire.Block, with_commit: bool,
               certificates: Sequence[wire.Votes] | None, now: float | None
               ) -> tuple[Header, list[_BlockTx]]:
        """Every check of the next block (see ``accept``; ``with_commit``: its commit
        too; ``certificates`` None: none needed; ``now``: the clock to hold the
        timestamp against, or None).  Changes nothing.  Returns the header and the
        transactions with their fees."""
        pool, config = self.pool, self.config
        header = check_header(Header(block.height, block.hash, block.prev_hash,
                                     block.timestamp, list(block.txids), block.producer,
                                     block.round),
                              pool.height + 1, pool.tip, pool.tip_timestamp, now)
        want = proposer(config.masternodes, header.height, header.round)
        if header.producer != want:
            raise LedgerError("BAD_REQUEST", f"block {header.height}: its producer "
                              f"{header.producer} is not the proposer of round "
                              f"{header.round} ({want})")
        if with_commit:
            check_commit(block, config.network_id, config.masternodes, config.quorum)
        txs = block.txs
        raws = [kept(orjson.dumps(tx.to_json())) for tx in txs]
        check_block_body(txs, [len(r) for r in raws], header)
        items = self._check_chain(txs, raws, header)
        fees = sum(i.fee for i in items)
        if check_coinbase(txs, header, fees, config.network):
            items.insert(0, _BlockTx(txs[0], raws[0], 0, [], "coinbase", None))
        if certificates is not None:
            check_certificates([i.tx.txid for i in items if i.kind in ("pending", "new")],
                               certificates, config.network_id, config.masternodes,
                               config.quorum)
        return header, items

    def _check_chain(self, txs: Sequence[Transaction], raws: Sequence[bytes],
                     header: Header) -> list[_BlockTx]:
        """Each transaction of a block (but a coinbase) valid against the chain as the
        block has it: its inputs exist and nothing but itself spends them for good
        (a pending spend here loses to the block's); returns each with its fee."""
        pool = self.pool
        # Coins as the block's earlier transactions leave them.
        overlay: dict[tuple[str, int], tuple[str, int, str, str | None]] = {}

        def coin(t: str, v: int) -> tuple[str, int, str, str | None] | None:
            c = overlay.get((t, v)) or pool.coin(t, v)
            if c is not None and c[2] in ("Locked", "SpentPending"):
                return c[0], c[1], "Unspent", c[3]
            return c

        items = []
        for tx, raw in zip(txs, raws, strict=True):
            if not tx.inputs:
                continue  # the coinbase, checked by rules.check_coinbase
            txid = tx.txid
            f = pool.unconfirmed.get(txid)
            if f is not None:
                # Finalized here: its inputs are SpentFinalized by it, and no one
                # else's (a later transaction of the block spending them fails below).
                spent = [self._spent(op) for op in tx.outpoints()]
                fee = sum(a for _, a in spent) - sum(o.amount for o in tx.outputs)
                items.append(_BlockTx(f.tx, f.raw, fee, spent, "final", f))
                continue
            if pool.status_of(txid) == "confirmed":
                raise LedgerError("BAD_REQUEST", f"transaction {txid} is already in a block")
            try:
                fee, spent = check_transaction(tx, signed_bytes(tx), self.config.network,
                                               coin, self.mempool.good_signature)
            except LedgerError as e:
                raise LedgerError("BAD_REQUEST", f"block {header.height}: transaction "
                                  f"{txid}: {e.message}") from None
            for op, (address, amount) in zip(tx.outpoints(), spent, strict=True):
                overlay[op] = (address, amount, "SpentFinalized", txid)
            for vout, o in enumerate(tx.outputs):
                overlay[(txid, vout)] = (o.address, o.amount, "Unspent", None)
            items.append(_BlockTx(tx, raw, fee, spent,
                                  "pending" if txid in pool.pending else "new", None))
        return items

    # -- applying -----------------------------------------------------------------------

    def _learn(self, s: Step, item: _BlockTx) -> Final:
        """Finalize, inside a block's step, a transaction the block holds that was
        not finalized here (checked by ``_check_chain``)."""
        tx, raw, txid = item.tx, item.raw, item.tx.txid
        pool, quorum = self.pool, self.config.quorum
        p = pool.pending.get(txid)
        if p is not None:
            # Known and voted on here: the block's commit stands for its quorum.
            self.finality.finalize(s, p)
            return Final(p.tx, p.raw, p.addresses)
        addresses = tuple(dict.fromkeys([*(a for a, _ in item.spent), *tx.addresses()]))
        if pool.status_of(txid) is None:
            self.index.add(s, tx, item.spent)
        ops = tx.outpoints()
        # Pending spends of the same coins lose to the block's: their other inputs go
        # back to Unspent, the contested ones straight to SpentFinalized under the
        # block's transaction (SPEC 3.3).
        self.finality.beat_conflicts(s, txid, ops)
        # Learnt with its certificate (the block's commit): Unspent (or locked by the
        # loser) -> SpentFinalized, its outputs Unspent, then finalized (SPEC 7.5).
        for op in ops:
            s.move(op, "SpentFinalized", raw, votes=quorum, spender=txid)
        for vout, o in enumerate(tx.outputs):
            s.create((txid, vout), o.address, o.amount, raw)
        s.emit(TxFinalized(txid, quorum, addresses))
        s.rows.add_tx(TxRow(txid, raw, "finalized", self.config.clock(), s.seq, None,
                            orjson.dumps(addresses), None))
        return Final(tx, raw, addresses)

    def _add(self, s: Step, header: Header, items: list[_BlockTx],
             commit: Sequence[wire.CommitSig]) -> None:
        height, h, prev, ts = header.height, header.hash, header.prev_hash, header.timestamp
        s.rows.blocks.append(BlockRow(height, h, prev, ts, orjson.dumps(header.txids),
                                      header.producer,
                                      orjson.dumps([c.to_data() for c in commit]),
                                      header.round))
        final: list[Final] = []
        cb: _BlockTx | None = None
        for item in items:
            if item.kind == "coinbase":
                cb = item
                self._mint(s, item, height)
            else:
                final.append(item.final if item.final is not None else self._learn(s, item))
        if cb is not None:
            s.emit(TxConfirmed(cb.tx.txid, height, h, tuple(cb.tx.addresses())))
        for f in final:
            for op in f.tx.outpoints():
                s.move(op, "Confirmed", f.raw, height=height)
            s.rows.set_tx(f.tx.txid, TxChange("confirmed", block_height=height))
            s.emit(TxConfirmed(f.tx.txid, height, h, f.addresses))
        s.emit(BlockAdded(height, h, prev, ts, tuple(header.txids)))
        pool = self.pool

        def done() -> None:
            # A Confirmed coin never moves again: memory keeps the live set only
            # (flat however long the node runs); reads fall back to the database.
            for f in final:
                for op in f.tx.outpoints():
                    pool.utxos.forget(*op)
                pool.unconfirmed.pop(f.tx.txid, None)
            pool.height, pool.tip, pool.tip_timestamp = height, h, ts
            pool.count("confirmed", len(final))
        s.after.append(done)

    def _mint(self, s: Step, item: _BlockTx, height: int) -> None:
        """Stage a block's coinbase: stored confirmed, its output Unspent (announced
        to the producer's wallets), in the producer's history."""
        tx = item.tx
        self.index.add(s, tx, [])
        for vout, o in enumerate(tx.outputs):
            s.create((tx.txid, vout), o.address, o.amount, item.raw, height=height)
        s.rows.add_tx(TxRow(tx.txid, item.raw, "confirmed", self.config.clock(), None, None,
                            orjson.dumps(tx.addresses()), height))
