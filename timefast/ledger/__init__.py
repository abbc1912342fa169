"""The ledger: state and the unit of work (SPEC 3, 4, 7.4, 7.5).

Plain Python around the compiled ``UtxoTable``, with the rules in ``timefast.rules``,
the SQL in ``timefast.tables`` and the wallet events in ``timefast.journal``.  One
module per job, wired here:

- ``pool``: the in-flight records (pending, finalized awaiting a block, the live
  UTXOs, the tip);
- ``work``: the unit of work (a step) and its one commit procedure: durable before
  announced;
- ``mempool``: admission, signatures checked ahead, orphans;
- ``finality``: tallies and the transitions they decide;
- ``votes``: own and others' vote batches, early votes, evidence;
- ``blocks``: the block executor (propose, validate, apply; typed blocks);
- ``certificates``: what peers ask for (certificates, the pending set);
- ``reads``: what wallets, the RPC and the page read;
- ``index``: the address history;
- ``recovery``: start-up and rebuilding memory after a failed commit;
- ``faucet``: regtest's faucet.

The ``Ledger`` facade offers what the peer layer and the group commit call; the
ports read through ``Ledger.reads``.  The ledger never touches a socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from nacl.signing import SigningKey

from timefast import wire
from timefast.journal import Change, Event, Journal
from timefast.ledger.blocks import BlockExecutor, parse_block
from timefast.ledger.certificates import Certificates
from timefast.ledger.config import LedgerConfig
from timefast.ledger.faucet import Faucet
from timefast.ledger.finality import Finality
from timefast.ledger.index import AddressIndex
from timefast.ledger.mempool import Mempool, SpentConflict
from timefast.ledger.pool import Pool
from timefast.ledger.reads import Reads
from timefast.ledger.recovery import Recovery
from timefast.ledger.votes import Votes
from timefast.ledger.work import Work
from timefast.privval import PrivValidator
from timefast.rules import FAUCET_KEY, GENESIS_SUPPLY, LedgerError, block_hash
from timefast.storage import StorageError, Store, unavailable
from timefast.tables import Rows, Tables
from timefast.transaction import Transaction


class Ledger:
    """The node's state: UTXOs (in the core), transactions, votes, blocks, events."""

    def __init__(self, store: Store, network: str, key: SigningKey,
                 masternodes: Iterable[str] | None = None, finality_timeout: float = 10.0,
                 replay_events: int = 100_000, clock: Callable[[], float] = time.time,
                 replay_bytes: int = 256 << 20) -> None:
        config = LedgerConfig.make(network, key, masternodes, finality_timeout,
                                   replay_events, clock, replay_bytes)
        self.config = config
        self.network = config.network
        self.network_id = config.network_id
        self.public_key = config.public_key
        self.address = config.address
        self.masternodes = config.masternodes
        self.quorum = config.quorum
        self.voting = config.voting
        self.networked = config.networked
        self.finality_timeout = config.finality_timeout
        self.clock = config.clock
        self.key = key  # signs through ``privval``; kept for tests and tools
        self.store = store
        self.tables = tables = Tables(store)
        self.journal = Journal(replay_events, config.quorum, replay_bytes)
        self.privval = PrivValidator(store, tables, key, config.network_id)
        staged = Rows()
        self.pool = Pool(staged, tables)
        self.index = AddressIndex(tables, staged)
        self.work = Work(store, tables, self.journal, self.pool, staged, replay_events,
                         reload=lambda: self._recovery.load(self.work),
                         written=self.index.written)
        self.finality = Finality(config, self.pool, self.work)
        self.votes = Votes(config, self.pool, self.work, tables, self.finality, self.privval)
        self.mempool = Mempool(config, self.pool, self.work, self.index, self.finality,
                               self.votes)
        self.blocks = BlockExecutor(config, self.pool, self.work, self.index, self.finality,
                                    self.mempool, self.privval)
        self.certificates = Certificates(self.pool, self.work, tables)
        self.reads = Reads(config, self.pool, self.work, tables, self.journal)
        self.faucet = Faucet(config, self.pool, self.mempool)
        self._recovery = Recovery(config, store, tables, staged, self.journal, self.pool,
                                  self.index, self.votes)
        # The same dict for the ledger's life (``Votes.load`` refills it).
        self.equivocations = self.votes.equivocations
        self._recovery.load(self.work)

    # -- the tip -----------------------------------------------------------------------

    @property
    def height(self) -> int:
        """The best block's height."""
        return self.pool.height

    @property
    def tip(self) -> str:
        """The best block's hash."""
        return self.pool.tip

    @property
    def tip_timestamp(self) -> int:
        """The best block's timestamp."""
        return self.pool.tip_timestamp

    @property
    def seq(self) -> int:
        """The last wallet event's ``seq``."""
        return self.work.seq

    # -- commits and what they announce ---------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Several steps in one database commit (``work.Work.batch``)."""
        with self.work.batch():
            yield

    def listen(self, fn: Callable[[list[Event]], None]) -> None:
        """Call ``fn`` with the wallet events of every commit, once committed."""
        self.work.listen(fn)

    def watch(self, fn: Callable[[list[Change]], None]) -> None:
        """Call ``fn`` with the typed changes of every commit, once committed."""
        self.work.watch(fn)

    def on_own_votes(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` whenever own votes are queued: the caller then has them signed
        (``sign_batch``) through the group commit."""
        self.votes.on_own_votes(fn)

    def has_own_votes(self) -> bool:
        """Whether own votes wait to be signed."""
        return bool(self.votes.own_queue)

    # -- transactions ----------------------------------------------------------------------

    def submit(self, obj: Any, relayed: bool = False, answered: bool = False) -> str:
        """Validate and accept a transaction (``mempool.Mempool.submit``)."""
        return self.mempool.submit(obj, relayed, answered)

    def status_of(self, txid: str) -> str | None:
        """pending, finalized, confirmed, rejected, or None for an unknown txid."""
        return self.pool.status_of(txid)

    def pending_tx(self, txid: str) -> Transaction | None:
        """A transaction awaiting quorum, parsed; None for any other."""
        p = self.pool.pending.get(txid)
        return None if p is None else p.tx

    def has_orphans(self) -> bool:
        """Whether relayed transactions wait for their inputs."""
        return bool(self.mempool.orphans)

    def take_orphans(self, parents: Iterable[str]) -> list[Transaction]:
        """Orphans spending outputs of ``parents``, taken out to be submitted again."""
        return self.mempool.take_orphans(parents)

    def overdue(self, now: float | None = None) -> list[str]:
        """Pending transactions whose votes peers should be asked for again."""
        return self.finality.overdue(now)

    # -- votes -----------------------------------------------------------------------------

    def add_batch(self, msg: wire.Votes) -> bool:
        """Count a peer's signed vote batch (``votes.Votes.add_batch``)."""
        return self.votes.add_batch(msg)

    def sign_batch(self) -> wire.Votes | None:
        """Sign and store this masternode's queued votes (``votes.Votes.sign_batch``)."""
        return self.votes.sign_batch()

    def add_evidence(self, voter: str, kind: str, first: bytes, second: bytes) -> bool:
        """Keep two contradicting signed consensus messages of ``voter``."""
        return self.votes.add_evidence(voter, kind, first, second)

    def certificate(self, txid: str) -> list[wire.Votes]:
        """The signed batches holding the approvals stored for ``txid``."""
        return self.certificates.certificate(txid)

    def pending_for(self, txids: Sequence[str] | None, max_bytes: int
                    ) -> tuple[list[Transaction], list[wire.Votes]]:
        """What a peer's ``GetPending`` asks for."""
        return self.certificates.pending_for(txids, max_bytes)

    # -- blocks ----------------------------------------------------------------------------

    def propose_block(self, round_: int, producer: str, timestamp: int) -> wire.Block:
        """The block ``producer`` proposes for the next height (not committed)."""
        return self.blocks.propose(round_, producer, timestamp)

    def validate_proposal(self, block: wire.Block,
                          certificates: Sequence[wire.Votes] = ()) -> None:
        """Whether a validator may prevote ``block``; ``LedgerError`` says why not."""
        self.blocks.validate(block, certificates)

    def accept_block(self, block: wire.Block) -> None:
        """Commit a block the network decided, with its commit (``block.commit``)."""
        self.blocks.accept(block)

    def block_at(self, height: int) -> wire.Block:
        """A stored block with its transactions and commit; raises NOT_FOUND."""
        return self.reads.block_at(height)


# Ports see storage failures through the ledger (they never import storage).
__all__ = ["FAUCET_KEY", "GENESIS_SUPPLY", "Event", "Ledger", "LedgerError", "SpentConflict",
           "StorageError", "block_hash", "parse_block", "unavailable"]
