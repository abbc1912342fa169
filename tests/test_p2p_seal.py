"""The sealed stream of a link: session keys from the X25519 exchange and
secretstream each way (SPEC 7.2; known answers in tests/test_wire.py)."""

from __future__ import annotations

import pytest

from timefast.p2p.seal import (
    HEADER_BYTES,
    OVERHEAD,
    NotOpened,
    Opener,
    Sealer,
    ephemeral_keypair,
    session_keys,
)


def _pair() -> tuple[Sealer, Opener, Sealer, Opener]:
    """Both directions of one link: the dialler's sealer and opener, the acceptor's."""
    d_pub, d_sec = ephemeral_keypair()
    a_pub, a_sec = ephemeral_keypair()
    d_rx, d_tx = session_keys(True, d_pub, d_sec, a_pub)
    a_rx, a_tx = session_keys(False, a_pub, a_sec, d_pub)
    d_seal, a_seal = Sealer(d_tx), Sealer(a_tx)
    return d_seal, Opener(d_rx, a_seal.header), a_seal, Opener(a_rx, d_seal.header)


def test_each_side_opens_what_the_other_sealed_in_order():
    d_seal, d_open, a_seal, a_open = _pair()
    assert len(d_seal.header) == HEADER_BYTES
    frames = [d_seal.seal(b"one"), d_seal.seal(b""), d_seal.seal(b"three" * 1000)]
    assert len(frames[0]) == 3 + OVERHEAD
    assert [a_open.open(f) for f in frames] == [b"one", b"", b"three" * 1000]
    assert d_open.open(a_seal.seal(b"back")) == b"back"


def test_ephemerals_are_fresh_per_link():
    assert ephemeral_keypair()[0] != ephemeral_keypair()[0]


@pytest.mark.parametrize("how", ["reordered", "replayed", "altered", "truncated",
                                 "other link"])
def test_a_frame_out_of_its_stream_does_not_open(how):
    d_seal, _, _, a_open = _pair()
    first, second = d_seal.seal(b"first"), d_seal.seal(b"second")
    if how == "reordered":
        bad = second
    elif how == "replayed":
        a_open.open(first)
        bad = first
    elif how == "altered":
        bad = first[:-1] + bytes([first[-1] ^ 1])
    elif how == "truncated":
        bad = first[:OVERHEAD - 1]
    else:
        bad = _pair()[0].seal(b"first")
    with pytest.raises(NotOpened):
        a_open.open(bad)


def test_a_stream_header_of_the_wrong_size_is_refused():
    with pytest.raises(NotOpened):
        Opener(b"\x01" * 32, b"\x00" * (HEADER_BYTES + 1))
