"""The per-link state machine, driven in memory by ``now`` values (SPEC 7.2-7.3)."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from timefast import wire
from timefast.crypto import sha3
from timefast.p2p import link as p2p
from timefast.p2p.link import (
    Authenticated,
    Closed,
    Link,
    Misbehaviour,
    Received,
)

KEYS = [SigningKey(sha3(b"timefast p2p link test %d" % i)) for i in range(4)]
PUBS = [k.verify_key.encode().hex() for k in KEYS]
MASTERNODES = PUBS[:3]  # PUBS[3] is a plain full node
NET = wire.network_id("ab" * 32, MASTERNODES)
TIP = "cd" * 32
H = "ef" * 32


def make(i: int, outbound: bool, now: float = 0.0, network_id: bytes = NET,
         **kw: Any) -> Link:
    return Link(KEYS[i], network_id, MASTERNODES, outbound=outbound, now=now, height=4, tip=TIP,
                listen=f"127.0.0.1:{24200 + i}", **kw)


def pump(a: Link, b: Link, now: float) -> tuple[list[p2p.Event], list[p2p.Event]]:
    """Carry frames both ways until none are left; the events of each side."""
    ea: list[p2p.Event] = []
    eb: list[p2p.Event] = []
    while True:
        fa, fb = a.data_to_send(), b.data_to_send()
        if not fa and not fb:
            return ea + a.events_received(), eb + b.events_received()
        for f in fa:
            b.receive_frame(f, now)
        for f in fb:
            a.receive_frame(f, now)
        ea += a.events_received()
        eb += b.events_received()


def opened(i: int = 0, j: int = 1, now: float = 0.0) -> tuple[Link, Link]:
    a, b = make(i, True, now), make(j, False, now)
    pump(a, b, now)
    assert a.authenticated and b.authenticated
    return a, b


def closed_with(events: list[p2p.Event]) -> tuple[int, bool]:
    """The close code, and whether misbehaviour was counted before it."""
    assert isinstance(events[-1], Closed)
    return events[-1].code, any(isinstance(e, Misbehaviour) for e in events[:-1])


def hello_of(link: Link) -> wire.Hello:
    msg = wire.parse(link.data_to_send()[0])
    assert isinstance(msg, wire.Hello)
    return msg


# -- handshake -------------------------------------------------------------------------

def test_handshake_in_memory():
    a, b = make(0, True), make(1, False)
    ea, eb = pump(a, b, 0.0)
    assert ea == [Authenticated(PUBS[1], True, a.peer_hello)]
    assert eb == [Authenticated(PUBS[0], True, b.peer_hello)]
    assert (a.peer_key, b.peer_key) == (PUBS[1], PUBS[0])
    assert a.peer_masternode and b.peer_masternode
    assert a.peer_hello is not None and a.peer_hello.listen == "127.0.0.1:24201"
    assert (a.dialer, a.accepter) == (b.dialer, b.accepter) == (PUBS[0], PUBS[1])
    a.send(wire.Status(5, TIP))
    _, eb = pump(a, b, 1.0)
    assert eb == [Received(wire.Status(5, TIP))]


def test_plain_full_node_is_authenticated_but_not_a_masternode():
    a, b = make(3, True), make(0, False)
    _, eb = pump(a, b, 0.0)
    assert eb == [Authenticated(PUBS[3], False, b.peer_hello)]
    assert b.authenticated and not b.peer_masternode
    # It may relay ...
    a.send(wire.Status(1, TIP))
    _, eb = pump(a, b, 0.0)
    assert eb == [Received(wire.Status(1, TIP))]
    # ... but it cannot start a height.
    a.send(wire.StartHeight(5))
    _, eb = pump(a, b, 0.0)
    assert closed_with(eb) == (1008, True)


def test_start_height_from_a_masternode_is_received():
    a, b = opened()
    a.send(wire.StartHeight(5))
    _, eb = pump(a, b, 0.0)
    assert eb == [Received(wire.StartHeight(5))]


def test_other_network_is_refused_on_both_sides():
    other = wire.network_id("ab" * 32, PUBS)
    a, b = make(0, True, network_id=other), make(1, False)
    ea, eb = pump(a, b, 0.0)
    assert closed_with(ea) == (1008, True)
    assert closed_with(eb) == (1008, True)
    assert not a.authenticated and not b.authenticated
    # Refused at the Hello: no Auth is signed for another network.
    c = make(1, False)
    c.data_to_send()
    c.receive(hello_of(make(0, True, network_id=other)), 0.0)
    assert c.data_to_send() == []
    assert closed_with(c.events_received()) == (1008, True)


def test_other_protocol_version_is_refused_saying_so():
    a, b = make(0, True), make(1, False)
    hello = orjson.loads(a.data_to_send()[0])
    hello["data"]["version"] = 1  # a version 1 Hello carried a nonce, no ephemeral
    del hello["data"]["ephemeral"]
    b.receive_frame(orjson.dumps(hello).decode(), 0)
    events = b.events_received()
    assert closed_with(events) == (1008, True)
    assert events[0] == Misbehaviour("protocol version 1, expected 2")


@pytest.mark.parametrize(("field", "value", "says"), [
    ("network", "mainnet", "network 'mainnet', ours 'regtest'"),
    ("genesis", "77" * 32, "genesis 7777"),
    (None, None, "the same genesis with another genesis voting set")])
def test_another_network_is_refused_saying_what_differs(field, value, says):
    other = wire.network_id("ab" * 32, PUBS)
    kw = {field: value} if field else {}
    a, b = make(0, True, network_id=other, **kw), make(1, False)
    b.receive_frame(a.data_to_send()[0], 0.0)
    events = b.events_received()
    assert closed_with(events) == (1008, True)
    assert isinstance(events[0], Misbehaviour) and says in events[0].reason


def test_bad_auth_is_refused():
    a, b = make(0, True), make(1, False)
    b.receive(hello_of(a), 0.0)
    b.receive(wire.Auth("00" * 64), 0.0)
    assert closed_with(b.events_received()) == (1008, True)
    assert not b.authenticated


def test_auth_by_another_key_is_refused():
    """A Hello claiming key 0 with an Auth signed by key 2 over the right fields."""
    a, b = make(0, True), make(1, False)
    hello = hello_of(a)
    b.receive(hello, 0.0)
    forged = wire.Auth(KEYS[2].sign(wire.auth_bytes(
        NET, 0, bytes.fromhex(hello.ephemeral), b.ephemeral, bytes.fromhex(PUBS[0]),
        bytes.fromhex(PUBS[1]))).signature.hex())
    b.receive(forged, 0.0)
    assert closed_with(b.events_received()) == (1008, True)


def test_replayed_auth_is_refused():
    """An Auth recorded from one link does not open another: it signs that link's
    ephemerals."""
    a, b = make(0, True), make(1, False)
    recorded_hello = hello_of(a)
    b_hello = hello_of(b)
    a.receive(b_hello, 0.0)
    recorded_auth = wire.parse(a.data_to_send()[0])
    assert isinstance(recorded_auth, wire.Auth)
    # Genuine on the link it was made for ...
    b.receive(recorded_hello, 0.0)
    b.receive(recorded_auth, 0.0)
    assert b.authenticated
    # ... refused on a new link to the same node, which sent another ephemeral.
    b2 = make(1, False)
    assert b2.ephemeral != b.ephemeral
    b2.receive(recorded_hello, 1.0)
    b2.receive(recorded_auth, 1.0)
    assert closed_with(b2.events_received()) == (1008, True)


def test_a_relayed_handshake_does_not_open_a_link():
    """The impersonation of version 1: a third party with no key dials A and B and
    passes each one's handshake to the other. Both accepted, so each signs the
    acceptor's role and each refuses the other's Auth: no link opens, neither side
    lists the other's key at the third party's address."""
    a, b = make(0, False), make(1, False)  # both accepted the third party's connection
    ea, eb = pump(a, b, 0.0)  # it forwards every frame unchanged
    assert not a.authenticated and not b.authenticated
    assert closed_with(ea) == (1008, True) and closed_with(eb) == (1008, True)
    assert not any(isinstance(e, Authenticated) for e in ea + eb)


def test_a_relayed_version_1_handshake_opened_a_link():
    """The same relay against version 1's Auth (a signature over the peer's nonce and
    the own key only, SPEC 7.2): both sides authenticate the other. This is the attack
    the version 2 Auth closes."""

    def v1_auth(key: SigningKey, network_id: bytes, peer_nonce: bytes) -> bytes:
        return key.sign(b"TIMEP2P/1" + network_id + peer_nonce + key.verify_key.encode()
                        ).signature

    nonce_a, nonce_b = b"\x0a" * 32, b"\x0b" * 32  # each side's Hello, relayed
    auth_a = v1_auth(KEYS[0], NET, nonce_b)  # A signs the nonce B sent
    auth_b = v1_auth(KEYS[1], NET, nonce_a)
    # Each checks the other's Auth as version 1 did: over its own nonce.
    assert KEYS[1].verify_key.verify(b"TIMEP2P/1" + NET + nonce_a + KEYS[1].verify_key.encode(),
                                     auth_b)
    assert KEYS[0].verify_key.verify(b"TIMEP2P/1" + NET + nonce_b + KEYS[0].verify_key.encode(),
                                     auth_a)


@pytest.mark.parametrize("after_hello", [False, True])
def test_message_before_auth_is_refused(after_hello):
    a, b = make(0, True), make(1, False)
    if after_hello:
        b.receive(hello_of(a), 0.0)
    b.receive(wire.Status(1, TIP), 0.0)
    assert closed_with(b.events_received()) == (1008, True)


def test_auth_before_hello_is_refused():
    b = make(1, False)
    b.receive(wire.Auth("00" * 64), 0.0)
    assert closed_with(b.events_received()) == (1008, True)


def test_second_hello_is_refused_before_and_after_auth():
    a, b = make(0, True), make(1, False)
    hello = hello_of(a)
    b.receive(hello, 0.0)
    b.receive(hello, 0.0)
    assert closed_with(b.events_received()) == (1008, True)
    a, b = opened()
    b.receive(a.peer_hello or hello, 0.0)
    assert closed_with(b.events_received()) == (1008, True)


def test_second_auth_is_refused():
    _, b = opened()
    b.receive(wire.sign_auth(KEYS[0], NET, 0, b"\x01" * 32, b.ephemeral, PUBS[1]), 0.0)
    assert closed_with(b.events_received()) == (1008, True)


# -- the sealed stream -----------------------------------------------------------------

def test_messages_after_auth_are_sealed_binary_frames():
    a, b = opened()
    a.send(wire.Status(5, TIP))
    frames = a.data_to_send()
    assert all(isinstance(f, bytes) for f in frames)
    assert b"Status" not in frames[0]  # nobody on the path reads it
    b.receive_frame(frames[0], 1.0)
    assert b.events_received() == [Received(wire.Status(5, TIP))]


def test_an_unsealed_or_altered_or_replayed_frame_closes_the_link():
    a, b = opened()
    b.receive_frame(wire.encode(wire.Status(5, TIP)).decode(), 0.0)  # text after Auth
    assert closed_with(b.events_received()) == (1008, True)
    a, b = opened()
    a.send(wire.Status(5, TIP))
    frame = bytearray(a.data_to_send()[0])
    frame[-1] ^= 1
    b.receive_frame(bytes(frame), 0.0)
    assert closed_with(b.events_received()) == (1008, True)
    a, b = opened()
    a.send(wire.Status(5, TIP))
    frame = a.data_to_send()[0]
    b.receive_frame(frame, 0.0)
    b.receive_frame(frame, 0.0)  # the stream counts frames: a copy does not open
    events = b.events_received()
    assert events[0] == Received(wire.Status(5, TIP))
    assert closed_with(events) == (1008, True)


def test_a_frame_sealed_for_another_link_does_not_open():
    a, _ = opened()
    _, d = opened()
    a.send(wire.Status(5, TIP))
    d.receive_frame(a.data_to_send()[0], 0.0)
    assert closed_with(d.events_received()) == (1008, True)


def test_before_auth_only_small_text_frames_are_read():
    b = make(1, False)
    b.receive_frame(b"\x00" * 24, 0.0)
    assert closed_with(b.events_received()) == (1008, True)
    # Over 4 KiB: refused by its size before it is parsed (it is not even JSON).
    b = make(1, False)
    b.receive_frame("[]," * 2000, 0.0)
    events = b.events_received()
    assert closed_with(events) == (1008, True)
    assert events[0] == Misbehaviour("handshake frame over 4096 bytes")
    # A Hello of 4 KiB or less is read.
    b = make(1, False)
    b.receive_frame(a_hello := make(0, True).data_to_send()[0], 0.0)
    assert len(a_hello) <= wire.MAX_HANDSHAKE_BYTES and b.events_received() == []


def test_a_closed_link_keeps_no_keys_and_sends_nothing_more():
    a, _ = opened()
    a.close("done")
    assert a.closed
    with pytest.raises(RuntimeError):
        a.send(wire.Status(1, TIP))
    a.receive_frame(b"\x00" * 40, 0.0)
    assert a.data_to_send() == [] and a.events_received() == [Closed(1000, "done")]


def test_connected_to_self_closes_without_misbehaviour():
    a = make(0, True)
    a.receive(hello_of(make(0, False)), 0.0)
    assert closed_with(a.events_received()) == (1000, False)


def test_unexpected_key_is_refused():
    a, b = make(0, True, expected_key=PUBS[2]), make(1, False)
    ea, _ = pump(a, b, 0.0)
    assert closed_with(ea) == (1008, True)


def test_malformed_frame_closes_1008_and_too_large_1009():
    a, b = opened()
    a.send_encoded(b'{"type":"Status","data":{"height":-1,"tip":"x"}}')
    b.receive_frame(a.data_to_send()[0], 1.0)
    assert closed_with(b.events_received()) == (1008, True)
    big, small = make(0, True), make(1, False, max_message_bytes=600)
    pump(big, small, 0.0)
    big.send_encoded(b'{"type":"Ping","data":{"pad":"' + b"x" * 600 + b'"}}')
    small.receive_frame(big.data_to_send()[0], 0.0)
    assert closed_with(small.events_received()) == (1009, True)


def test_bad_addr_signature_closes_and_good_one_is_received():
    a, b = opened()
    good = wire.sign_addr(KEYS[2], NET, "10.0.0.2:24200", 1764150000)
    a.send(good)
    _, eb = pump(a, b, 0.0)
    assert eb == [Received(good)]
    a.send(wire.Addr(good.public_key, "10.0.0.3:24200", good.timestamp, good.signature))
    _, eb = pump(a, b, 0.0)
    assert closed_with(eb) == (1008, True)


def test_caller_reported_misbehaviour_and_close():
    a, b = opened()
    b.misbehaved("Tx signature does not verify")
    assert closed_with(b.events_received()) == (1008, True)
    b.receive(wire.Status(1, TIP), 0.0)  # ignored once closed
    assert b.events_received() == [] and b.data_to_send() == []
    a.close("shutting down")
    assert a.events_received() == [Closed(1000, "shutting down")]
    assert a.closed and not a.authenticated and a.next_deadline() is None


def test_send_needs_an_open_link_and_no_handshake_messages():
    a = make(0, True)
    with pytest.raises(RuntimeError):
        a.send(wire.Status(1, TIP))
    a, _ = opened()
    with pytest.raises(ValueError):
        a.send(wire.Auth("00" * 64))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_frame_sequence_never_raises(data):
    """Whatever a peer sends, in whatever order, the link answers with events."""
    a, b = make(0, True), make(1, False)
    hello = a.data_to_send()
    b_hello = wire.parse(b.data_to_send()[0])
    assert isinstance(b_hello, wire.Hello)
    auth = wire.encode(wire.sign_auth(KEYS[0], NET, 0, a.ephemeral, b.ephemeral, PUBS[1]))
    # Open ``a`` with a copy of ``b`` (same key and ephemeral), so that what ``a``
    # sends after Auth is sealed for ``b``'s stream.
    a.receive(b_hello, 0.0)
    a.data_to_send()
    b_twin = copy.deepcopy(b)
    b_twin.receive(wire.parse(hello[0]), 0.0)
    a.receive(wire.parse(b_twin.data_to_send()[0]), 0.0)
    assert a.authenticated
    after = a.data_to_send()  # its stream header, then sealed messages
    for m in (wire.Status(1, TIP), wire.Ping(3), wire.sign_addr(KEYS[2], NET, "10.0.0.2:1", 5),
              wire.StartHeight(2), wire.Pong(1)):
        a.send(m)
    after += a.data_to_send()
    valid = [*hello, auth.decode(), *after, wire.encode(wire.Status(1, TIP)).decode()]
    frames = data.draw(st.lists(st.sampled_from(valid) | st.binary(max_size=64)
                                | st.text(max_size=64), max_size=8))
    for n, f in enumerate(frames):
        b.receive_frame(f, float(n))
        b.tick(float(n))
    events = b.events_received()
    closes = [e for e in events if isinstance(e, Closed)]
    assert len(closes) <= 1 and (not closes or events[-1] == closes[0])
    assert all(c.code in (1008, 1009) for c in closes)
    assert b.closed == bool(closes)


# -- pings and silence -----------------------------------------------------------------

def test_ping_every_10_s_answered_with_pong_and_latency():
    a, b = opened(now=100.0)
    assert a.next_deadline() == 110.0
    a.tick(109.9)
    assert a.data_to_send() == []
    a.tick(110.0)
    frames = a.data_to_send()
    assert len(frames) == 1  # the Ping, sealed
    b.receive_frame(frames[0], 110.0)
    assert b.events_received() == []  # answered by the link itself
    pong = b.data_to_send()
    assert len(pong) == 1
    a.receive_frame(pong[0], 110.25)
    assert a.latency == 0.25
    assert a.next_deadline() == 120.0


def test_silent_30_s_closes_1011():
    a, _ = opened(now=0.0)  # the peer answers nothing from here on
    for t in (10.0, 20.0):
        a.tick(t)
        assert len(a.data_to_send()) == 1  # a Ping
    a.tick(29.9)
    assert not a.closed
    a.tick(30.0)
    assert closed_with(a.events_received()) == (1011, False)


def test_any_frame_resets_silence():
    a, b = opened(now=0.0)
    b.send(wire.Status(1, TIP))
    pump(a, b, 25.0)
    a.tick(30.0)
    assert not a.closed
    a.tick(55.0)
    assert a.closed


def test_unfinished_handshake_closes_1011():
    a = make(0, True, now=0.0)
    a.receive(hello_of(make(1, False)), 3.0)  # Hello, then no Auth
    a.tick(9.9)
    assert not a.closed
    assert a.next_deadline() == 10.0
    a.tick(10.0)
    assert closed_with(a.events_received()) == (1011, False)


# -- one link per pair -----------------------------------------------------------------

def test_link_dialled_by_smaller_key_stays_on_both_sides():
    small, big = sorted([0, 1], key=lambda i: PUBS[i])
    one_a, one_b = opened(small, big)  # dialled by the smaller key
    two_a, two_b = opened(big, small)  # dialled by the bigger key
    for link in (one_a, one_b):
        assert p2p.link_stays(link.dialer or "", link.accepter or "")
    for link in (two_a, two_b):
        assert not p2p.link_stays(link.dialer or "", link.accepter or "")
    assert p2p.link_stays(PUBS[small].upper(), PUBS[big])


def test_link_and_wire_import_no_asyncio_or_sockets():
    code = ("import sys, timefast.wire, timefast.p2p.link; "
            "bad = {'asyncio', 'socket', 'websockets', 'uvloop'} & set(sys.modules); "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_handshake_frames_are_json_text():
    a = make(0, True)
    frame = a.data_to_send()[0]
    assert isinstance(frame, str) and orjson.loads(frame)["type"] == "Hello"
