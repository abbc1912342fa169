"""The masternode's signing key behind one rule: persist, then sign (SPEC 7.4, 7.5).

Like CometBFT's ``privval``, every message this node signs as a validator is signed
here, and only once what it commits the node to is durable:

- block consensus (proposals, prevotes, precommits): ``persist`` writes the
  machine's ``consensus.Record`` (position, locks, own messages of the round) and
  syncs it to disk; ``sign`` then signs a message of that record's height, and
  never a second, different one for the same (height, round, step);
- a network masternode's vote batches (``sign_votes``): written in the same
  commit as the approvals they hold, which the caller syncs to disk
  (``Store.sync_next_commit``) before the batch may leave;
- the precommit of a one-masternode network's block (``sign_commit``) and its
  approvals (``sign_timevote``): written in the commit that adds the block or the
  transaction, and announced only once it committed (with no other validator
  there is nobody to sign a second, different one to).

The peer handshake and ``Addr`` records are signed by the link with the same key:
they commit the node to nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson
from nacl.signing import SigningKey

from timefast import consensus, wire
from timefast.consensus import Record
from timefast.crypto import public_key_hex, sign_vote
from timefast.storage import Store
from timefast.tables import Tables

log = logging.getLogger("timefast.consensus")


class DoubleSign(RuntimeError):
    """A second, different message for one (height, round, step), or one whose
    record was never persisted: a bug this module refuses to sign."""


class PrivValidator:
    """Signs as this masternode (see the module docstring)."""

    def __init__(self, store: Store, tables: Tables, key: SigningKey,
                 network_id: bytes) -> None:
        self.store = store
        self.tables = tables
        self.key = key
        self.network_id = network_id
        self.public_key = public_key_hex(key)
        self._record: Record | None = None
        # (round, kind) -> what was signed at the record's height since start.
        self._signed: dict[tuple[int, str], consensus.Message] = {}

    # -- block consensus -------------------------------------------------------------

    def restore(self) -> Record | None:
        """The last persisted consensus record (None: none, or unreadable)."""
        raw = self.tables.consensus_record()
        if raw is None:
            return None
        try:
            record = Record.from_dict(orjson.loads(raw))
        except ValueError as e:
            log.error("consensus record unreadable (%s): starting afresh", e)
            return None
        self._remember(record)
        return record

    def persist(self, record: Record) -> None:
        """Write ``record`` and sync it to disk before anything it holds may leave:
        after a restart the same messages go out again, never others."""
        with self.store.transaction() as db:
            self.tables.write_consensus_record(db, orjson.dumps(record.to_dict()))
            self.store.sync_next_commit()
        self._remember(record)

    def _remember(self, record: Record) -> None:
        if self._record is None or self._record.height != record.height:
            self._signed.clear()
        self._record = record
        for m in (record.proposal, record.prevote, record.precommit):
            if m is not None:
                self._signed.setdefault((m.round, type(m).__name__), m)

    def sign(self, m: consensus.Message, block: wire.Block | None = None,
             certificates: Iterable[wire.Votes] = ()) -> wire.Message:
        """``m`` signed for the wire (a proposal with its ``block`` and the finality
        certificates it carries).  Raises ``DoubleSign`` unless a record of ``m``'s
        height was persisted first and nothing else was signed for its round and
        step."""
        rec = self._record
        if rec is None or rec.height != m.height:
            raise DoubleSign(f"{type(m).__name__} of height {m.height} before its record "
                             "was persisted")
        kind = type(m).__name__
        held = self._signed.setdefault((m.round, kind), m)
        if held != m:
            raise DoubleSign(f"a second {kind} for height {m.height} round {m.round}")
        if isinstance(m, consensus.Proposal):
            if block is None or block.hash != m.block_hash:
                raise ValueError("a proposal is signed with its block")
            return wire.sign_proposal(self.key, self.network_id, m.height, m.round,
                                      m.valid_round, block, certificates)
        if isinstance(m, consensus.Prevote):
            return wire.sign_prevote(self.key, self.network_id, m.height, m.round,
                                     m.block_hash)
        return wire.sign_precommit(self.key, self.network_id, m.height, m.round,
                                   m.block_hash)

    # -- signed inside a ledger commit -------------------------------------------------

    def sign_commit(self, height: int, round_: int, block_hash: str) -> wire.CommitSig:
        """The one precommit of a one-masternode network's block (n = 1: q = 1),
        stored with the block in the commit that adds it."""
        pc = wire.sign_precommit(self.key, self.network_id, height, round_, block_hash)
        return wire.CommitSig(self.public_key, round_, pc.signature)

    def sign_timevote(self, txid: str) -> str:
        """The approval of a one-masternode network (upstream ``TIMEVOTE``), stored
        in the step that accepts ``txid``; returns its signature (hex)."""
        return str(sign_vote(self.key, txid, True)["signature"])

    def sign_votes(self, batch: int, votes: Iterable[tuple[str, bool]]) -> wire.Votes:
        """This masternode's batch of votes numbered ``batch``; the caller stores it,
        with the approvals it holds, in a commit synced before the batch leaves."""
        return wire.sign_votes(self.key, self.network_id, batch, votes)
