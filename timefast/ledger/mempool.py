"""Admission (SPEC 4.2, 7.4): a transaction checked against the rules and the UTXO
set and accepted as pending, its inputs locked; signatures checked ahead in bulk;
a peer's spend of contested coins kept without a lock; a peer's transaction whose
inputs are not known yet kept as an orphan until they are."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from timefast.crypto import address_of, verify
from timefast.errors import LockConflict, UnknownOutpoint
from timefast.journal import TxAccepted, TxRejected, kept
from timefast.ledger.config import LedgerConfig
from timefast.ledger.finality import Finality
from timefast.ledger.index import AddressIndex
from timefast.ledger.pool import CoinView, Pending, Pool
from timefast.ledger.votes import Votes
from timefast.ledger.work import Step, Work
from timefast.rules import LedgerError, check_transaction, signed_bytes
from timefast.tables import TxRow, Vote
from timefast.transaction import Transaction, TxFormatError, parse

# Relayed transactions whose inputs are not known yet (SPEC 7.4): kept this many, of at
# most this many bytes in all, for this many seconds.
ORPHANS_MAX = 10_000
ORPHAN_BYTES = 32 << 20
ORPHAN_TTL = 600.0

SignatureItem = tuple[bytes, bytes, bytes]  # (public key, signed bytes, signature)


class SpentConflict(LedgerError):
    """``TX_CONFLICT`` for a transaction spending an output that a finalized or
    confirmed transaction spent (SPEC 7.3 Budgets).  ``confirmed_at``: the lowest
    height of a block confirming such a spend (None: finalized only), so that the
    peer layer can tell whether the peer that sent it should have known better."""

    def __init__(self, message: str, confirmed_at: int | None) -> None:
        super().__init__("TX_CONFLICT", message)
        self.confirmed_at = confirmed_at


class Mempool:
    """Admission of transactions (see the module docstring)."""

    def __init__(self, config: LedgerConfig, pool: Pool, work: Work, index: AddressIndex,
                 finality: Finality, votes: Votes) -> None:
        self.config = config
        self.pool = pool
        self.work = work
        self.index = index
        self.finality = finality
        self.votes = votes
        # (public key, signed bytes, signature) found good ahead of a batch.
        self._checked: set[SignatureItem] = set()
        self.orphans: OrderedDict[str, tuple[Transaction, float, int]] = OrderedDict()
        self._orphan_bytes = 0

    # -- signatures checked ahead ----------------------------------------------------

    def spendable(self, tx: Transaction) -> bool:
        """Whether every input is, now, an Unspent coin its public key owns: the
        checks that cost no signature.  Only such a transaction has signatures
        worth checking (``signature_items``); ``submit`` refuses the others before
        it looks at any signature."""
        get = self.pool.utxos.get
        network = self.config.network
        for inp in tx.inputs:
            try:
                address, _, state, _, _, _ = get(inp.prev_txid, inp.vout)
            except UnknownOutpoint:
                return False
            if state != "Unspent" or address_of(inp.public_key, network) != address:
                return False
        return True

    def signature_items(self, txs: Iterable[Transaction]) -> list[SignatureItem]:
        """``(public key, signed bytes, signature)`` of every input of those of
        ``txs`` that are ``spendable``, for ``crypto.verify_batch`` (on any thread)
        ahead of their ``submit``."""
        items = []
        for tx in txs:  # parsed: every key and signature is hex of the right length
            if not self.spendable(tx):
                continue
            msg = tx.signing_bytes()
            items += [(bytes.fromhex(i.public_key), msg, bytes.fromhex(i.signature))
                      for i in tx.inputs]
        return items

    def checked(self, items: list[SignatureItem], good: bytes) -> None:
        """Signatures checked ahead (``good``: one byte per item, 1 when good):
        ``submit`` does not check them again until ``forget_checked``."""
        self._checked.update(item for item, ok in zip(items, good, strict=True) if ok)

    def forget_checked(self) -> None:
        """Drop the signatures checked ahead (their work has run)."""
        self._checked.clear()

    def good_signature(self, pk: bytes, msg: bytes, sig: bytes) -> bool:
        """Whether ``sig`` is ``pk``'s over ``msg`` (checked ahead, or now)."""
        return (pk, msg, sig) in self._checked or verify(pk, msg, sig)

    # -- admission -----------------------------------------------------------------

    def _refuse(self, e: LedgerError) -> LedgerError:
        self.pool.count("conflict" if e.code == "TX_CONFLICT" else "invalid")
        return e

    def submit(self, obj: Any, relayed: bool = False, answered: bool = False) -> str:
        """Validate and accept a transaction; returns its txid (idempotent).

        ``obj`` is the upstream JSON object, or a parsed ``Transaction``.
        ``relayed``: it came from a peer (SPEC 7.4): one that spends coins another
        pending transaction locked is stored and voted on all the same, locking
        nothing; one whose inputs are not known yet waits as an orphan
        (``TX_ORPHAN``) and is tried again by ``take_orphans``.  One spending an
        output a finalized or confirmed transaction spent is refused
        (``SpentConflict``), unless ``answered``: it came in a peer's answer to this
        node's ``GetPending``, where a peer passes on what it rejected lately; it
        was acknowledged to a wallet there, so it is stored rejected here too, once
        its signatures verified (SPEC 7.4: every node's wallets see the same end).

        Raises ``LedgerError`` with ``TX_INVALID``, ``TX_CONFLICT`` or ``TX_ORPHAN``,
        or ``StorageError`` when it could not be stored (nothing is then accepted).
        """
        try:
            tx = obj if isinstance(obj, Transaction) else parse(obj)
            msg = signed_bytes(tx)
        except TxFormatError as e:
            raise self._refuse(LedgerError("TX_INVALID", str(e))) from None
        except LedgerError as e:
            raise self._refuse(e) from None
        pool = self.pool
        known = pool.status_of(tx.txid)
        if known not in (None, "rejected"):
            return tx.txid
        if known == "rejected" and self.config.networked:
            # In a network a rejection is never revoked (SPEC 7.4).
            if relayed:
                return tx.txid
            raise self._refuse(LedgerError("TX_INVALID", f"transaction {tx.txid} was "
                                           "rejected by the network"))
        spent_final = self._spent_final(tx)
        if spent_final is not None and not (relayed and answered):
            # Refused before any signature is checked, stored nowhere, relayed to
            # nobody (SPEC 7.3 Budgets): its outcome is decided already.
            raise self._refuse(spent_final)
        coin_of: Callable[[str, int], CoinView | None] = pool.coin
        contested = False
        if relayed:
            if any(pool.coin(i.prev_txid, i.vout) is None
                   and pool.status_of(i.prev_txid) in (None, "pending") for i in tx.inputs):
                self._keep_orphan(tx)
                raise LedgerError("TX_ORPHAN",
                                  f"TX_ORPHAN: transaction {tx.txid} waits for its inputs")

            def contested_coin(t: str, v: int) -> CoinView | None:
                nonlocal contested
                found = pool.coin(t, v)
                if found is not None and found[2] in ("Locked", "SpentPending"):
                    contested = True
                    return found[0], found[1], "Unspent", None
                if found is not None and spent_final is not None:
                    return found[0], found[1], "Unspent", None  # checked, then stored lost
                return found
            coin_of = contested_coin
        try:
            _, spent = check_transaction(tx, msg, self.config.network, coin_of,
                                         self.good_signature)
        except LedgerError as e:
            raise self._refuse(e) from None
        addresses = tuple(dict.fromkeys([*(a for a, _ in spent), *tx.addresses()]))
        raw = kept(orjson.dumps(tx.to_json()))
        if spent_final is not None:
            return self._store_lost(tx, raw, addresses, spent)
        return str(self.work.run(lambda s: self._accept(s, tx, raw, addresses, spent,
                                                        known, relayed, contested)))

    def _spent_final(self, tx: Transaction) -> SpentConflict | None:
        """The refusal of ``tx`` when one of its inputs is spent by a finalized or
        confirmed transaction (SPEC 7.3 Budgets): such a spend can never win, and
        storing every signed variant of it would let anyone grow every node's disk.
        Only a spend that is final refuses it: one that conflicts with a pending
        lock is stored and voted on (SPEC 7.4)."""
        pool = self.pool
        first = ""
        confirmed_at: int | None = None
        for n, inp in enumerate(tx.inputs):
            try:
                _, _, state, spender, _, height = pool.utxos.get(inp.prev_txid, inp.vout)
            except UnknownOutpoint:
                coin = pool.stored_utxo((inp.prev_txid, inp.vout))
                if coin is None:
                    continue
                state, spender, height = coin.state, coin.spender, coin.height
            if spender == tx.txid or state not in ("SpentFinalized", "Confirmed"):
                continue
            first = first or (f"TX_CONFLICT: input {n} {inp.prev_txid}:{inp.vout} is "
                              f"already {state}")
            if state == "Confirmed" and height is not None:
                confirmed_at = height if confirmed_at is None else min(confirmed_at,
                                                                       height)
        return SpentConflict(first, confirmed_at) if first else None

    def _accept(self, s: Step, tx: Transaction, raw: bytes, addresses: tuple[str, ...],
                spent: list[tuple[str, int]], known: str | None, relayed: bool,
                contested: bool) -> str:
        ops = tx.outpoints()
        # A wallet's spend of a locked coin is refused; a peer's is kept unlocked.
        held = not (relayed and (contested or any(s.utxo(op).state != "Unspent"
                                                  for op in ops)))
        if held:
            try:
                s.lock(tx.txid, ops, raw)
            except LockConflict as e:
                raise self._refuse(LedgerError("TX_CONFLICT", f"TX_CONFLICT: {e}")) from None
        if known == "rejected":
            # A transaction rejected earlier may be tried again: its old votes go.
            s.rows.clear_votes(tx.txid)
        else:
            self.index.add(s, tx, spent)
        now = self.config.clock()
        s.rows.add_tx(TxRow(tx.txid, raw, "pending", now, None, None,
                            orjson.dumps(addresses), None))
        s.emit(TxAccepted(tx.txid, raw, addresses))
        p = Pending(tx, raw, now, addresses, holds=held)
        pool = self.pool
        s.after.append(lambda: pool.add_pending(p))
        s.after.append(lambda: pool.count("accepted"))
        config = self.config
        if config.networked:
            if config.voting:
                s.after.append(lambda: self.votes.queue_own(p))
        elif config.voting:
            signature = self.votes.privval.sign_timevote(tx.txid)
            self.finality.record_vote(s, p, Vote(tx.txid, config.public_key, True,
                                                 signature))
        self.votes.early(s, p)
        return tx.txid

    def _store_lost(self, tx: Transaction, raw: bytes, addresses: tuple[str, ...],
                    spent: list[tuple[str, int]]) -> str:
        """A peer's answer holds a spend of a coin that a finalized transaction took:
        it was pending at that node, and is rejected there and everywhere
        (``conflict``).  Stored as such, with the events every other node's wallets
        saw for it."""
        now = self.config.clock()
        pool = self.pool

        def step(s: Step) -> str:
            self.index.add(s, tx, spent)
            s.rows.add_tx(TxRow(tx.txid, raw, "rejected", now, None, "conflict",
                                orjson.dumps(addresses), None))
            s.emit(TxAccepted(tx.txid, raw, addresses))
            s.emit(TxRejected(tx.txid, "conflict", addresses))

            def done() -> None:
                pool.remember_rejected(tx.txid, raw)
                pool.count("rejected")
            s.after.append(done)
            return tx.txid
        return str(self.work.run(step))

    # -- orphans -------------------------------------------------------------------

    def _keep_orphan(self, tx: Transaction) -> None:
        if tx.txid in self.orphans:
            return
        now = self.config.clock()
        size = len(orjson.dumps(tx.to_json()))
        self.orphans[tx.txid] = (tx, now, size)
        self._orphan_bytes += size
        while self.orphans:
            txid, (_, seen, n) = next(iter(self.orphans.items()))
            if (seen + ORPHAN_TTL > now and len(self.orphans) <= ORPHANS_MAX
                    and self._orphan_bytes <= ORPHAN_BYTES):
                break
            del self.orphans[txid]
            self._orphan_bytes -= n

    def take_orphans(self, parents: Iterable[str]) -> list[Transaction]:
        """Orphans spending outputs of ``parents`` (just finalized or confirmed),
        taken out to be submitted again."""
        if not self.orphans:
            return []
        wanted = set(parents)
        found = [txid for txid, (tx, _, _) in self.orphans.items()
                 if any(i.prev_txid in wanted for i in tx.inputs)]
        out = []
        for txid in found:
            tx, _, n = self.orphans.pop(txid)
            self._orphan_bytes -= n
            out.append(tx)
        return out
