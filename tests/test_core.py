"""The compiled core against its plain-Python model (tests/core_model.py)."""

from __future__ import annotations

import gc
import itertools
import os
import resource
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests import core_model
from timefast import _core
from timefast.errors import DuplicateOutpoint, IllegalTransition, LockConflict, UnknownOutpoint

STATES = core_model.STATES
ALLOWED = sorted(core_model.ALLOWED)
REFUSED = sorted(set(itertools.product(STATES, STATES)) - core_model.ALLOWED)

# txids are 64 lowercase hex characters (SPEC 4.1).
A_TX, B_TX, C_TX, F_TX = "a" * 64, "b" * 64, "c" * 64, "f" * 64
S_TX, S1_TX, S2_TX, S3_TX = "5" * 64, "1" * 64, "2" * 64, "3" * 64


def test_compiled_module_is_an_extension():
    assert _core.__file__.endswith((".so", ".pyd"))


def test_state_names_match():
    assert _core.STATES == core_model.STATES


@pytest.mark.parametrize(("src", "dst"), ALLOWED)
def test_allowed_transition(impl, src, dst):
    t = impl.UtxoTable()
    t.add(A_TX, 0, "A", 5, state=src, spending_txid=None if src == "Unspent" else S_TX)
    assert impl.allowed(src, dst)
    assert t.transition(A_TX, 0, dst) == src
    assert t.state(A_TX, 0) == dst


@pytest.mark.parametrize(("src", "dst"), REFUSED)
def test_refused_transition(impl, src, dst):
    t = impl.UtxoTable()
    t.add(A_TX, 0, "A", 5, state=src)
    assert not impl.allowed(src, dst)
    with pytest.raises(IllegalTransition) as e:
        t.transition(A_TX, 0, dst)
    assert (e.value.from_state, e.value.to_state) == (src, dst)
    assert src in str(e.value) and dst in str(e.value)
    assert t.state(A_TX, 0) == src


def test_unknown_state_name_is_refused(impl):
    t = impl.UtxoTable()
    t.add(A_TX, 0, "A", 5)
    with pytest.raises(ValueError):
        t.transition(A_TX, 0, "Spent")


def test_unknown_outpoint(impl):
    t = impl.UtxoTable()
    with pytest.raises(UnknownOutpoint):
        t.get(F_TX, 1)
    with pytest.raises(UnknownOutpoint):
        t.transition(F_TX, 1, "Locked")
    with pytest.raises(UnknownOutpoint):
        t.lock(S_TX, [(F_TX, 1)])


def test_lock_is_all_or_nothing_and_first_wins(impl):
    t = impl.UtxoTable()
    t.add(A_TX, 0, "A", 10)
    t.add(A_TX, 1, "A", 20)
    t.add(B_TX, 0, "B", 30)
    t.lock(S1_TX, [(A_TX, 0), (B_TX, 0)])
    with pytest.raises(LockConflict) as e:
        t.lock(S2_TX, [(A_TX, 1), (B_TX, 0)])
    assert (e.value.txid, e.value.vout) == (B_TX, 0)
    assert e.value.spending_txid == S1_TX
    assert e.value.state == "Locked"
    # The loser's other input was not touched.
    assert t.state(A_TX, 1) == "Unspent"
    assert t.get(A_TX, 0)[3] == S1_TX
    with pytest.raises(DuplicateOutpoint):
        t.lock(S3_TX, [(A_TX, 1), (A_TX, 1)])
    assert t.state(A_TX, 1) == "Unspent"


def test_rejection_clears_spender_and_votes(impl):
    t = impl.UtxoTable()
    t.add(A_TX, 0, "A", 10)
    t.lock(S_TX, [(A_TX, 0)])
    t.transition(A_TX, 0, "SpentPending", votes=2)
    assert t.get(A_TX, 0)[3:5] == (S_TX, 2)
    t.transition(A_TX, 0, "Unspent")
    assert t.get(A_TX, 0) == ("A", 10, "Unspent", None, 0, None)


def test_balance_and_listing(impl):
    t = impl.UtxoTable()
    t.add(A_TX, 0, "A", 10)
    t.add(A_TX, 1, "B", 20)
    t.add(B_TX, 0, "A", 30)
    t.lock(S_TX, [(B_TX, 0)])
    assert t.balance("A") == 10
    assert t.balance("nobody") == 0
    assert t.by_address("A") == [(A_TX, 0), (B_TX, 0)]
    assert t.unspent("A") == [(A_TX, 0, 10)]
    assert t.by_address("nobody") == [] and t.unspent("nobody") == []
    with pytest.raises(DuplicateOutpoint):
        t.add(A_TX, 0, "A", 1)
    with pytest.raises(ValueError):
        t.add(C_TX, 0, "A", 0)


