"""The wallet session without sockets: replies, replay and what a connection has seen."""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timefast import _core, commits, crypto, session
from timefast.ledger import Ledger
from timefast.session import Limits, Seen, WalletSession
from timefast.source import LedgerSource
from timefast.storage import Store
from timefast.transaction import build

from .helpers import Capture, ledger_with_coins, new_wallet, parse_frames


def messages(data: bytearray) -> list[dict]:
    """The JSON messages a wallet was sent."""
    return [orjson.loads(f) for f in parse_frames(data)]


class Wallet:
    """One session on a fan-out slot, fed live events as the server does."""

    def __init__(self, ledger: Ledger, fanout: _core.Fanout) -> None:
        self.sink = Capture()
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
    led.listen(on_events)
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
    led.faucet.pay(a, 5)
    led.blocks.make_block()
    led.faucet.pay(b, 6)
    # The same address again, and a second one, both from the start.
    w.say({"type": "Subscribe", "data": {"addresses": [a, b], "since_seq": start,
                                         "snapshot": False}})
    w.say({"type": "Unsubscribe", "data": {"addresses": [a]}})
    led.faucet.pay(a, 7)  # not subscribed: not delivered
    w.say({"type": "Subscribe", "data": {"addresses": [a], "since_seq": start,
                                         "snapshot": False}})
    seqs = [m["data"]["seq"] for m in w.got() if "seq" in m.get("data", {})
            and m["type"] not in ("Subscribed",)]
    assert len(seqs) == len(set(seqs)), "an event reached the wallet twice"
    wanted = [e.seq for e in led.journal.recent if e.seq > start and
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
            led.faucet.pay(addrs[op[1]], 10 + op[1])
        elif op[0] == "block":
            led.blocks.make_block()
        elif op[0] == "sub":
            data = {"addresses": [addrs[op[1]]], "snapshot": False}
            if op[2]:
                data["since_seq"] = start
            w.say({"type": "Subscribe", "data": data})
            if op[2]:
                # A resume promises every event of the address from ``start`` up to
                # the reply's ``seq`` (and live ones after it while subscribed).
                replies = [m for m in w.got() if m["type"] == "Subscribed"]
                resumed[addrs[op[1]]] = replies[-1]["data"]["seq"]
        else:
            w.say({"type": "Unsubscribe", "data": {"addresses": [addrs[op[1]]]}})
    got = [m["data"]["seq"] for m in w.got()
           if m["type"] not in ("Subscribed", "Unsubscribed", "Pong")]
    assert len(got) == len(set(got)), "an event reached the wallet twice"
    have = set(got)
    for a, upto in resumed.items():
        missing = [e.seq for e in led.journal.recent if start < e.seq <= upto
                   and e.addresses is not None and a in e.addresses and e.seq not in have]
        assert not missing, (a, missing)


@pytest.mark.parametrize("since", [None, 0])
def test_subscribed_reply_and_snapshot(tmp_path, since):
    led, fan = _node(tmp_path)
    _, a = new_wallet()
    led.faucet.pay(a, 9)
    w = Wallet(led, fan)
    data = {"addresses": [a]}
    if since is not None:
        data["since_seq"] = since
    w.say({"type": "Subscribe", "id": 3, "data": data})
    reply = w.got()[0]
    assert reply["type"] == "Subscribed" and reply["id"] == 3
    assert reply["data"]["seq"] == led.seq
    assert reply["data"]["snapshot"][a]["balance"] == 9


def test_get_history_answers_with_its_id(tmp_path):
    led, fan = _node(tmp_path)
    _, a = new_wallet()
    paid = led.faucet.pay(a, 10)
    w = Wallet(led, fan)
    w.say({"type": "GetHistory", "id": 7, "data": {"address": a}})
    w.say({"type": "GetHistory", "id": 8, "data": {"address": a, "limit": 0}})
    got = w.got()
    assert got[0]["id"] == 7 and got[0]["type"] == "History"
    assert [t["txid"] for t in got[0]["data"]["txs"]] == [paid]
    assert got[1]["type"] == "Error" and got[1]["data"]["code"] == "BAD_REQUEST"


def test_subscription_history_is_bounded_and_subscribe_touches_only_its_addresses(
        tmp_path, monkeypatch):
    # 50 rounds of Subscribe / Unsubscribe of 100 new addresses, with events between:
    # the connection's history grew by every address (Subscribe scanning all of it).
    led, fan = _node(tmp_path)
    w = Wallet(led, fan)
    w.session.limits = Limits(max_subscriptions=100)
    _, payee = new_wallet()
    touched = []
    forget = Seen.forget_before
    monkeypatch.setattr(Seen, "forget_before",
                        lambda self, seq: (touched.append(1), forget(self, seq))[1])
    for r in range(50):
        addrs = [f"r{r}x{i}" for i in range(100)]
        touched.clear()
        w.say({"type": "Subscribe", "data": {"addresses": addrs, "snapshot": False}})
        assert len(touched) <= len(addrs)
        led.faucet.pay(payee, 1000 + r)
        w.say({"type": "Unsubscribe", "data": {"addresses": addrs}})
        assert len(w.session.seen) <= 2 * 100
    assert all(m["type"] in ("Subscribed", "Unsubscribed") for m in w.got())


def test_a_forgotten_history_resumes_with_a_snapshot_not_a_repeat(tmp_path):
    led, fan = _node(tmp_path)
    w = Wallet(led, fan)
    w.session.limits = Limits(max_subscriptions=10)
    _, a = new_wallet()
    start = led.seq
    w.say({"type": "Subscribe", "data": {"addresses": [a], "snapshot": False}})
    led.faucet.pay(a, 1000)
    w.say({"type": "Unsubscribe", "data": {"addresses": [a]}})
    for r in range(3):  # 30 other addresses come and go: a's history is forgotten
        others = [f"o{r}x{i}" for i in range(10)]
        w.say({"type": "Subscribe", "data": {"addresses": others, "snapshot": False}})
        w.say({"type": "Unsubscribe", "data": {"addresses": others}})
    assert a not in w.session.seen
    had = [m["data"]["seq"] for m in w.got() if "seq" in m.get("data", {})
           and m["type"] not in ("Subscribed",)]
    w.sink.data.clear()
    w.say({"type": "Subscribe", "data": {"addresses": [a], "since_seq": start,
                                         "snapshot": False}})
    sub = w.got()[0]["data"]
    assert sub["resync"] is True and sub["snapshot"][a]["balance"] == 1000
    again = [m["data"]["seq"] for m in w.got()[1:] if "seq" in m.get("data", {})]
    assert not set(again) & set(had)


def test_signature_work_one_connection_can_queue_is_bounded(tmp_path, monkeypatch):
    # 300 transactions spending the wallet's own ten coins with wrong signatures, in
    # one burst: every one was queued for its ten checks.
    led, key, a, split = ledger_with_coins(tmp_path / "b.db")
    checked: list[int] = []
    real = commits.verify_batch
    monkeypatch.setattr(commits, "verify_batch",
                        lambda items: (checked.append(len(items)), real(items))[1])
    other = build([(split.txid, v, key) for v in range(10)], [(a, 5)], timestamp=0)
    loop = asyncio.new_event_loop()
    gc = commits.GroupCommit(led, loop)
    fan = _core.Fanout(1 << 30)
    sink = Capture()
    s = WalletSession(led, fan, fan.open(sink), Limits(), commits=gc)
    for i in range(300):
        tx = build([(split.txid, v, key) for v in range(10)], [(a, 10 + i)],
                   timestamp=i).to_json()
        for inp, wrong in zip(tx["inputs"], other.inputs, strict=True):
            inp["signature"] = wrong.signature
        s.handle_text(orjson.dumps({"type": "SubmitTransaction", "id": i, "data": {"tx": tx}}))
    fan.flush()
    limited = [m for m in messages(sink.data) if m["data"].get("code") == "RATE_LIMITED"]
    assert len(limited) == 300 - session.SIGNATURE_BUDGET // 10

    async def settle():
        for _ in range(500):
            if s.signatures_waiting == 0:
                return
            await asyncio.sleep(0.01)
    loop.run_until_complete(settle())
    gc.close()
    loop.close()
    assert sum(checked) <= session.SIGNATURE_BUDGET
    fan.flush()
    answers = messages(sink.data)
    assert len(answers) == 300
    assert {m["data"].get("code", m["type"]) for m in answers} == {"RATE_LIMITED", "TX_INVALID"}


class LateSource(LedgerSource):
    """A ledger whose snapshots arrive later, as an edge's do from the masternode:
    taken at once, handed over by ``release``."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.late: list[tuple[object, object]] = []

    def snapshots(self, addresses, after, done):
        super().snapshots(addresses, after, lambda v, err: self.late.append((v, err)))
        self.late[-1] = (self.late[-1], done)

    def release(self) -> None:
        for (value, err), done in self.late:
            done(value, err)
        self.late.clear()


def test_a_subscribe_answered_later_gets_what_it_gets_at_once_and_holds_what_follows(tmp_path):
    led, fan = _node(tmp_path)
    _, a = new_wallet()
    now = Wallet(led, fan)
    late_source = LateSource(led)
    late = Wallet(led, fan)
    late.session = WalletSession(late_source, fan, late.session.slot, Limits())
    held: list[bool] = []
    late.session.held = held.append
    for w in (now, late):
        w.say({"type": "Subscribe", "id": 1, "data": {"addresses": [a]}})
    # While its snapshot is on its way the wallet's next messages wait, in order.
    late.say({"type": "Ping", "id": 2})
    late.say({"type": "Unsubscribe", "id": 3, "data": {"addresses": [a]}})
    assert late.got() == [] and held == [True]
    led.faucet.pay(a, 5)  # events after the snapshot's seq, before the answer
    late_source.release()
    fan.flush()
    got = late.got()
    assert held == [True, False]
    events = [m for m in now.got() if "id" not in m]
    assert len(events) == 3  # TransactionPending, UtxoStateChange, TransactionFinalized
    assert got == [now.got()[0], *events,
                   {"type": "Pong", "id": 2},
                   {"type": "Unsubscribed", "id": 3, "data": {"addresses": [a]}}]
