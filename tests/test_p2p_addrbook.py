"""The address book: the newest signed Addr per key, bounded (SPEC 7.2)."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from timefast import wire
from timefast.crypto import sha3
from timefast.p2p.addrbook import AddrBook

KEYS = [SigningKey(sha3(b"timefast p2p link test %d" % i)) for i in range(4)]
PUBS = [k.verify_key.encode().hex() for k in KEYS]
MASTERNODES = PUBS[:3]  # PUBS[3] is a plain full node
NET = wire.network_id("ab" * 32, MASTERNODES)

NOW = 1764150000


def test_addr_book_keeps_the_newest_per_key():
    book = AddrBook(NET, MASTERNODES)
    old = wire.sign_addr(KEYS[0], NET, "10.0.0.1:24200", NOW - 60)
    new = wire.sign_addr(KEYS[0], NET, "10.0.0.9:24200", NOW)
    assert book.offer(old, NOW)
    assert book.offer(new, NOW)
    assert not book.offer(old, NOW)
    assert not book.offer(new, NOW)
    assert book.get(PUBS[0].upper()) == new
    assert book.records() == [new]


def test_addr_book_refuses_bad_signature_future_and_stale_records():
    book = AddrBook(NET, MASTERNODES)
    rec = wire.sign_addr(KEYS[0], NET, "10.0.0.1:24200", NOW)
    forged = wire.Addr(rec.public_key, "10.6.6.6:24200", rec.timestamp, rec.signature)
    with pytest.raises(wire.BadSignature):
        book.offer(forged, NOW)
    assert not book.offer(wire.sign_addr(KEYS[0], NET, "10.0.0.1:1", NOW + 601), NOW)
    assert not book.offer(wire.sign_addr(KEYS[0], NET, "10.0.0.1:1", NOW - 86_401), NOW)
    assert len(book) == 0
    assert book.offer(rec, NOW)
    assert book.records(now=NOW + 86_401) == []


def test_addr_book_bounded_but_keeps_masternodes():
    others = [SigningKey(sha3(b"other %d" % i)) for i in range(3)]
    book = AddrBook(NET, MASTERNODES, max_records=2)
    for n, k in enumerate(others):
        assert book.offer(wire.sign_addr(k, NET, f"10.1.0.{n}:1", NOW + n), NOW)
    for n, k in enumerate(KEYS[:3]):
        assert book.offer(wire.sign_addr(k, NET, f"10.2.0.{n}:1", NOW - 100), NOW)
    kept = {a.public_key for a in book.records()}
    assert kept == {*PUBS[:3], *(k.verify_key.encode().hex() for k in others[1:])}
    # A record older than every other one held is not kept when the book is full.
    late = SigningKey(sha3(b"late"))
    assert not book.offer(wire.sign_addr(late, NET, "10.3.0.0:1", NOW - 50), NOW)
    assert book.get(late.verify_key.encode().hex()) is None