def test_forget_drops_only_confirmed_coins(impl):
    t = impl.UtxoTable()
    t.add(A_TX, 0, "A", 10)
    t.add(A_TX, 1, "A", 20)
    t.lock(S_TX, [(A_TX, 0)])
    for state in ("SpentPending", "SpentFinalized"):
        with pytest.raises(IllegalTransition):
            t.forget(A_TX, 0)
        t.transition(A_TX, 0, state)
    with pytest.raises(IllegalTransition):
        t.forget(A_TX, 1)  # Unspent: still the address's money
    t.transition(A_TX, 0, "Confirmed", block_height=3)
    t.forget(A_TX, 0)
    assert (A_TX, 0) not in t and len(t) == 1
    assert t.by_address("A") == [(A_TX, 1)]
    with pytest.raises(UnknownOutpoint):
        t.forget(A_TX, 0)
    t.lock(S2_TX, [(A_TX, 1)])
    for state in ("SpentPending", "SpentFinalized", "Confirmed"):
        t.transition(A_TX, 1, state)
    t.forget(A_TX, 1)
    assert t.by_address("A") == [] and t.balance("A") == 0


def test_txids_are_64_lowercase_hex(impl):
    t = impl.UtxoTable()
    for bad in ("a" * 63, "A" * 64, "g" * 64, "a" * 65, "é" * 64):
        with pytest.raises(ValueError):
            t.add(bad, 0, "A", 1)
        with pytest.raises(UnknownOutpoint):
            t.get(bad, 0)
        assert (bad, 0) not in t
    with pytest.raises(ValueError):
        t.add(A_TX, -1, "A", 1)
    with pytest.raises(ValueError):
        t.add(A_TX, 0, "A", 1, state="Locked", spending_txid="not a txid")
    t.add(A_TX, 0, "A", 1)
    with pytest.raises(ValueError):
        t.lock("S" * 64, [(A_TX, 0)])
    assert t.state(A_TX, 0) == "Unspent"
    t.lock(S_TX, [(A_TX, 0)])
    assert t.get(A_TX, 0) == ("A", 1, "Locked", S_TX, 0, None)
    assert t.by_address("A") == [(A_TX, 0)]


def test_an_address_with_many_coins_keeps_its_order(impl):
    # Forgetting coins out of a long list compacts it behind the scenes: the
    # order stays oldest first and the address is forgotten with its last coin.
    t = impl.UtxoTable()
    txids = [f"{i:064x}" for i in range(300)]
    for i, txid in enumerate(txids):
        t.add(txid, i % 3, "BIG", 1 + i)
    gone = set()
    for i, txid in enumerate(txids):
        if i % 4 != 1:
            t.lock(S_TX, [(txid, i % 3)])
            for state in ("SpentPending", "SpentFinalized", "Confirmed"):
                t.transition(txid, i % 3, state)
            t.forget(txid, i % 3)
            gone.add(i)
            kept = [(x, j % 3) for j, x in enumerate(txids) if j not in gone]
            if i % 37 == 0:
                assert t.by_address("BIG") == kept
    assert t.by_address("BIG") == [(x, j % 3) for j, x in enumerate(txids) if j % 4 == 1]
    assert t.balance("BIG") == sum(1 + j for j in range(300) if j % 4 == 1)
    for j, txid in enumerate(txids):
        if j % 4 == 1:
            t.lock(S_TX, [(txid, j % 3)])
            for state in ("SpentPending", "SpentFinalized", "Confirmed"):
                t.transition(txid, j % 3, state)
            t.forget(txid, j % 3)
    assert t.by_address("BIG") == [] and len(t) == 0
    t.add(A_TX, 0, "BIG", 5)
    assert t.by_address("BIG") == [(A_TX, 0)] and t.balance("BIG") == 5


def test_route_returns_each_subscriber_once(impl):
    ix = impl.SubscriberIndex()
    assert ix.subscribe(1, ["A", "B", "A"]) == 2
    ix.subscribe(2, ["B"])
    ix.subscribe(3, ["C"])
    assert sorted(ix.route(["A", "B", "C", "Z"])) == [1, 2, 3]
    assert sorted(ix.route(["A", "B"])) == [1, 2]
    assert list(ix.route(["Z"])) == []
    assert ix.subscription_count == 4
    assert ix.unsubscribe(1, ["A", "Q"]) == 1
    assert ix.drop(2) == 1
    assert sorted(ix.route(["A", "B", "C"])) == [1, 3]
    assert ix.address_count == 2
    assert ix.subscriber_count == 2


