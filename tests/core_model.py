"""Plain-Python model of the compiled core (``timefast._core``).

It states what the core must do in the simplest code we can write; the tests
drive both with the same operations and demand identical answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from timefast.errors import DuplicateOutpoint, IllegalTransition, LockConflict, UnknownOutpoint

STATES = ("Unspent", "Locked", "SpentPending", "SpentFinalized", "Confirmed")

ALLOWED = {
    ("Unspent", "Locked"),
    ("Locked", "SpentPending"),
    ("Locked", "Unspent"),
    ("SpentPending", "SpentPending"),
    ("SpentPending", "SpentFinalized"),
    ("SpentPending", "Unspent"),
    ("SpentFinalized", "Confirmed"),
    # Learnt from peers (SPEC 4.2).
    ("Unspent", "SpentFinalized"),
    ("Locked", "SpentFinalized"),
}


def allowed(from_state: str, to_state: str) -> bool:
    for s in (from_state, to_state):
        if s not in STATES:
            raise ValueError(f"unknown UTXO state {s!r}")
    return (from_state, to_state) in ALLOWED


_HEX = frozenset("0123456789abcdef")


def _is_txid(txid: object) -> bool:
    return isinstance(txid, str) and len(txid) == 64 and set(txid) <= _HEX


@dataclass
class _Utxo:
    address: str
    amount: int
    state: str = "Unspent"
    spending_txid: str | None = None
    votes: int = 0
    block_height: int | None = None


class UtxoTable:
    def __init__(self) -> None:
        self._utxos: dict[tuple[str, int], _Utxo] = {}

    def __len__(self) -> int:
        return len(self._utxos)

    def __contains__(self, outpoint: object) -> bool:
        return outpoint in self._utxos

    def _find(self, txid: str, vout: int) -> _Utxo:
        try:
            return self._utxos[(txid, vout)]
        except KeyError:
            raise UnknownOutpoint(txid, vout) from None

    def add(self, txid: str, vout: int, address: str, amount: int, state: str = "Unspent",
            spending_txid: str | None = None, votes: int = 0,
            block_height: int | None = None) -> None:
        if not _is_txid(txid) or not 0 <= vout <= 0xFFFFFFFF:
            raise ValueError(f"outpoint {txid!r}:{vout} is not a 64-hex txid and a vout")
        if (txid, vout) in self._utxos:
            raise DuplicateOutpoint(txid, vout)
        if amount <= 0:
            raise ValueError("amount must be positive")
        allowed(state, state)
        if spending_txid is not None and not _is_txid(spending_txid):
            raise ValueError(f"spending txid {spending_txid!r} is not 64 hex characters")
        self._utxos[(txid, vout)] = _Utxo(address, amount, state, spending_txid, votes,
                                          block_height)

    def get(self, txid: str, vout: int) -> tuple:
        u = self._find(txid, vout)
        return (u.address, u.amount, u.state, u.spending_txid, u.votes, u.block_height)

    def state(self, txid: str, vout: int) -> str:
        return self._find(txid, vout).state

    def check_lock(self, txid: str, outpoints: list) -> int:
        if not _is_txid(txid):
            raise ValueError(f"spending txid {txid!r} is not 64 hex characters")
        seen = set()
        for op in outpoints:
            if op in seen:
                raise DuplicateOutpoint(*op)
            seen.add(op)
            u = self._find(*op)
            if u.state != "Unspent":
                raise LockConflict(op[0], op[1], u.state, u.spending_txid)
        return 0

    def lock(self, txid: str, outpoints: list) -> int:
        self.check_lock(txid, outpoints)
        for op in outpoints:
            u = self._utxos[op]
            u.state = "Locked"
            u.spending_txid = txid
        return 0

    def check(self, txid: str, vout: int, new_state: str) -> None:
        u = self._find(txid, vout)
        if not allowed(u.state, new_state):
            raise IllegalTransition(txid, vout, u.state, new_state)

    def transition(self, txid: str, vout: int, new_state: str, votes: int | None = None,
                   block_height: int | None = None, spending_txid: str | None = None) -> str:
        u = self._find(txid, vout)
        prev = u.state
        if not allowed(prev, new_state):
            raise IllegalTransition(txid, vout, prev, new_state)
        if spending_txid is not None:
            if not _is_txid(spending_txid):
                raise ValueError("spending_txid must be 64 lowercase hex characters")
            u.spending_txid = spending_txid
        u.state = new_state
        if new_state == "Unspent":
            u.spending_txid = None
            u.votes = 0
        if votes is not None:
            u.votes = votes
        if block_height is not None:
            u.block_height = block_height
        return prev

    def forget(self, txid: str, vout: int) -> None:
        u = self._find(txid, vout)
        if u.state != "Confirmed":
            raise IllegalTransition(txid, vout, u.state, "forgotten")
        del self._utxos[(txid, vout)]

    def by_address(self, address: str) -> list:
        return [op for op, u in self._utxos.items() if u.address == address]

    def unspent(self, address: str) -> list:
        return [(*op, u.amount) for op, u in self._utxos.items()
                if u.address == address and u.state == "Unspent"]

    def balance(self, address: str) -> int:
        return sum(u.amount for u in self._utxos.values()
                   if u.address == address and u.state == "Unspent")


class SubscriberIndex:
    def __init__(self) -> None:
        self._subs: dict[str, dict[int, None]] = {}
        self._addrs: dict[int, dict[str, None]] = {}

    def subscribe(self, sub: int, addresses) -> int:
        added = 0
        for a in addresses:
            if not isinstance(a, str):
                raise TypeError("addresses must be str")
            subs = self._subs.setdefault(a, {})
            if sub in subs:
                continue
            subs[sub] = None
            self._addrs.setdefault(sub, {})[a] = None
            added += 1
        return added

    def unsubscribe(self, sub: int, addresses) -> int:
        removed = 0
        held = self._addrs.get(sub, {})
        for a in addresses:
            if a in held:
                del held[a]
                del self._subs[a][sub]
                if not self._subs[a]:
                    del self._subs[a]
                removed += 1
        if not held:
            self._addrs.pop(sub, None)
        return removed

    def drop(self, sub: int) -> int:
        held = self._addrs.pop(sub, {})
        for a in held:
            del self._subs[a][sub]
            if not self._subs[a]:
                del self._subs[a]
        return len(held)

    def route(self, addresses) -> list:
        out: dict[int, None] = {}
        for a in addresses:
            for s in self._subs.get(a, ()):
                out[s] = None
        return list(out)

    def addresses_of(self, sub: int) -> list:
        return list(self._addrs.get(sub, ()))

    def subscribers_of(self, address: str) -> list:
        return list(self._subs.get(address, ()))

    def holds(self, sub: int, address: str) -> bool:
        return address in self._addrs.get(sub, ())

    def count_of(self, sub: int) -> int:
        return len(self._addrs.get(sub, ()))

    @property
    def address_count(self) -> int:
        return len(self._subs)

    @property
    def subscriber_count(self) -> int:
        return len(self._addrs)

    @property
    def subscription_count(self) -> int:
        return sum(len(v) for v in self._addrs.values())


FRAME_TEXT, FRAME_OTHER, FRAME_BAD = 0, 1, 2


def read_frames(data: bytes | bytearray, max_size: int
                ) -> tuple[list[tuple[int, bytes]], int, int]:
    """Whole client frames off the start of ``data`` (see ``_core.read_frames``)."""
    data = bytes(data)
    items: list[tuple[int, bytes]] = []
    off = 0
    while len(data) - off >= 2:
        b0, b1 = data[off], data[off + 1]
        if not b1 & 0x80 or b0 & 0x70 or b0 & 0x0F in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
            return [*items, (FRAME_BAD, data[off:])], len(data), 0
        size = {126: 2, 127: 8}.get(b1 & 0x7F, 0)
        head = 2 + size + 4
        if len(data) - off < head:
            break
        length = int.from_bytes(data[off + 2:off + 2 + size], "big") if size else b1 & 0x7F
        if (size == 8 and data[off + 2] & 0x80) or length > max_size:
            return [*items, (FRAME_BAD, data[off:])], len(data), 0
        end = off + head + length
        if end > len(data):
            return items, off, end - off
        if b0 == 0x81:
            mask = data[off + head - 4:off + head]
            items.append((FRAME_TEXT, bytes(b ^ mask[i % 4] for i, b in
                                            enumerate(data[off + head:end]))))
        else:
            items.append((FRAME_OTHER, data[off:end]))
        off = end
    return items, off, 0
