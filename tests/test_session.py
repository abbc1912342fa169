"""The wallet session without sockets: replies, replay and what a connection has seen."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timefast import _core, crypto
from timefast.ledger import Ledger
from timefast.session import Limits, Seen, WalletSession
from timefast.storage import Store

from .helpers import new_wallet


class Sink:
    """A fan-out writer that keeps every byte written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


def messages(data: bytearray) -> list[dict]:
    """Decode the unmasked server text frames in ``data``."""
    out, i = [], 0
    while i < len(data):
        n, h = data[i + 1] & 0x7F, 2
        if n == 126:
            n, h = int.from_bytes(data[i + 2:i + 4], "big"), 4
        elif n == 127:
            n, h = int.from_bytes(data[i + 2:i + 10], "big"), 10
        out.append(orjson.loads(bytes(data[i + h:i + h + n])))
        i += h + n
    return out


class Wallet:
    """One session on a fan-out slot, fed live events as the server does."""

    def __init__(self, ledger: Ledger, fanout: _core.Fanout) -> None:
        self.sink = Sink()
        self.fanout = fanout
        self.session = WalletSession(ledger, fanout, fanout.open(self.sink), Limits())

    def say(self, msg: dict) -> None:
        self.session.handle_text(orjson.dumps(msg))
        self.fanout.flush()

    def got(self) -> list[dict]:
        return messages(self.sink.data)


def _node(tmp_path):
    led = Ledger(Store(tmp_path / "s.db"), "regtest", crypto.new_key())
    fan = _core.Fanout(1 << 30)

    def on_events(events):
        for e in events:
            frame = _core.frame_text(e.payload)
            if e.addresses is None:
                fan.broadcast(frame, e.seq)
            else:
                fan.publish(frame, e.addresses, e.seq)
        fan.flush()
    led.listeners.append(on_events)
    return led, fan


def test_seen_ranges_merge_close_and_forget():
    s = Seen()
    s.add(10, 20)
    s.add(30, math.inf)
    assert 11 in s and 20 in s and 10 not in s and 25 not in s and 10**9 in s
    s.close(40)
    assert 41 not in s and 40 in s
    s.add(15, 35)
    assert s.ranges == [10, 40]
    s.add(50, 60)
    s.forget_before(45)
    assert s.ranges == [50, 60]


def test_resubscribing_with_since_does_not_repeat(tmp_path):
    led, fan = _node(tmp_path)
    _, a = new_wallet()
    _, b = new_wallet()
    start = led.seq
    w = Wallet(led, fan)
    w.say({"type": "Subscribe", "data": {"addresses": [a], "since_seq": start,
                                         "snapshot": False}})
    led.faucet(a, 5)
    led.make_block()
    led.faucet(b, 6)
    # The same address again, and a second one, both from the start.
    w.say({"type": "Subscribe", "data": {"addresses": [a, b], "since_seq": start,
                                         "snapshot": False}})
    w.say({"type": "Unsubscribe", "data": {"addresses": [a]}})
    led.faucet(a, 7)  # not subscribed: not delivered
    w.say({"type": "Subscribe", "data": {"addresses": [a], "since_seq": start,
                                         "snapshot": False}})
    seqs = [m["data"]["seq"] for m in w.got() if "seq" in m.get("data", {})
            and m["type"] not in ("Subscribed",)]
    assert len(seqs) == len(set(seqs)), "an event reached the wallet twice"
    wanted = [e.seq for e in led.recent if e.seq > start and
              (e.addresses is None or a in e.addresses or b in e.addresses)]
    assert sorted(seqs) == wanted


ops = st.lists(st.one_of(
    st.tuples(st.just("pay"), st.integers(0, 2)),
    st.tuples(st.just("block"), st.just(0)),
    st.tuples(st.just("sub"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("unsub"), st.integers(0, 2)),
), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops)
def test_no_event_twice_and_none_missed_after_a_resume(tmp_path_factory, script):
    led, fan = _node(tmp_path_factory.mktemp("s"))
    addrs = [new_wallet()[1] for _ in range(3)]
    start = led.seq
    w = Wallet(led, fan)
    w.say({"type": "Ping"})
    resumed: dict[str, int] = {}
    for op in script:
        if op[0] == "pay":
            led.faucet(addrs[op[1]], 10 + op[1])
        elif op[0] == "block":
            led.make_block()
        elif op[0] == "sub":
            data = {"addresses": [addrs[op[1]]], "snapshot": False}
            if op[2]:
                data["since_seq"] = start
                resumed.setdefault(addrs[op[1]], start)
            w.say({"type": "Subscribe", "data": data})
        else:
            w.say({"type": "Unsubscribe", "data": {"addresses": [addrs[op[1]]]}})
    got = [m["data"]["seq"] for m in w.got()
           if m["type"] not in ("Subscribed", "Unsubscribed", "Pong")]
    assert len(got) == len(set(got)), "an event reached the wallet twice"
    have = set(got)
    for a in resumed:
        # Resuming from ``start`` delivers everything about the address since then.
        missing = [e.seq for e in led.recent if e.seq > start and e.addresses is not None
                   and a in e.addresses and e.seq not in have
                   and e.seq <= _last_resume_seq(w, a)]
        assert not missing, (a, missing)


def _last_resume_seq(w: Wallet, address: str) -> float:
    """The ``seq`` of the wallet's last resuming Subscribe to ``address``."""
    last = -1
    for m in w.got():
        if m["type"] == "Subscribed" and address in m["data"]["addresses"]:
            last = m["data"]["seq"]
    return last


@pytest.mark.parametrize("since", [None, 0])
def test_subscribed_reply_and_snapshot(tmp_path, since):
    led, fan = _node(tmp_path)
    _, a = new_wallet()
    led.faucet(a, 9)
    w = Wallet(led, fan)
    data = {"addresses": [a]}
    if since is not None:
        data["since_seq"] = since
    w.say({"type": "Subscribe", "id": 3, "data": data})
    reply = w.got()[0]
    assert reply["type"] == "Subscribed" and reply["id"] == 3
    assert reply["data"]["seq"] == led.seq
    assert reply["data"]["snapshot"][a]["balance"] == 9
