"""The compiled core beside its plain-Python model (tests/core_model.py).

Each benchmark runs in two groups' members, ``compiled`` and ``model``, so
pytest-benchmark's table shows the ratio directly.
"""

from __future__ import annotations

import random

import pytest

from tests import core_model
from timefast import _core

IMPLS = {"compiled": _core, "model": core_model}
N_SUBSCRIBERS = 10_000
N_ADDRESSES = 100_000
PER_SUBSCRIBER = 100  # 1,000,000 subscriptions, ~10 subscribers per address


def _index(impl):
    rnd = random.Random(1)
    ix = impl.SubscriberIndex()
    addrs = [f"TIME0{i:040x}" for i in range(N_ADDRESSES)]
    for sub in range(N_SUBSCRIBERS):
        ix.subscribe(sub, rnd.sample(addrs, PER_SUBSCRIBER))
    return ix, addrs


@pytest.fixture(scope="module", params=list(IMPLS))
def loaded_index(request):
    return request.param, _index(IMPLS[request.param])


@pytest.mark.parametrize("touched", [1, 10, 100, 1000])
def test_route(benchmark, loaded_index, touched):
    """route() over 10,000 subscribers holding 100,000 addresses."""
    name, (ix, addrs) = loaded_index
    benchmark.group = f"route {touched} addresses"
    benchmark.name = name
    batch = random.Random(2).sample(addrs, touched)
    benchmark(ix.route, batch)


def _model_publish(ix, buffers, frame, addresses):
    """What fan-out costs in Python: route, one append per recipient, one write each."""
    targets = ix.route(addresses)
    for sub in targets:
        buffers[sub] += frame
    for sub in targets:
        bytes(buffers[sub])
        buffers[sub].clear()


@pytest.mark.parametrize("touched", [1, 100])
def test_publish(benchmark, loaded_index, touched):
    """Route one event and queue its frame for every target connection."""
    name, (ix, addrs) = loaded_index
    benchmark.group = f"publish {touched} addresses"
    benchmark.name = name
    rnd = random.Random(3)
    batches = [rnd.sample(addrs, touched) for _ in range(64)]
    frame = _core.frame_text(b"x" * 300)
    it = iter(range(1 << 62))
    if name == "compiled":
        fan = _core.Fanout(limit=1 << 30)

        class W:
            def write(self, data):
                pass

            def get_write_buffer_size(self):
                return 0

            def is_closing(self):
                return False

        for _ in range(N_SUBSCRIBERS):
            fan.open(W())
        for sub in range(N_SUBSCRIBERS):
            fan.index.subscribe(sub, ix.addresses_of(sub))

        def run():
            fan.publish(frame, batches[next(it) & 63], 1)
            fan.flush()
    else:
        buffers = [bytearray() for _ in range(N_SUBSCRIBERS)]

        def run():
            _model_publish(ix, buffers, frame, batches[next(it) & 63])
    benchmark(run)


@pytest.mark.parametrize("name", list(IMPLS))
def test_subscribe_drop(benchmark, name):
    ix = IMPLS[name].SubscriberIndex()
    addrs = [f"TIME0{i:040x}" for i in range(20)]
    benchmark.group = "subscribe 20 + drop"
    benchmark.name = name

    def run():
        ix.subscribe(7, addrs)
        ix.drop(7)

    benchmark(run)


@pytest.mark.parametrize("name", list(IMPLS))
def test_lock_and_four_transitions(benchmark, name):
    impl = IMPLS[name]
    benchmark.group = "lock + 4 transitions (2 inputs)"
    benchmark.name = name
    t = impl.UtxoTable()
    counter = iter(range(1 << 62))

    def run():
        i = next(counter)
        a, b = (f"{i:064x}", 0), (f"{i:064x}", 1)
        t.add(a[0], 0, "A", 10)
        t.add(b[0], 1, "A", 10)
        t.lock("ff" * 32, [a, b])  # txids are 64 lowercase hex
        for op in (a, b):
            t.transition(op[0], op[1], "SpentPending", votes=1)
            t.transition(op[0], op[1], "SpentFinalized")
        for op in (a, b):
            t.transition(op[0], op[1], "Confirmed", block_height=1)

    benchmark(run)