# --------------------------------------------------------------------------- model check

ADDRESSES = [f"A{i}" for i in range(6)]
TXIDS = [c * 64 for c in "012"]
OUTPOINTS = [(t, v) for t in TXIDS for v in range(2)]


def _outcome(fn, *args, **kwargs):
    """Result or (exception class, its args) so two implementations compare equal."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as e:
        return ("err", type(e), str(e))


class CoreVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c_tab, self.m_tab = _core.UtxoTable(), core_model.UtxoTable()
        self.c_ix, self.m_ix = _core.SubscriberIndex(), core_model.SubscriberIndex()

    def both(self, name, obj_c, obj_m, *args, **kwargs):
        rc = _outcome(getattr(obj_c, name), *args, **kwargs)
        rm = _outcome(getattr(obj_m, name), *args, **kwargs)
        assert rc == rm, (name, args, rc, rm)
        return rc

    @rule(op=st.sampled_from(OUTPOINTS), address=st.sampled_from(ADDRESSES),
          amount=st.integers(min_value=-1, max_value=10**15))
    def add(self, op, address, amount):
        self.both("add", self.c_tab, self.m_tab, op[0], op[1], address, amount)

    @rule(txid=st.sampled_from(["d" * 64, "e" * 64]),
          ops=st.lists(st.sampled_from(OUTPOINTS), min_size=1, max_size=3))
    def lock(self, txid, ops):
        self.both("lock", self.c_tab, self.m_tab, txid, ops)

    @rule(op=st.sampled_from(OUTPOINTS), state=st.sampled_from(STATES),
          votes=st.none() | st.integers(0, 5), height=st.none() | st.integers(0, 9),
          spender=st.none() | st.sampled_from(["d" * 64, "f" * 64, "not a txid"]))
    def transition(self, op, state, votes, height, spender):
        self.both("check", self.c_tab, self.m_tab, op[0], op[1], state)
        self.both("transition", self.c_tab, self.m_tab, op[0], op[1], state,
                  votes=votes, block_height=height, spending_txid=spender)

    @rule(op=st.sampled_from(OUTPOINTS))
    def forget(self, op):
        self.both("forget", self.c_tab, self.m_tab, op[0], op[1])

    @rule(sub=st.integers(0, 5), addrs=st.lists(st.sampled_from(ADDRESSES), max_size=4))
    def subscribe(self, sub, addrs):
        self.both("subscribe", self.c_ix, self.m_ix, sub, addrs)

    @rule(sub=st.integers(0, 5), addrs=st.lists(st.sampled_from(ADDRESSES), max_size=4))
    def unsubscribe(self, sub, addrs):
        self.both("unsubscribe", self.c_ix, self.m_ix, sub, addrs)

    @rule(sub=st.integers(0, 5))
    def drop(self, sub):
        self.both("drop", self.c_ix, self.m_ix, sub)

    @rule(addrs=st.lists(st.sampled_from([*ADDRESSES, "nobody"]), max_size=6))
    def route(self, addrs):
        got = self.c_ix.route(addrs)
        assert len(got) == len(set(got)), "a subscriber was routed twice"
        assert set(got) == set(self.m_ix.route(addrs))

    @precondition(lambda self: True)
    @invariant()
    def same_state(self):
        for op in OUTPOINTS:
            assert _outcome(self.c_tab.get, *op) == _outcome(self.m_tab.get, *op)
        for a in ADDRESSES:
            assert self.c_tab.balance(a) == self.m_tab.balance(a)
            assert self.c_tab.by_address(a) == self.m_tab.by_address(a)
            assert self.c_tab.unspent(a) == self.m_tab.unspent(a)
            assert sorted(self.c_ix.subscribers_of(a)) == sorted(self.m_ix.subscribers_of(a))
        for s in range(6):
            assert sorted(self.c_ix.addresses_of(s)) == sorted(self.m_ix.addresses_of(s))
            assert self.c_ix.count_of(s) == self.m_ix.count_of(s)
        assert len(self.c_tab) == len(self.m_tab)
        assert self.c_ix.address_count == self.m_ix.address_count
        assert self.c_ix.subscriber_count == self.m_ix.subscriber_count
        assert self.c_ix.subscription_count == self.m_ix.subscription_count
        # A Locked or spent-pending UTXO always names its spender; Unspent never does.
        for op in OUTPOINTS:
            r = _outcome(self.c_tab.get, *op)
            if r[0] == "ok" and r[1][2] == "Unspent":
                assert r[1][3] is None


CoreVsModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                         deadline=None)
TestCoreVsModel = CoreVsModel.TestCase


# --------------------------------------------------------------------------- memory

def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_million_subscribe_drop_cycles_keep_memory_flat():
    ix = _core.SubscriberIndex()
    addrs = [f"TIME0{i:040x}" for i in range(1000)]

    def cycles(n):
        for i in range(n):
            sub = i % 1000
            ix.subscribe(sub, (addrs[i % 1000], addrs[(i * 7) % 1000]))
            ix.drop(sub)

    cycles(100_000)  # warm up allocator pools
    gc.collect()
    before = _rss_kb()
    cycles(1_000_000)
    gc.collect()
    after = _rss_kb()
    assert ix.subscription_count == 0 and ix.address_count == 0
    assert after - before < 2048, f"RSS grew by {after - before} KiB"


def test_a_coin_costs_under_256_bytes():
    # The UTXO set is most of a node's memory: records live in C, and the table
    # keeps no Python string per coin (txids are stored as their 32 bytes, an
    # address once however many coins it holds).
    addrs = [f"TIME0{i:040x}" for i in range(50_000)]
    gc.collect()
    before = _rss_kb()
    t = _core.UtxoTable()
    for i in range(200_000):
        t.add(f"{i:064x}", i % 3, addrs[i % 50_000], 1 + i)
    gc.collect()
    per_coin = (_rss_kb() - before) * 1024 / 200_000
    assert len(t) == 200_000
    assert per_coin < 256, f"{per_coin:.0f} bytes a coin"


# --------------------------------------------------------------------------- fan-out

class _Writer:
    """Stands in for a transport: records writes and a buffer size."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False


