"""The per-link state machine, driven in memory by ``now`` values (SPEC 7.2-7.3)."""

from __future__ import annotations

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


def test_other_protocol_version_is_refused():
    a, b = make(0, True), make(1, False)
    hello = hello_of(a)
    b.receive(wire.Hello(2, hello.network_id, hello.public_key, hello.nonce, 4, TIP, None), 0)
    assert closed_with(b.events_received()) == (1008, True)


def test_bad_auth_is_refused():
    a, b = make(0, True), make(1, False)
    b.receive(hello_of(a), 0.0)
    b.receive(wire.Auth("00" * 64), 0.0)
    assert closed_with(b.events_received()) == (1008, True)
    assert not b.authenticated


def test_auth_by_another_key_is_refused():
    """A Hello claiming key 0 with an Auth signed by key 2 over the right nonce."""
    a, b = make(0, True), make(1, False)
    b.receive(hello_of(a), 0.0)
    forged = wire.Auth(KEYS[2].sign(wire.auth_bytes(NET, b.nonce, bytes.fromhex(PUBS[0])))
                       .signature.hex())
    b.receive(forged, 0.0)
    assert closed_with(b.events_received()) == (1008, True)


def test_replayed_auth_is_refused():
    """An Auth recorded from one link does not open another: it signs that link's nonce."""
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
    # ... refused on a new link to the same node, which sent another nonce.
    b2 = make(1, False)
    assert b2.nonce != b.nonce
    b2.receive(recorded_hello, 1.0)
    b2.receive(recorded_auth, 1.0)
    assert closed_with(b2.events_received()) == (1008, True)


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
    b.receive(wire.sign_auth(KEYS[0], NET, b.nonce), 0.0)
    assert closed_with(b.events_received()) == (1008, True)


def test_connected_to_self_closes_without_misbehaviour():
    a = make(0, True)
    a.receive(hello_of(make(0, False)), 0.0)
    assert closed_with(a.events_received()) == (1000, False)


def test_unexpected_key_is_refused():
    a, b = make(0, True, expected_key=PUBS[2]), make(1, False)
    ea, _ = pump(a, b, 0.0)
    assert closed_with(ea) == (1008, True)


def test_malformed_frame_closes_1008_and_too_large_1009():
    _, b = opened()
    b.receive_frame(b'{"type":"Status","data":{"height":-1,"tip":"x"}}', 1.0)
    assert closed_with(b.events_received()) == (1008, True)
    small = make(1, False, max_message_bytes=600)
    small.receive_frame(wire.encode(hello_of(make(0, True))), 0.0)
    small.receive_frame(b'{"type":"Ping","data":{"pad":"' + b"x" * 600 + b'"}}', 0.0)
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
    valid = [*a.data_to_send(), wire.encode(wire.sign_auth(KEYS[0], NET, b.nonce)),
             wire.encode(wire.Status(1, TIP)), wire.encode(wire.Ping(3)),
             wire.encode(wire.sign_addr(KEYS[2], NET, "10.0.0.2:1", 5)),
             wire.encode(wire.StartHeight(2)), b'{"type":"Pong","data":{"nonce":1}}']
    frames = data.draw(st.lists(st.sampled_from(valid) | st.binary(max_size=64), max_size=8))
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
    assert [wire.parse(f) for f in frames] == [wire.Ping(1)]
    b.receive_frame(frames[0], 110.0)
    pong = b.data_to_send()
    assert [wire.parse(f) for f in pong] == [wire.Pong(1)]
    a.receive_frame(pong[0], 110.25)
    assert a.latency == 0.25
    assert a.next_deadline() == 120.0


def test_silent_30_s_closes_1011():
    a, _ = opened(now=0.0)  # the peer answers nothing from here on
    for n, t in enumerate((10.0, 20.0), 1):
        a.tick(t)
        assert [wire.parse(f) for f in a.data_to_send()] == [wire.Ping(n)]
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


def test_frames_are_json_text():
    a = make(0, True)
    frame = a.data_to_send()[0]
    assert orjson.loads(frame.decode("utf-8"))["type"] == "Hello"
