"""The node-wide relay record: each transaction and vote batch relayed once, and
equivocating batches found (SPEC 7.3, 7.4)."""

from __future__ import annotations

from nacl.signing import SigningKey

from timefast import wire
from timefast.crypto import sha3
from timefast.p2p.relay import Equivocation, RelayFilter

KEYS = [SigningKey(sha3(b"timefast p2p link test %d" % i)) for i in range(4)]
PUBS = [k.verify_key.encode().hex() for k in KEYS]
MASTERNODES = PUBS[:3]  # PUBS[3] is a plain full node
NET = wire.network_id("ab" * 32, MASTERNODES)
H = "ef" * 32


def test_tx_relayed_once_known_only_after_caller_says_so():
    f = RelayFilter(NET)
    assert not f.tx_known(H)
    assert f.add_tx(H)
    assert f.tx_known(H)
    assert not f.add_tx(H)


def test_relay_sets_are_bounded():
    f = RelayFilter(NET, max_txids=2, max_batches=2)
    for t in ("01" * 32, "02" * 32, "03" * 32):
        f.add_tx(t)
    assert not f.tx_known("01" * 32) and f.tx_known("03" * 32)
    batches = [wire.sign_votes(KEYS[0], NET, n, [(H, True)]) for n in (1, 2, 3)]
    for v in batches:
        f.add_votes(v)
    assert not f.votes_known(batches[0]) and f.votes_known(batches[2])


def test_votes_dedup_by_voter_batch_and_content():
    f = RelayFilter(NET)
    v = wire.sign_votes(KEYS[0], NET, 1, [(H, True)])
    assert not f.votes_known(v)
    assert f.add_votes(v) == (True, None)
    assert f.votes_known(v)
    assert f.add_votes(v) == (False, None)
    # Same number, another voter; same voter, next number: both new, no evidence.
    assert f.add_votes(wire.sign_votes(KEYS[1], NET, 1, [(H, True)])) == (True, None)
    assert f.add_votes(wire.sign_votes(KEYS[0], NET, 2, [(H, True)])) == (True, None)


def test_two_batches_under_one_number_are_evidence_and_a_third_is_dropped_unread():
    f = RelayFilter(NET)
    first = wire.sign_votes(KEYS[0], NET, 7, [(H, True)])
    second = wire.sign_votes(KEYS[0], NET, 7, [(H, False)])
    f.add_votes(first)
    assert not f.votes_known(second)  # checked, then relayed: every node sees both
    new, evidence = f.add_votes(second)
    assert new
    assert evidence == Equivocation(PUBS[0], 7, first.content_hash(NET),
                                    second.content_hash(NET))
    assert f.add_votes(second) == (False, None)
    # The number is used up: a third batch under it is dropped before any check.
    third = wire.sign_votes(KEYS[0], NET, 7, [(H, True), ("01" * 32, True)])
    assert f.votes_known(third)
    assert f.add_votes(third) == (False, None)
    assert not f.votes_known(wire.sign_votes(KEYS[0], NET, 8, [(H, True)]))


def test_one_voters_flood_of_numbers_pushes_out_only_its_own():
    f = RelayFilter(NET, max_batches=4)
    honest = wire.sign_votes(KEYS[1], NET, 1, [(H, True)])
    f.add_votes(honest)
    for n in range(1, 50):
        f.add_votes(wire.sign_votes(KEYS[0], NET, n, [(H, True)]))
    assert f.votes_known(honest)
    assert f.votes_known(wire.sign_votes(KEYS[0], NET, 49, [(H, True)]))
    assert not f.votes_known(wire.sign_votes(KEYS[0], NET, 45, [(H, True)]))