def test_a_burst_leaves_no_big_buffer_behind():
    fan = _core.Fanout(limit=1 << 20)
    slots = [fan.open(_Writer()) for _ in range(3)]
    for s in slots:
        fan.send(s, b"x" * 20_000)  # a run of payments to one wallet in one turn
    assert fan.buffer_bytes >= 60_000
    fan.flush()
    assert fan.buffer_bytes == 0
    # Ordinary traffic keeps a small buffer for reuse.
    fan.send(slots[0], b"y" * 300)
    fan.flush()
    assert 0 < fan.buffer_bytes <= 4096


def test_frame_text_lengths():
    for n in (0, 125, 126, 65535, 65536):
        f = _core.frame_text(b"x" * n)
        assert f[0] == 0x81
        if n < 126:
            assert f[1] == n and len(f) == n + 2
        elif n < 65536:
            assert f[1] == 126 and int.from_bytes(f[2:4], "big") == n
        else:
            assert f[1] == 127 and int.from_bytes(f[2:10], "big") == n


def test_publish_coalesces_and_sends_once_per_connection():
    fan = _core.Fanout(limit=1 << 20)
    w1, w2, w3 = _Writer(), _Writer(), _Writer()
    s1, s2, s3 = fan.open(w1), fan.open(w2), fan.open(w3)
    # A connection still in its handshake gets no broadcast.
    assert fan.broadcast(b"early", 0) == 0
    for s in (s1, s2, s3):
        fan.set_live(s)
    fan.index.subscribe(s1, ["A", "B"])
    fan.index.subscribe(s2, ["B"])
    assert fan.publish(b"one", ["A", "B"], 1) == 2
    assert fan.publish(b"two", ["B"], 2) == 2
    assert fan.broadcast(b"blk", 3) == 3
    assert fan.flush() == 3
    assert w1.chunks == [b"onetwoblk"]
    assert w2.chunks == [b"onetwoblk"]
    assert w3.chunks == [b"blk"]
    assert fan.flush() == 0
    assert fan.last_seq_flushed(s1) == 3


def test_direct_socket_send_and_close():
    a, b = socket.socketpair()
    a.setblocking(False)
    fan = _core.Fanout()
    w = _Writer()
    slot = fan.open(w, a.fileno())
    fan.index.subscribe(slot, ["A"])
    fan.publish(b"hello ", ["A"], 7)
    fan.send(slot, b"world")
    fan.flush()
    assert b.recv(100) == b"hello world"
    assert w.chunks == []
    fan.close(slot)
    assert fan.publish(b"x", ["A"], 8) == 0
    assert fan.connections == 0
    a.close()
    b.close()


def test_partial_write_spills_to_transport_in_order():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    fan = _core.Fanout(limit=1 << 24)
    w = _Writer()
    slot = fan.open(w, a.fileno())
    big = b"x" * 1_000_000
    fan.send(slot, big)
    fan.flush()
    assert len(w.chunks) == 1 and 0 < len(w.chunks[0]) < len(big)
    w.buffered = len(w.chunks[0])
    fan.send(slot, b"tail")
    fan.flush()
    # The transport still holds bytes, so the tail queues behind them.
    assert w.chunks[-1] == b"tail"
    a.close()
    b.close()


