"""The ledger's rules as pure functions: no I/O, no state (SPEC 4.1, 4.3, 4.4, 7.5).

What a transaction, a vote tally or a block must satisfy is decided here, from the
values the caller passes in (a lookup of the coins a transaction spends, the voting
set's size), so that the ledger, and next the peers, apply one set of rules.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple

from nacl.signing import SigningKey

# Only the sans-I/O formats of the peer protocol: the signed layouts of vote batches
# and precommits are the peers' to define, their meaning for the chain is ours.
from timefast import wire
from timefast.crypto import NETWORK_PREFIX, TXID, WIRE_ADDRESS, address_of, public_key_hex, sha3
from timefast.errors import RequestError
from timefast.transaction import COIN, U32, Transaction, TxOutput, txid_of

GENESIS_TIMESTAMP = 1764150000
GENESIS_SUPPLY = 21_000_000 * COIN
ZERO_HASH = "0" * 64
# A block (SPEC 7.5): at most this many transactions, the coinbase included, and this
# many bytes of transactions in their upstream JSON encoding.
MAX_BLOCK_TXS = wire.MAX_BLOCK_TXS
MAX_BLOCK_BYTES = 4 << 20
# How far ahead of a validator's clock a proposed block's timestamp may be.
MAX_FUTURE_S = 30
# The regtest faucet's key is fixed so that anyone can spend from it on a private
# network: seed = SHA3-256(b"timefast regtest faucet").
FAUCET_SEED = sha3(b"timefast regtest faucet")
FAUCET_KEY = SigningKey(FAUCET_SEED)

# A lookup of a spent coin: ``(address, amount, state, spending_txid)`` or None when
# the outpoint is unknown.
CoinLookup = Callable[[str, int], "tuple[str, int, str, str | None] | None"]
# ``(public key, signed bytes, signature) -> good``.
SignatureCheck = Callable[[bytes, bytes, bytes], bool]
Decision = Literal["finalized", "rejected"] | None


class LedgerError(RequestError):
    """A request the ledger refuses (the ledger's kind of ``RequestError``, which the
    ports catch whatever refused it)."""


# -- addresses ----------------------------------------------------------------------


def check_address(address: object, network: str, what: str = "address") -> str:
    """An output address of ``network``, or ``LedgerError(INVALID_ADDRESS)``."""
    if not isinstance(address, str) or not WIRE_ADDRESS.fullmatch(address):
        raise LedgerError("INVALID_ADDRESS", f"{what} must be TIME0 or TIME1 + 40 hex")
    if not address.startswith(NETWORK_PREFIX[network]):
        raise LedgerError("INVALID_ADDRESS", f"{what} {address} is not a {network} address")
    return address


# -- votes ----------------------------------------------------------------------------


def quorum(n: int) -> int:
    """Approvals that finalize a transaction in a voting set of ``n``: ⌈2n/3⌉."""
    return math.ceil(2 * n / 3)


def faults(n: int) -> int:
    """Faulty masternodes a voting set of ``n`` tolerates: f = ⌊(n−1)/3⌋."""
    return (n - 1) // 3


def tally(approvals: int, rejections: int, n: int) -> Decision:
    """What the votes so far decide (SPEC 4.3, 7.4): finalized at quorum q; rejected
    once rejections exceed n − q + f; None while still open.

    Both can never hold for one transaction with at most f faulty voters: that would
    take q + (n − q + f + 1) = n + f + 1 votes from n voters, f + 1 of them signing
    both ways.  (n − q alone would let f equivocators reject what q approved.)"""
    q = quorum(n)
    if approvals >= q:
        return "finalized"
    if rejections > n - q + faults(n):
        return "rejected"
    return None


# -- transactions ------------------------------------------------------------------


def signed_bytes(tx: Transaction) -> bytes:
    """What every input of ``tx`` signs, once its txid is found to hash them;
    ``LedgerError(TX_INVALID)`` otherwise."""
    msg = tx.signing_bytes()  # what the txid hashes is what every input signs
    if txid_of(msg) != tx.txid:
        raise LedgerError("TX_INVALID", "txid does not match the transaction's contents")
    return msg


def check_transaction(tx: Transaction, msg: bytes, network: str, coin: CoinLookup,
                      good_signature: SignatureCheck) -> tuple[int, list[tuple[str, int]]]:
    """Check ``tx`` (whose signed bytes are ``msg``, see ``signed_bytes``) against the
    chain (SPEC 4.1); returns ``(fee, [(address, amount) of each input])``.

    Every cheap check (duplicate inputs, output addresses, each input known,
    Unspent and owned by its key, amounts) runs before the first signature check,
    so that a transaction of made-up inputs costs no signature work.  Raises
    ``LedgerError`` with ``TX_INVALID`` or ``TX_CONFLICT``.
    """
    ops = tx.outpoints()
    if len(set(ops)) != len(ops):
        raise LedgerError("TX_INVALID", "the same outpoint is spent twice")
    for o in tx.outputs:
        try:
            check_address(o.address, network, "output address")
        except LedgerError as e:
            raise LedgerError("TX_INVALID", e.message) from None
    total_in = 0
    spent = []
    for n, inp in enumerate(tx.inputs):
        found = coin(inp.prev_txid, inp.vout)
        if found is None:
            raise LedgerError("TX_INVALID", f"input {n} spends unknown outpoint "
                              f"{inp.prev_txid}:{inp.vout}")
        address, amount, state, spender = found
        if state != "Unspent":
            raise LedgerError("TX_CONFLICT", f"TX_CONFLICT: input {n} "
                              f"{inp.prev_txid}:{inp.vout} is already {state}"
                              + (f" by {spender}" if spender else ""))
        if address_of(inp.public_key, network) != address:
            raise LedgerError("TX_INVALID", f"input {n}: public key does not own {address}")
        total_in += amount
        spent.append((address, amount))
    total_out = sum(o.amount for o in tx.outputs)
    if total_out > total_in:
        raise LedgerError("TX_INVALID", f"outputs ({total_out}) exceed inputs ({total_in})")
    for n, inp in enumerate(tx.inputs):
        if not good_signature(bytes.fromhex(inp.public_key), msg,
                              bytes.fromhex(inp.signature)):
            raise LedgerError("TX_INVALID", f"input {n}: bad signature")
    return total_in - total_out, spent


# -- blocks ---------------------------------------------------------------------------


def block_hash(height: int, prev_hash: str, timestamp: int, txids: Sequence[str],
               producer: str, round_: int = 0) -> str:
    """hex SHA3-256 of the header: height u64 LE, prev_hash ASCII, timestamp i64 LE,
    txid count u32 LE, each txid ASCII, producer ASCII, then round u32 LE when it is
    not 0.

    A round-0 header hashes as headers did before rounds existed, so that the
    genesis (whose hash the network id binds) and every block of an older data
    directory keep their hashes.  The encoding stays unambiguous: above genesis the
    producer is exactly 64 hex characters, so the round's four bytes cannot be read
    as part of it."""
    parts = [struct.pack("<Q", height), prev_hash.encode("ascii"),
             struct.pack("<qI", timestamp, len(txids))]
    parts.extend(t.encode("ascii") for t in txids)
    parts.append(producer.encode("ascii"))
    if round_:
        parts.append(struct.pack("<I", round_))
    return sha3(b"".join(parts)).hex()


class Header(NamedTuple):
    """A block's header, checked (``check_block_header``)."""

    height: int
    hash: str
    prev_hash: str
    timestamp: int
    txids: list[str]
    producer: str
    round: int


