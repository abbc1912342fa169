"""The journal's replay window: lookups by address agree with the whole window."""

from __future__ import annotations

import random

from timefast.journal import Event, Journal


def _event(seq: int, addresses: tuple[str, ...] | None) -> Event:
    return Event(seq, "NewBlock" if addresses is None else "UtxoStateChange", addresses,
                 b'{"seq":%d}' % seq)


def _expected(j: Journal, wanted: set[str], seq: int, now: int) -> tuple[bool, list[Event]]:
    ok, events = j.events_after(seq, now)
    return ok, [e for e in events if e.addresses is None or wanted & set(e.addresses)]


def test_events_for_matches_the_window_filtered_by_address() -> None:
    rnd = random.Random(7)
    addresses = [f"a{i}" for i in range(12)]
    j = Journal(keep=60, quorum=1)
    seq = 0
    for _ in range(40):
        batch = []
        for _ in range(rnd.randint(1, 5)):
            seq += 1
            kind = rnd.random()
            # Broadcasts, one address, several, and an address named twice.
            addrs = (None if kind < 0.1 else
                     (rnd.choice(addresses),) * 2 if kind < 0.2 else
                     tuple(rnd.sample(addresses, rnd.randint(1, 3))))
            batch.append(_event(seq, addrs))
        j.keep_events(batch)
        for since in (0, j.recent[0].seq - 1, max(0, seq - 7), seq - 1, seq):
            for wanted in ({"a1"}, {"a2", "a5", "a9"}, {"nobody"}):
                assert j.events_for(sorted(wanted), since, seq) == \
                    _expected(j, wanted, since, seq), (since, wanted)
    # The index holds exactly the window, however much was dropped.
    assert sum(len(q) for q in j.by_address.values()) == sum(
        len(set(e.addresses)) for e in j.recent if e.addresses is not None)
    assert list(j.broadcasts) == [e for e in j.recent if e.addresses is None]


def test_events_for_reports_dropped_events() -> None:
    j = Journal(keep=3, quorum=1)
    j.keep_events([_event(s, ("a",)) for s in range(1, 6)])
    assert j.events_for(["a"], 1, 5) == (False, [])
    assert [e.seq for e in j.events_for(["a"], 2, 5)[1]] == [3, 4, 5]
    assert j.events_for(["a"], 5, 5) == (True, [])


def test_load_rebuilds_the_address_index() -> None:
    j = Journal(keep=10, quorum=1)
    j.keep_events([_event(1, ("a",)), _event(2, None)])
    j.load([(3, "UtxoStateChange", b'["b"]', b"{}", None, None)], lambda txid: None)
    assert set(j.by_address) == {"b"} and not j.broadcasts
    assert [e.seq for e in j.events_for(["b"], 2, 3)[1]] == [3]
