"""CI guard: ratios measured in one run, with floors far below the real figures.

Absolute speeds vary from machine to machine; ratios between two things run side
by side here do not, much.  A large regression of the compiled core against its
Python model, or of the node's fan-out or wallets' connecting against plain
websockets, fails.
"""

from __future__ import annotations

import random
import timeit

from bench.test_fanout_bench import loadclient, run_client, start_timefast, start_websockets
from tests import core_model
from timefast import _core

__all__ = ["loadclient"]  # the fixture, shared with the fan-out bench

CORE_FLOOR = 2.0     # measured: 4-9x for route() over 10,000 subscribers
FANOUT_FLOOR = 3.0   # measured: ~17x for broadcast to 1,000 clients, 16 in flight


def test_core_route_beats_model():
    rnd = random.Random(5)
    addrs = [f"TIME0{i:040x}" for i in range(20_000)]
    c, m = _core.SubscriberIndex(), core_model.SubscriberIndex()
    for sub in range(2_000):
        picked = rnd.sample(addrs, 50)
        c.subscribe(sub, picked)
        m.subscribe(sub, picked)
    batch = rnd.sample(addrs, 100)
    tc = min(timeit.repeat(lambda: c.route(batch), number=200, repeat=5))
    tm = min(timeit.repeat(lambda: m.route(batch), number=200, repeat=5))
    print(f"\nroute ratio {tm / tc:.1f}x")
    assert tm / tc >= CORE_FLOOR


def test_node_fanout_beats_plain_websockets(loadclient, tmp_path):
    rates = {}
    for name, start in (("timefast", start_timefast), ("websockets", start_websockets)):
        server = start(tmp_path)
        try:
            r = run_client(loadclient, server, "broadcast", 500, 1, 200, 16)
            assert r["complete"], r
            rates[name] = r["msgs_per_s"]
        finally:
            server.stop()
    print(f"\nfan-out ratio {rates['timefast'] / rates['websockets']:.1f}x {rates}")
    assert rates["timefast"] / rates["websockets"] >= FANOUT_FLOOR


CONNECT_FLOOR = 1.5  # measured: 2.6x (1,000 wallets) and 3.0x (10,000)


def test_wallets_connect_faster_than_on_plain_websockets(loadclient, tmp_path):
    """A reconnect storm's cost: wallets connecting and subscribing at once."""
    from bench.test_storm_bench import connect_only
    seconds = {}
    for name, start in (("timefast", start_timefast), ("websockets", start_websockets)):
        server = start(tmp_path / name)
        try:
            seconds[name] = min(connect_only(loadclient, server, 2000) for _ in range(2))
        finally:
            server.stop()
    print(f"\nconnect ratio {seconds['websockets'] / seconds['timefast']:.1f}x {seconds}")
    assert seconds["websockets"] / seconds["timefast"] >= CONNECT_FLOOR