def test_slow_connection_is_lagged_and_others_unaffected():
    fan = _core.Fanout(limit=100)
    slow, fast = _Writer(), _Writer()
    s_slow, s_fast = fan.open(slow), fan.open(fast)
    fan.set_live(s_slow)
    fan.set_live(s_fast)
    fan.pause(s_slow)
    for seq in range(1, 21):
        fan.broadcast(b"0123456789", seq)
        if seq == 5:
            fan.flush()
            fan.resume(s_slow)
            fan.flush()
            fan.pause(s_slow)
        fan.flush()
    assert fan.is_lagged(s_slow)
    assert fan.take_lagged() == [(s_slow, 5)]
    assert fan.take_lagged() == []
    assert b"".join(fast.chunks) == b"0123456789" * 20
    assert fan.pending(s_slow) == 0
    assert fan.lag_closes == 1


def test_verify_many_checks_each_signature():
    from timefast import crypto

    k, k2 = crypto.new_key(), crypto.new_key()
    pk, pk2 = bytes(k.verify_key), bytes(k2.verify_key)
    sig = k.sign(b"hello").signature
    items = [(pk, b"hello", sig), (pk, b"hellp", sig), (pk2, b"hello", sig),
             (pk[:31], b"hello", sig), (pk, b"hello", sig[:63]), (pk, "hello", sig),
             (pk2, b"", k2.sign(b"").signature)]
    assert crypto.verify_batch(items) == bytes([1, 0, 0, 0, 0, 0, 1])
    assert crypto.verify_batch([]) == b""
    assert [crypto.verify(*i) for i in items[:3]] == [True, False, False]


# -- reading client frames -------------------------------------------------------------


@st.composite
def _client_stream(draw) -> bytes:
    from tests.helpers import client_frame
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "text", "other", "unmasked", "rsv", "long"]))
        payload = draw(st.binary(max_size=300))
        if kind == "text":
            out += client_frame(0x1, payload)
        elif kind == "other":
            out += client_frame(draw(st.sampled_from([0x0, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB])),
                                payload, fin=draw(st.booleans()))
        elif kind == "unmasked":
            out += bytes([0x81, len(payload[:125])]) + payload[:125]
        elif kind == "rsv":
            out += bytes([0xC1]) + client_frame(0x1, payload)[1:]
        else:  # a 64-bit length, over any limit or with its top bit set
            out += bytes([0x81, 0xFF]) + draw(st.binary(min_size=8, max_size=8)) + b"mask"
    return out


@settings(max_examples=300, deadline=None)
@given(stream=_client_stream(), cut=st.integers(0, 4000), max_size=st.integers(0, 400))
def test_read_frames_matches_the_model_on_any_stream_and_any_cut(stream, cut, max_size):
    """Every prefix of any client stream is read alike by the core and the model;
    what a prefix gives is where the whole stream's reading starts."""
    part = stream[:cut]
    got = _core.read_frames(part, max_size)
    assert got == core_model.read_frames(part, max_size)
    assert _core.read_frames(bytearray(part), max_size) == got
    items, used, need = got
    whole_items = _core.read_frames(stream, max_size)[0]
    assert [k for k, _ in items] == [k for k, _ in whole_items[:len(items)]]
    for (kind, chunk), (_, whole) in zip(items, whole_items, strict=False):
        # A bad frame hands over the rest of what was read: of the prefix, a prefix.
        assert chunk == whole if kind != _core.FRAME_BAD else whole.startswith(chunk)
    assert used <= len(part) and (need == 0 or used + need > len(part))


def test_read_frames_unmasks_text_and_hands_back_the_rest_as_sent():
    from tests.helpers import client_frame
    ping, text = client_frame(0x9, b"p"), client_frame(0x1, "héllo".encode())
    long_text = client_frame(0x1, b"y" * 70_000)
    items, used, need = _core.read_frames(text + ping + long_text[:100], 100_000)
    assert items == [(_core.FRAME_TEXT, "héllo".encode()), (_core.FRAME_OTHER, ping)]
    assert (used, need) == (len(text + ping), len(long_text))
    assert _core.read_frames(long_text, 100_000) == ([(_core.FRAME_TEXT, b"y" * 70_000)],
                                                       len(long_text), 0)
    # Over the limit: the rest goes to websockets (which closes 1009), nothing after.
    assert _core.read_frames(long_text + text, 1000) == (
        [(_core.FRAME_BAD, long_text + text)], len(long_text + text), 0)
