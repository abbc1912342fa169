"""Where masternodes listen (SPEC 7.2): ``AddrBook``, the newest signed ``Addr`` per
key, one per node, for gossip (and, for keys of the voting set only, dialling)."""

from __future__ import annotations

from collections.abc import Collection

from timefast import wire
from timefast.wire import Addr


class AddrBook:
    """The newest signed ``Addr`` per key, for gossip and dialling (SPEC 7.2).

    Records of MASTERNODES keys are always kept; others are bounded by
    ``max_records``, the oldest (by timestamp) dropped first. A record dated more
    than ``max_future`` seconds ahead of ``now`` or older than ``max_age`` is refused,
    so a node re-signs its own record more often than ``max_age``.
    """

    def __init__(self, network_id: bytes, masternodes: Collection[str], *,
                 max_records: int = 1024, max_future: float = 600.0,
                 max_age: float = 86_400.0) -> None:
        """``network``: the network id the records are signed for."""
        self.network_id = network_id
        self.masternodes = frozenset(k.lower() for k in masternodes)
        self.max_records = max_records
        self.max_future = max_future
        self.max_age = max_age
        self._records: dict[str, Addr] = {}

    def offer(self, addr: Addr, now: float, checked: bool = False) -> bool:
        """Keep ``addr`` if it is the newest for its key; True if kept (gossip it on).
        Its signature is checked here unless ``checked`` (a ``Link`` checked it);
        a bad one raises ``wire.BadSignature``. ``now``: unix seconds."""
        if not now - self.max_age <= addr.timestamp <= now + self.max_future:
            return False
        held = self._records.get(addr.public_key)
        if held is not None and held.timestamp >= addr.timestamp:
            return False
        if not checked:
            wire.verify_addr(addr, self.network_id)
        self._records[addr.public_key] = addr
        if held is None and addr.public_key not in self.masternodes:
            others = [a for a in self._records.values()
                      if a.public_key not in self.masternodes]
            if len(others) > self.max_records:
                oldest = min(others, key=lambda a: a.timestamp)
                del self._records[oldest.public_key]
                return oldest is not addr
        return True

    def get(self, public_key: str) -> Addr | None:
        """The record held for a key."""
        return self._records.get(public_key.lower())

    def records(self, now: float | None = None) -> list[Addr]:
        """Every record held (not older than ``max_age`` when ``now`` is given), to
        send to a new peer."""
        if now is None:
            return list(self._records.values())
        return [a for a in self._records.values() if a.timestamp >= now - self.max_age]

    def __len__(self) -> int:
        return len(self._records)
