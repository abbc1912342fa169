"""The ledger's pure rules for blocks (SPEC 4.4, 7.5): the header's hash with its
round, the coinbase, a block's body, finality certificates and commits."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from timefast import crypto, wire
from timefast.rules import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    MAX_FUTURE_S,
    Header,
    LedgerError,
    block_hash,
    check_block_body,
    check_block_header,
    check_certificates,
    check_coinbase,
    check_commit,
    coinbase,
    faults,
    genesis_hash,
    parse_commit,
    proposer,
    quorum,
)
from timefast.transaction import build

from .helpers import new_wallet

KEYS = [crypto.new_key() for _ in range(4)]
PUBS = [crypto.public_key_hex(k) for k in KEYS]
NET = wire.network_id("cd" * 32, PUBS)
TIP = "ef" * 32


def _header(txids=(), ts=1_800_000_000, round_=0, producer=PUBS[0], height=5):
    txids = list(txids)
    h = block_hash(height, TIP, ts, txids, producer, round_)
    return {"height": height, "prev_hash": TIP, "timestamp": ts, "txids": txids,
            "producer": producer, "round": round_, "hash": h}


# -- the header ----------------------------------------------------------------------

def test_a_round_0_header_hashes_as_before_rounds_and_genesis_keeps_its_hash():
    # The genesis hash (bound by the network id) and the blocks of older data
    # directories are those of the layout without round.
    assert genesis_hash("regtest") == \
        "ab0bff97ca2868133082a0446d140253a4a015bae02b8648f8722b4b37726eb0"
    txids = ["aa" * 32, "bb" * 32]
    old = (struct.pack("<Q", 7) + TIP.encode() + struct.pack("<qI", 99, 2)
           + b"".join(t.encode() for t in txids) + PUBS[0].encode())
    assert block_hash(7, TIP, 99, txids, PUBS[0]) == crypto.sha3(old).hex()
    assert block_hash(7, TIP, 99, txids, PUBS[0], 0) == crypto.sha3(old).hex()
    # Any other round is hashed after the producer, u32 LE: it changes the hash.
    assert block_hash(7, TIP, 99, txids, PUBS[0], 3) == \
        crypto.sha3(old + struct.pack("<I", 3)).hex()


def test_the_header_is_checked_field_by_field():
    good = _header()
    assert check_block_header(good, 5, TIP, 1_800_000_000) == Header(
        5, good["hash"], TIP, 1_800_000_000, [], PUBS[0], 0)
    # Without round: a block from before rounds, round 0.
    legacy = {k: v for k, v in good.items() if k != "round"}
    assert check_block_header(legacy, 5, TIP, 0).round == 0
    for bad, words in [
        (good | {"round": 1}, "hash does not match"),
        (_header(round_=2), None),
        (good | {"producer": PUBS[0].upper()}, "producer must be a public key"),
        (good | {"round": -1}, "out of range"),
        (good | {"round": "0"}, "must be integers"),
    ]:
        if words is None:
            assert check_block_header(bad, 5, TIP, 0).round == 2
            continue
        with pytest.raises(LedgerError, match=words):
            check_block_header(bad, 5, TIP, 0)


def test_a_timestamp_may_be_at_most_30_s_ahead_of_the_validators_clock():
    now = 1_800_000_000
    check_block_header(_header(ts=now + MAX_FUTURE_S), 5, TIP, 0, now)
    with pytest.raises(LedgerError, match="ahead of this node's clock"):
        check_block_header(_header(ts=now + MAX_FUTURE_S + 1), 5, TIP, 0, now)
    # Without a clock (a committed block) only the parent's timestamp bounds it.
    check_block_header(_header(ts=now + 3600), 5, TIP, 0)
    with pytest.raises(LedgerError, match="older than its parent"):
        check_block_header(_header(ts=now), 5, TIP, now + 1)


def test_a_block_holds_at_most_10000_transactions():
    txids = [f"{n:064x}" for n in range(MAX_BLOCK_TXS + 1)]
    check_block_header(_header(txids[:-1]), 5, TIP, 0)
    with pytest.raises(LedgerError, match="at most 10000"):
        check_block_header(_header(txids), 5, TIP, 0)


@pytest.mark.parametrize(
    ("n", "q", "f"),
    [(1, 1, 0), (2, 2, 0), (3, 2, 0), (4, 3, 1), (5, 4, 1), (6, 4, 1), (7, 5, 2),
     (8, 6, 2), (9, 6, 2), (10, 7, 3), (100, 67, 33)],
)
def test_quorum_is_two_thirds_rounded_up(n: int, q: int, f: int) -> None:
    # The one definition of q and f: finality votes and consensus rounds both count
    # with them.
    assert quorum(n) == q and faults(n) == f
    # Two quorums share an honest validator, and the honest alone make a quorum.
    assert 2 * q - n >= f + 1 and n - f >= q


def test_the_proposer_rotates_over_the_sorted_voting_set():
    ordered = sorted(PUBS)
    assert [proposer(PUBS, h, r) for h, r in [(0, 0), (1, 0), (1, 1), (2, 3), (7, 0)]] == \
        [ordered[0], ordered[1], ordered[2], ordered[1], ordered[3]]
    assert proposer(reversed(PUBS), 1, 0) == ordered[1]


# -- coinbase and body -------------------------------------------------------------------

def test_the_coinbase_pays_exactly_the_fees_to_the_producer():
    cb = coinbase("regtest", 5, 1_800_000_000, PUBS[0], 250)
    assert cb is not None and cb.inputs == () and cb.lock_time == 5
    assert cb.timestamp == 1_800_000_000 and cb.txid == cb.compute_txid()
    assert [(o.address, o.amount) for o in cb.outputs] == [
        (crypto.address_of(PUBS[0], "regtest"), 250)]
    assert coinbase("regtest", 5, 1_800_000_000, PUBS[0], 0) is None
    # One coinbase per height: the lock_time tells two of the same fees apart.
    assert coinbase("regtest", 6, 1_800_000_000, PUBS[0], 250).txid != cb.txid


def _paying(fee_paid=100):
    key, addr = new_wallet()
    return build([("aa" * 32, 0, key)], [(addr, 1000 - fee_paid)], timestamp=1)


def test_check_coinbase_refuses_a_greedy_missing_misdirected_or_misplaced_one():
    spend = _paying()
    head = Header(5, "", TIP, 1_800_000_000, [], PUBS[0], 0)
    right = coinbase("regtest", 5, head.timestamp, PUBS[0], 100)
    assert check_coinbase([right, spend], head, 100, "regtest") is True
    assert check_coinbase([spend], head, 0, "regtest") is False
    greedy = coinbase("regtest", 5, head.timestamp, PUBS[0], 101)
    elsewhere = coinbase("regtest", 5, head.timestamp, PUBS[1], 100)
    late = coinbase("regtest", 4, head.timestamp, PUBS[0], 100)
    for txs, fees, words in [
        ([greedy, spend], 100, "must pay exactly the fees"),
        ([elsewhere, spend], 100, "must pay exactly the fees"),
        ([late, spend], 100, "must pay exactly the fees"),
        ([spend], 100, "no coinbase for its fees of 100"),
        ([right, spend], 0, "a coinbase without fees"),
        ([spend, right], 100, "only its first transaction may be a coinbase"),
    ]:
        with pytest.raises(LedgerError, match=words):
            check_coinbase(txs, head, fees, "regtest")


def test_check_block_body_wants_the_txids_in_order_the_size_limit_and_parents_first():
    key, addr = new_wallet()
    parent = build([("aa" * 32, 0, key)], [(addr, 900)], timestamp=1)
    child = build([(parent.txid, 0, key)], [(addr, 800)], timestamp=2)
    head = Header(5, "", TIP, 0, [parent.txid, child.txid], PUBS[0], 0)
    check_block_body([parent, child], [10, 10], head)
    with pytest.raises(LedgerError, match="do not match its txids"):
        check_block_body([child, parent], [10, 10], head)
    with pytest.raises(LedgerError, match="does not come before it"):
        check_block_body([child, parent], [10, 10], head._replace(
            txids=[child.txid, parent.txid]))
    with pytest.raises(LedgerError, match=f"at most {MAX_BLOCK_BYTES}"):
        check_block_body([parent, child], [MAX_BLOCK_BYTES, 1], head)


# -- certificates and commits --------------------------------------------------------------

def test_a_certificate_is_q_approvals_of_distinct_masternodes():
    q = quorum(len(PUBS))
    t1, t2 = "11" * 32, "22" * 32
    batches = [wire.sign_votes(KEYS[0], NET, 1, [(t1, True), (t2, True)]),
               wire.sign_votes(KEYS[1], NET, 4, [(t1, True)]),
               wire.sign_votes(KEYS[1], NET, 5, [(t2, True)]),
               wire.sign_votes(KEYS[2], NET, 9, [(t1, True), (t2, False)])]
    got = check_certificates([t1], batches, NET, PUBS, q)
    assert got == {t1: set(PUBS[:3])}
    # t2: two approvals, one rejection: short of quorum, and said so.
    with pytest.raises(LedgerError, match=f"{t2} is not finalized: its certificate "
                       f"holds 2 of {q} approvals"):
        check_certificates([t1, t2], batches, NET, PUBS, q)
    # The same voter's approvals in several batches count once.
    again = wire.sign_votes(KEYS[0], NET, 2, [(t2, True)])
    with pytest.raises(LedgerError, match="holds 2 of"):
        check_certificates([t2], [*batches, again], NET, PUBS, q)
    # Nothing to certify: no batch needed.
    assert check_certificates([], [], NET, PUBS, q) == {}


def test_a_certificate_with_a_forged_or_foreign_batch_is_refused():
    q = quorum(len(PUBS))
    t = "33" * 32
    good = [wire.sign_votes(k, NET, 1, [(t, True)]) for k in KEYS[:3]]
    check_certificates([t], good, NET, PUBS, q)
    forged = replace(good[0], votes=((t, True), ("44" * 32, True)))
    with pytest.raises(LedgerError, match="bad signature"):
        check_certificates([t], [forged, *good[1:]], NET, PUBS, q)
    other_net = [wire.sign_votes(k, wire.network_id("00" * 32, PUBS), 1, [(t, True)])
                 for k in KEYS[:3]]
    with pytest.raises(LedgerError, match="bad signature"):
        check_certificates([t], other_net, NET, PUBS, q)
    stranger = wire.sign_votes(crypto.new_key(), NET, 1, [(t, True)])
    with pytest.raises(LedgerError, match="not a masternode"):
        check_certificates([t], [stranger, *good], NET, PUBS, q)


def _wire_block(round_=0, commit_keys=(), commit_round=None, hash_=None):
    head = _header(round_=round_)
    head["hash"] = hash_ or head["hash"]
    block = wire.Block(head["height"], TIP, head["timestamp"], (), PUBS[0], round_,
                       head["hash"], ())
    r = round_ if commit_round is None else commit_round
    sigs = tuple(
        wire.CommitSig(crypto.public_key_hex(k), r, k.sign(wire.bft_bytes(
            NET, wire.STEP_PRECOMMIT, block.height, r, block.hash)).signature.hex())
        for k in commit_keys)
    return replace(block, commit=sigs)


def test_a_commit_is_q_valid_precommits_of_the_voting_set_in_one_round():
    q = quorum(len(PUBS))
    assert check_commit(_wire_block(0, KEYS[:3]), NET, PUBS, q) == sorted(PUBS[:3])
    # A later round's commit; a precommit in another round than the others may be
    # kept but does not count towards the quorum of that round.
    assert check_commit(_wire_block(2, KEYS, commit_round=5), NET, PUBS, q) == sorted(PUBS)
    split = _wire_block(0, KEYS[:2])
    late = _wire_block(0, KEYS[2:3], commit_round=1)
    with pytest.raises(LedgerError, match=f"holds 2 of {q} precommits in one round"):
        check_commit(replace(split, commit=split.commit + late.commit), NET, PUBS, q)
    for block, words in [
        (_wire_block(0, KEYS[:2]), f"holds 2 of {q}"),
        (_wire_block(0, ()), f"holds 0 of {q}"),
        (replace(_wire_block(0, KEYS[:3]), commit=None), f"holds 0 of {q}"),
        # One voter three times is one precommit.
        (replace(_wire_block(0, KEYS[:1]), commit=_wire_block(0, KEYS[:1]).commit * 3),
         f"holds 1 of {q}"),
        (_wire_block(0, [*KEYS[:2], crypto.new_key()]), "not a masternode"),
        # Signed for another hash: these precommits do not commit this block.
        (replace(_wire_block(0, KEYS[:3]), hash=_header(ts=1)["hash"]), "does not verify"),
    ]:
        with pytest.raises(LedgerError, match=words):
            check_commit(block, NET, PUBS, q)


def test_a_commit_that_does_not_parse_is_refused_with_the_reason():
    with pytest.raises(LedgerError, match="commit must be a list"):
        parse_commit({"voter": PUBS[0]}, 3)
    with pytest.raises(LedgerError, match=r"commit\[0\]"):
        parse_commit([{"voter": PUBS[0], "round": 0}], 3)
    good = {"voter": PUBS[0], "round": 1, "signature": "ab" * 64}
    assert parse_commit([good], 3) == (wire.CommitSig(PUBS[0], 1, "ab" * 64),)
