"""Regtest's faucet: the genesis coins, paid out on request (``time-cli faucet``)."""

from __future__ import annotations

from nacl.signing import SigningKey

from timefast.crypto import address_of, public_key_hex
from timefast.ledger.config import LedgerConfig
from timefast.ledger.mempool import Mempool
from timefast.ledger.pool import Pool
from timefast.rules import FAUCET_KEY, LedgerError
from timefast.transaction import build


class Faucet:
    """Pays from the regtest faucet's coins through admission, like any wallet."""

    def __init__(self, config: LedgerConfig, pool: Pool, mempool: Mempool) -> None:
        self.config = config
        self.pool = pool
        self.mempool = mempool
        self.address = address_of(public_key_hex(FAUCET_KEY), config.network)

    def pay(self, address: str, amount: int) -> str:
        """Regtest only: pay ``amount`` from the faucet to ``address``; returns the txid."""
        if self.config.network != "regtest":
            raise LedgerError("BAD_REQUEST", "the faucet exists only on regtest")
        self.config.check_address(address)
        if type(amount) is not int or amount <= 0:
            raise LedgerError("BAD_REQUEST", "amount must be a positive integer")
        faucet = self.address
        picked: list[tuple[str, int, SigningKey]] = []
        total = 0
        # Newest first: the faucet's change is its newest coin, so a busy faucet
        # finds one at once however long its history.
        for t, v, value in reversed(self.pool.utxos.unspent(faucet)):
            picked.append((t, v, FAUCET_KEY))
            total += value
            if total >= amount:
                break
        if total < amount:
            raise LedgerError("BAD_REQUEST", "the faucet has no unspent coins for that amount"
                              " now (its change returns once its last payment finalizes)")
        outputs = [(address, amount)]
        if total > amount:
            outputs.append((faucet, total - amount))
        tx = build(picked, outputs, timestamp=int(self.config.clock()))
        return self.mempool.submit(tx.to_json())