def check_block_header(block: Any, height: int, prev_hash: str, prev_timestamp: int,
                       now: float | None = None) -> Header:
    """The header of ``block`` if it is a valid next block after ``(height - 1,
    prev_hash, prev_timestamp)``: its hash matches, its timestamp is an integer not
    before its parent's (and, when ``now`` is given, at most ``MAX_FUTURE_S``
    ahead of it), it names each transaction once and at most ``MAX_BLOCK_TXS``;
    ``LedgerError(BAD_REQUEST)`` otherwise.  A header without ``round`` (a block
    stored before rounds) is round 0."""
    if not isinstance(block, dict):
        raise LedgerError("BAD_REQUEST", "a block is an object")
    h, digest, prev, ts = (block.get("height"), block.get("hash"), block.get("prev_hash"),
                           block.get("timestamp"))
    txids, producer, round_ = block.get("txids"), block.get("producer"), block.get("round", 0)
    if type(h) is not int or type(ts) is not int or type(round_) is not int:
        raise LedgerError("BAD_REQUEST", "block height, timestamp and round must be integers")
    if not isinstance(producer, str) or not TXID.fullmatch(producer):
        raise LedgerError("BAD_REQUEST", "block producer must be a public key "
                          "(64 lowercase hex characters)")
    if not 0 <= round_ <= U32:
        raise LedgerError("BAD_REQUEST", f"block round {round_} is out of range")
    if not isinstance(txids, list) or not all(isinstance(t, str) for t in txids):
        raise LedgerError("BAD_REQUEST", "block txids must be a list of txids")
    if h != height:
        raise LedgerError("BAD_REQUEST", f"block {h} is not the next block ({height})")
    if prev != prev_hash:
        raise LedgerError("BAD_REQUEST", f"block {h} does not extend the tip {prev_hash}")
    if ts < prev_timestamp:
        raise LedgerError("BAD_REQUEST", f"block {h} is older than its parent")
    if now is not None and ts > now + MAX_FUTURE_S:
        raise LedgerError("BAD_REQUEST", f"block {h}: timestamp {ts} is more than "
                          f"{MAX_FUTURE_S} s ahead of this node's clock")
    if len(txids) > MAX_BLOCK_TXS:
        raise LedgerError("BAD_REQUEST", f"block {h} holds {len(txids)} transactions "
                          f"(at most {MAX_BLOCK_TXS})")
    if len(set(txids)) != len(txids):
        raise LedgerError("BAD_REQUEST", f"block {h} names a transaction twice")
    if block_hash(h, prev, ts, txids, producer, round_) != digest:
        raise LedgerError("BAD_REQUEST", f"block {h}: hash does not match its header")
    return Header(h, digest, prev, ts, txids, producer, round_)


