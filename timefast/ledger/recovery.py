"""Start-up and recovery: the ledger's memory rebuilt from the database, at start and
after a commit that failed (whose batch the database never saw).  A new database
gets its network's genesis block first."""

from __future__ import annotations

import orjson

from timefast.errors import UnknownOutpoint
from timefast.journal import Journal
from timefast.ledger.config import LedgerConfig
from timefast.ledger.index import AddressIndex
from timefast.ledger.pool import RECENT_REJECTED, Final, Pending, Pool
from timefast.ledger.votes import Votes
from timefast.ledger.work import Work
from timefast.rules import GENESIS_TIMESTAMP, ZERO_HASH, block_hash, genesis_transaction
from timefast.storage import Store
from timefast.tables import BlockRow, Coin, Rows, Tables, TxRow
from timefast.transaction import parse


class Recovery:
    """Loads the ledger's state (see the module docstring)."""

    def __init__(self, config: LedgerConfig, store: Store, tables: Tables, staged: Rows,
                 journal: Journal, pool: Pool, index: AddressIndex, votes: Votes) -> None:
        self.config = config
        self.store = store
        self.tables = tables
        self.staged = staged
        self.journal = journal
        self.pool = pool
        self.index = index
        self.votes = votes

    def load(self, work: Work) -> None:
        """Read everything the ledger keeps in memory from the database."""
        t = self.tables
        pool = self.pool
        pool.clear()
        self.staged.clear()
        self.index.clear()
        if not t.has_blocks():
            self._genesis()
        if not t.history_built():
            self.index.build()
        work.seq = t.seq()
        pool.height, pool.tip, pool.tip_timestamp = t.tip()
        # Confirmed coins stay on disk only (see ``blocks.BlockExecutor._add``).
        for row in t.live_coins():
            pool.utxos.add(*row)
        for txid, raw, accepted_at, addrs, votes in t.pending_txs():
            p = Pending(parse(orjson.loads(raw)), raw, accepted_at,
                        tuple(orjson.loads(addrs)))
            for voter, approve in votes:
                (p.approvals if approve else p.rejections).add(voter)
            pool.pending[txid] = p
        for txid, raw, addrs in t.finalized_txs():
            pool.unconfirmed[txid] = Final(parse(orjson.loads(raw)), raw,
                                           tuple(orjson.loads(addrs)))
        self.journal.load(t.events_from(work.seq - self.config.replay_events), t.tx_raw)
        self._load_network()

    def _load_network(self) -> None:
        """Rebuild the network's in-memory state from the database."""
        config, pool = self.config, self.pool
        self.votes.load()
        if config.networked:
            for txid, raw in self.tables.recent_rejected(RECENT_REJECTED):
                pool.remember_rejected(txid, raw)
        for txid, p in sorted(pool.pending.items(), key=lambda kv: kv[1].accepted_at):
            ops = p.tx.outpoints()
            try:
                p.holds = pool.utxos.get(*ops[0])[3] == txid
            except UnknownOutpoint:
                p.holds = False
            for op in ops:
                pool.spenders.setdefault(op, set()).add(txid)
            if not (config.networked and config.voting):
                continue
            if config.public_key in p.approvals:
                for op in ops:
                    pool.approved[op] = txid
            elif config.public_key not in p.rejections:
                # Decided before a crash but never signed (so never sent): decide again,
                # in the order they were accepted, as the first time.
                self.votes.own_queue.append((txid, self.votes.decide(p)))

    def _genesis(self) -> None:
        network = self.config.network
        gtx = genesis_transaction(network)
        txids = [gtx.txid] if gtx else []
        h = block_hash(0, ZERO_HASH, GENESIS_TIMESTAMP, txids, "")
        block = BlockRow(0, h, ZERO_HASH, GENESIS_TIMESTAMP, orjson.dumps(txids), "")
        row = None
        coins: list[tuple[tuple[str, int], Coin]] = []
        if gtx is not None:
            row = TxRow(gtx.txid, orjson.dumps(gtx.to_json()), "confirmed",
                        GENESIS_TIMESTAMP, None, None, orjson.dumps(gtx.addresses()), 0)
            coins = [((gtx.txid, vout), Coin(o.address, o.amount, "Unspent", None, 0, 0))
                     for vout, o in enumerate(gtx.outputs)]
        with self.store.transaction() as db:
            self.tables.write_genesis(db, block, row, coins, network)
