"""What every part of the ledger is built with: the network and the voting set."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from timefast import wire
from timefast.crypto import address_of, is_public_key_hex, public_key_hex
from timefast.rules import LedgerError, check_address, genesis_hash, quorum
from timefast.transaction import SigningKey


@dataclass(frozen=True)
class LedgerConfig:
    """The settings a ledger runs under, fixed for its life."""

    network: str  # mainnet, testnet or regtest
    public_key: str  # this node's key
    address: str  # its address on ``network``
    masternodes: tuple[str, ...]  # the voting set, in the order given, without repeats
    quorum: int
    network_id: bytes  # SPEC 7.1: what every peer message signs
    # A member of the voting set.
    voting: bool
    # A one-masternode network votes inline (TIMEVOTE), as it always has; any other
    # signs batches and waits for its peers.
    networked: bool
    finality_timeout: float
    replay_events: int
    replay_bytes: int
    clock: Callable[[], float]

    @classmethod
    def make(cls, network: str, key: SigningKey, masternodes: Iterable[str] | None = None,
             finality_timeout: float = 10.0, replay_events: int = 100_000,
             clock: Callable[[], float] = time.time,
             replay_bytes: int = 256 << 20) -> LedgerConfig:
        """Check and derive the settings (``ValueError`` for a bad network or key)."""
        if network not in ("mainnet", "testnet", "regtest"):
            raise ValueError(f"unknown network {network!r}")
        public_key = public_key_hex(key)
        voters = [m.lower() for m in (masternodes or [public_key])]
        for m in voters:
            if not is_public_key_hex(m):
                raise ValueError(f"masternode key {m!r} is not 64 hex characters")
        members = tuple(dict.fromkeys(voters))
        voting = public_key in members
        return cls(network, public_key, address_of(public_key, network), members,
                   quorum(len(members)), wire.network_id(genesis_hash(network), members),
                   voting, len(members) > 1 or not voting, finality_timeout,
                   replay_events, replay_bytes, clock)

    def check_address(self, address: object, what: str = "address") -> str:
        """An output address of this network, or ``LedgerError(INVALID_ADDRESS)``."""
        return check_address(address, self.network, what)

    def check_voter(self, voter: str) -> None:
        """``LedgerError(BAD_REQUEST)`` unless ``voter`` is in the voting set."""
        if voter not in self.masternodes:
            raise LedgerError("BAD_REQUEST", f"voter {voter} is not in the masternode set")