def proposer(masternodes: Iterable[str], height: int, round_: int) -> str:
    """The proposer of (height, round): ``sorted(MASTERNODES)[(h + r) mod n]``
    (SPEC 7.5), the producer of a block first made in that round."""
    voters = sorted(set(masternodes))
    return voters[(height + round_) % len(voters)]


def coinbase(network: str, height: int, timestamp: int, producer: str,
             fees: int) -> Transaction | None:
    """The coinbase of a block (SPEC 7.5): no inputs, ``lock_time`` the height,
    ``timestamp`` the block's, one output paying ``fees`` to ``producer``'s
    address; None when the fees are zero (fees are never burned, and a zero output
    would be invalid)."""
    if fees <= 0:
        return None
    tx = Transaction("", 1, (), (TxOutput(fees, address_of(producer, network)),),
                     height, timestamp)
    return Transaction(tx.compute_txid(), 1, (), tx.outputs, height, timestamp)


def check_coinbase(txs: Sequence[Transaction], header: Header, fees: int,
                   network: str) -> bool:
    """Whether ``txs`` (a block's, in order) start with exactly the coinbase that pays
    ``fees`` (the sum of the others' fees) to the header's producer; raises
    ``LedgerError(BAD_REQUEST)`` for a missing, wrong or greedy one, or a
    transaction without inputs anywhere else.  True when there is a coinbase."""
    want = coinbase(network, header.height, header.timestamp, header.producer, fees)
    has = bool(txs) and not txs[0].inputs
    if any(not t.inputs for t in txs[1:]):
        raise LedgerError("BAD_REQUEST", f"block {header.height}: only its first "
                          "transaction may be a coinbase")
    if want is None:
        if has:
            raise LedgerError("BAD_REQUEST", f"block {header.height}: a coinbase without "
                              "fees to pay (it pays "
                              f"{sum(o.amount for o in txs[0].outputs)})")
        return False
    if not has:
        raise LedgerError("BAD_REQUEST", f"block {header.height}: no coinbase for its "
                          f"fees of {fees}")
    if txs[0] != want:
        paid = sum(o.amount for o in txs[0].outputs)
        raise LedgerError("BAD_REQUEST", f"block {header.height}: the coinbase must pay "
                          f"exactly the fees ({fees}) to the producer's address "
                          f"{want.outputs[0].address} at lock_time {header.height} and "
                          f"the block's timestamp; it pays {paid}")
    return True


def check_block_body(txs: Sequence[Transaction], sizes: Sequence[int],
                     header: Header) -> None:
    """The transactions of a block against its header: they are the ``txids`` in
    order, at most ``MAX_BLOCK_BYTES`` in all (``sizes``: each one's upstream JSON
    encoding), and a transaction that spends another of the block comes after it
    (parents before children); ``LedgerError(BAD_REQUEST)`` otherwise."""
    if [t.txid for t in txs] != header.txids:
        raise LedgerError("BAD_REQUEST", f"block {header.height}: its transactions do "
                          "not match its txids")
    total = sum(sizes)
    if total > MAX_BLOCK_BYTES:
        raise LedgerError("BAD_REQUEST", f"block {header.height} holds {total} bytes of "
                          f"transactions (at most {MAX_BLOCK_BYTES})")
    position = {t.txid: n for n, t in enumerate(txs)}
    for n, tx in enumerate(txs):
        for inp in tx.inputs:
            if position.get(inp.prev_txid, -1) >= n:
                raise LedgerError("BAD_REQUEST", f"block {header.height}: transaction "
                                  f"{tx.txid} spends {inp.prev_txid}, which does not "
                                  "come before it")


