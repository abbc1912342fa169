"""The ledger's rules as pure functions: no I/O, no state (SPEC 4.1, 4.3, 4.4).

What a transaction, a vote tally or a block must satisfy is decided here, from the
values the caller passes in (a lookup of the coins a transaction spends, the voting
set's size), so that the ledger, and next the peers, apply one set of rules.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, Literal

from nacl.signing import SigningKey

from timefast.crypto import NETWORK_PREFIX, WIRE_ADDRESS, address_of, public_key_hex, sha3
from timefast.errors import RequestError
from timefast.transaction import COIN, Transaction, TxOutput, txid_of

GENESIS_TIMESTAMP = 1764150000
GENESIS_SUPPLY = 21_000_000 * COIN
ZERO_HASH = "0" * 64
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
               producer: str) -> str:
    """hex SHA3-256 of the header: height u64 LE, prev_hash ASCII, timestamp i64 LE,
    txid count u32 LE, each txid ASCII, producer ASCII."""
    parts = [struct.pack("<Q", height), prev_hash.encode("ascii"),
             struct.pack("<qI", timestamp, len(txids))]
    parts.extend(t.encode("ascii") for t in txids)
    parts.append(producer.encode("ascii"))
    return sha3(b"".join(parts)).hex()


def check_block_header(block: Any, height: int, prev_hash: str, prev_timestamp: int
                       ) -> tuple[int, str, int, list[str], str]:
    """The header of ``block`` if it is the valid next block after
    ``(height - 1, prev_hash, prev_timestamp)``: ``(height, hash, timestamp, txids,
    producer)``; ``LedgerError(BAD_REQUEST)`` otherwise."""
    if not isinstance(block, dict):
        raise LedgerError("BAD_REQUEST", "a block is an object")
    h, digest, prev, ts = (block.get("height"), block.get("hash"), block.get("prev_hash"),
                           block.get("timestamp"))
    txids, producer = block.get("txids"), block.get("producer")
    if type(h) is not int or type(ts) is not int or not isinstance(producer, str):
        raise LedgerError("BAD_REQUEST", "block height, timestamp and producer are required")
    if not isinstance(txids, list) or not all(isinstance(t, str) for t in txids):
        raise LedgerError("BAD_REQUEST", "block txids must be a list of txids")
    if h != height:
        raise LedgerError("BAD_REQUEST", f"block {h} is not the next block ({height})")
    if prev != prev_hash:
        raise LedgerError("BAD_REQUEST", f"block {h} does not extend the tip {prev_hash}")
    if ts < prev_timestamp:
        raise LedgerError("BAD_REQUEST", f"block {h} is older than its parent")
    if len(set(txids)) != len(txids):
        raise LedgerError("BAD_REQUEST", f"block {h} names a transaction twice")
    if block_hash(h, prev, ts, txids, producer) != digest:
        raise LedgerError("BAD_REQUEST", f"block {h}: hash does not match its header")
    return h, digest, ts, txids, producer


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
