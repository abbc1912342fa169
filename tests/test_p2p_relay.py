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


def test_two_batches_under_one_number_are_equivocation_evidence():
    f = RelayFilter(NET)
    first = wire.sign_votes(KEYS[0], NET, 7, [(H, True)])
    second = wire.sign_votes(KEYS[0], NET, 7, [(H, False)])
    f.add_votes(first)
    new, evidence = f.add_votes(second)
    assert new  # relayed too, so that every node sees both
    assert evidence == Equivocation(PUBS[0], 7, first, second)
    # The evidence is both signed batches: anyone can check it.
    wire.verify_votes(evidence.first, NET)
    wire.verify_votes(evidence.second, NET)
    assert evidence.first.content_hash(NET) != evidence.second.content_hash(NET)
    assert f.add_votes(second) == (False, None)
    third = wire.sign_votes(KEYS[0], NET, 7, [(H, True), ("01" * 32, True)])
    assert f.add_votes(third) == (True, Equivocation(PUBS[0], 7, first, third))