# -- certificates -------------------------------------------------------------------


def check_certificates(txids: Iterable[str], batches: Iterable[wire.Votes],
                       network_id: bytes, masternodes: Sequence[str], quorum: int
                       ) -> dict[str, set[str]]:
    """The finality certificates of ``txids`` (a block's transactions but its
    coinbase): each needs approvals from ``quorum`` distinct keys of ``masternodes``
    among the signed vote ``batches``.  Returns the approving keys of each txid;
    raises ``LedgerError(BAD_REQUEST)`` naming a transaction short of quorum, or a
    batch that is signed by no masternode or whose signature does not verify.

    Only batches that approve one of ``txids`` are checked (one signature each, a
    batch repeated is checked once); a voter's rejection elsewhere does not take its
    approval away (SPEC 7.4: an equivocator's signatures count)."""
    want: dict[str, set[str]] = {t: set() for t in txids}
    voting = set(masternodes)
    seen: set[tuple[str, int, str]] = set()
    for batch in batches:
        key = (batch.voter, batch.batch, batch.signature)
        if key in seen or not any(ok and t in want for t, ok in batch.votes):
            continue
        seen.add(key)
        if batch.voter not in voting:
            raise LedgerError("BAD_REQUEST", f"a certificate's vote batch is signed by "
                              f"{batch.voter}, not a masternode")
        try:
            wire.verify_votes(batch, network_id)
        except wire.BadSignature:
            raise LedgerError("BAD_REQUEST", f"vote batch {batch.batch} of {batch.voter}: "
                              "bad signature") from None
        for t, ok in batch.votes:
            if ok and t in want:
                want[t].add(batch.voter)
    for t, voters in want.items():
        if len(voters) < quorum:
            raise LedgerError("BAD_REQUEST", f"transaction {t} is not finalized: its "
                              f"certificate holds {len(voters)} of {quorum} approvals")
    return want


def check_commit(block: wire.Block, network_id: bytes, masternodes: Sequence[str],
                 quorum: int) -> list[str]:
    """The voters of ``block``'s commit if it holds ``quorum`` distinct precommits of
    ``masternodes`` for the block's height and hash in one round (SPEC 7.5); raises
    ``LedgerError(BAD_REQUEST)`` for a missing or short commit, a signature that does
    not verify, or one of a key outside the voting set."""
    commit = block.commit or ()
    voting = set(masternodes)
    for c in commit:
        if c.voter not in voting:
            raise LedgerError("BAD_REQUEST", f"block {block.height}: its commit holds a "
                              f"precommit of {c.voter}, not a masternode")
    try:
        wire.verify_commit(block, network_id)
    except wire.BadSignature:
        raise LedgerError("BAD_REQUEST", f"block {block.height}: a precommit of its "
                          "commit does not verify for its height and hash") from None
    by_round: dict[int, set[str]] = {}
    for c in commit:
        by_round.setdefault(c.round, set()).add(c.voter)
    best = max(by_round.values(), key=len, default=set())
    if len(best) < quorum:
        raise LedgerError("BAD_REQUEST", f"block {block.height}: its commit holds "
                          f"{len(best)} of {quorum} precommits in one round")
    return sorted(best)


def parse_commit(commit: Any, height: int) -> tuple[wire.CommitSig, ...]:
    """A block's ``commit`` (``[{voter, round, signature}]``) as typed entries;
    ``LedgerError(BAD_REQUEST)`` when it does not parse."""
    if not isinstance(commit, list):
        raise LedgerError("BAD_REQUEST", f"block {height}: commit must be a list of "
                          "{voter, round, signature}")
    try:
        return tuple(wire.CommitSig.from_data(c, f"commit[{n}]")
                     for n, c in enumerate(commit))
    except wire.ParseError as e:
        raise LedgerError("BAD_REQUEST", f"block {height}: {e}") from None


def genesis_transaction(network: str) -> Transaction | None:
    """Regtest's genesis pays the whole supply to the faucet; other networks have none."""
    if network != "regtest":
        return None
    faucet = address_of(public_key_hex(FAUCET_KEY), network)
    tx = Transaction("", 1, (), (TxOutput(GENESIS_SUPPLY, faucet),), 0, GENESIS_TIMESTAMP)
    return Transaction(tx.compute_txid(), 1, (), tx.outputs, 0, GENESIS_TIMESTAMP)


def genesis_hash(network: str) -> str:
    """The hash of ``network``'s genesis block."""
    gtx = genesis_transaction(network)
    return block_hash(0, ZERO_HASH, GENESIS_TIMESTAMP, [gtx.txid] if gtx else [], "")
