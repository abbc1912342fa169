"""Transactions in the upstream JSON format: parsing, signing bytes, txid (SPEC 4.1).

This module knows the shape of a transaction and how to sign it; whether its inputs
exist and may be spent is the ledger's business.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson
from nacl.signing import SigningKey

from timefast.crypto import HEX64, HEX128, TXID, public_key_hex, sha3

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
MAX_TX_BYTES = 100_000
COIN = 100_000_000  # units of 10^-8 TIME in one TIME

ADDRESS_RE = re.compile(r"[A-Za-z0-9_]{1,128}")


class TxFormatError(ValueError):
    """A transaction that is not well formed; the message says what is wrong."""


def txid_of(signing_bytes: bytes) -> str:
    """The txid of a transaction with these signing bytes (SPEC 4.1)."""
    return sha3(sha3(signing_bytes)).hex()


@dataclass(frozen=True, slots=True)
class TxInput:
    """One input: the outpoint it spends, the key that owns it and its signature."""

    prev_txid: str
    vout: int
    public_key: str
    signature: str
    sequence: int = U32


@dataclass(frozen=True, slots=True)
class TxOutput:
    """One output: an amount in 10^-8 TIME to an address."""

    amount: int
    address: str


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transaction; ``txid`` is as given (the ledger checks it matches)."""

    txid: str
    version: int
    inputs: tuple[TxInput, ...]
    outputs: tuple[TxOutput, ...]
    lock_time: int
    timestamp: int

    def signing_bytes(self) -> bytes:
        """The bytes that the txid hashes and every input signs (SPEC 4.1)."""
        parts = [struct.pack("<II", self.version, len(self.inputs))]
        for i in self.inputs:
            parts.append(i.prev_txid.encode("ascii"))
            parts.append(struct.pack("<I", i.vout))
            parts.append(bytes.fromhex(i.public_key))
            parts.append(struct.pack("<I", i.sequence))
        parts.append(struct.pack("<I", len(self.outputs)))
        for o in self.outputs:
            parts.append(struct.pack("<Q", o.amount))
            parts.append(o.address.encode("ascii"))
        parts.append(struct.pack("<Iq", self.lock_time, self.timestamp))
        return b"".join(parts)

    def compute_txid(self) -> str:
        """hex(SHA3-256(SHA3-256(signing bytes)))."""
        return txid_of(self.signing_bytes())

    def to_json(self) -> dict[str, Any]:
        """The upstream JSON object."""
        return {
            "txid": self.txid,
            "version": self.version,
            "inputs": [
                {"previous_output": {"txid": i.prev_txid, "vout": i.vout},
                 "public_key": i.public_key, "signature": i.signature,
                 "sequence": i.sequence}
                for i in self.inputs
            ],
            "outputs": [{"amount": o.amount, "address": o.address} for o in self.outputs],
            "lock_time": self.lock_time,
            "timestamp": self.timestamp,
        }

    def outpoints(self) -> list[tuple[str, int]]:
        """The outpoints the inputs spend, in order."""
        return [(i.prev_txid, i.vout) for i in self.inputs]

    def addresses(self) -> list[str]:
        """Output addresses (input addresses are known only to the ledger)."""
        return [o.address for o in self.outputs]


def _int(obj: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    v = obj.get(key)
    if type(v) is not int:
        raise TxFormatError(f"{where}{key} must be an integer")
    if not lo <= v <= hi:
        raise TxFormatError(f"{where}{key} out of range")
    return v


def parse(obj: Any) -> Transaction:
    """Parse the upstream JSON object; raises ``TxFormatError`` naming the fault."""
    if not isinstance(obj, dict):
        raise TxFormatError("tx must be an object")
    txid = obj.get("txid")
    if not isinstance(txid, str) or not TXID.fullmatch(txid):
        raise TxFormatError("txid must be 64 lowercase hex characters")
    ins = obj.get("inputs")
    outs = obj.get("outputs")
    if not isinstance(ins, list) or not isinstance(outs, list):
        raise TxFormatError("inputs and outputs must be arrays")
    if not ins:
        raise TxFormatError("a transaction needs at least one input")
    if not outs:
        raise TxFormatError("a transaction needs at least one output")
    inputs = []
    for n, i in enumerate(ins):
        where = f"inputs[{n}]."
        if not isinstance(i, dict) or not isinstance(i.get("previous_output"), dict):
            raise TxFormatError(f"{where}previous_output must be an object")
        po = i["previous_output"]
        ptxid = po.get("txid")
        if not isinstance(ptxid, str) or not TXID.fullmatch(ptxid):
            raise TxFormatError(f"{where}previous_output.txid must be 64 lowercase hex")
        vout = _int(po, "vout", 0, U32, f"{where}previous_output.")
        pk = i.get("public_key")
        if not isinstance(pk, str) or not HEX64.fullmatch(pk):
            raise TxFormatError(f"{where}public_key must be 64 hex characters")
        sig = i.get("signature")
        if not isinstance(sig, str) or not HEX128.fullmatch(sig):
            raise TxFormatError(f"{where}signature must be 128 hex characters")
        seq = _int(i, "sequence", 0, U32, where) if "sequence" in i else U32
        inputs.append(TxInput(ptxid, vout, pk.lower(), sig.lower(), seq))
    outputs = []
    for n, o in enumerate(outs):
        where = f"outputs[{n}]."
        if not isinstance(o, dict):
            raise TxFormatError(f"{where[:-1]} must be an object")
        amount = _int(o, "amount", 1, U64, where)
        addr = o.get("address")
        if not isinstance(addr, str) or not ADDRESS_RE.fullmatch(addr):
            raise TxFormatError(f"{where}address must be 1-128 characters of [A-Za-z0-9_]")
        outputs.append(TxOutput(amount, addr))
    tx = Transaction(
        txid=txid,
        version=_int(obj, "version", 0, U32, ""),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        lock_time=_int(obj, "lock_time", 0, U32, "") if "lock_time" in obj else 0,
        timestamp=_int(obj, "timestamp", I64_MIN, I64_MAX, ""),
    )
    if len(orjson.dumps(tx.to_json())) > MAX_TX_BYTES:
        raise TxFormatError(f"transaction larger than {MAX_TX_BYTES} bytes")
    return tx


def build(inputs: list[tuple[str, int, SigningKey]], outputs: list[tuple[str, int]],
          timestamp: int, lock_time: int = 0, version: int = 1,
          sequence: int = U32) -> Transaction:
    """A signed transaction spending ``(txid, vout, key)`` to ``(address, amount)``."""
    unsigned = Transaction(
        txid="",
        version=version,
        inputs=tuple(TxInput(t, v, public_key_hex(k), "", sequence) for t, v, k in inputs),
        outputs=tuple(TxOutput(amount, addr) for addr, amount in outputs),
        lock_time=lock_time,
        timestamp=timestamp,
    )
    msg = unsigned.signing_bytes()
    signed = tuple(
        TxInput(i.prev_txid, i.vout, i.public_key, k.sign(msg).signature.hex(), i.sequence)
        for i, (_, _, k) in zip(unsigned.inputs, inputs, strict=True)
    )
    txid = sha3(sha3(msg)).hex()
    return Transaction(txid, version, signed, unsigned.outputs, lock_time, timestamp)
