"""Keys, addresses, hashes and vote signatures in the upstream formats (SPEC 4.1, 4.3)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from timefast import _core

# Hex formats of the upstream wire format, shared by every module that checks them.
HEX64 = re.compile(r"[0-9a-fA-F]{64}")  # public keys
HEX128 = re.compile(r"[0-9a-fA-F]{128}")  # signatures
TXID = re.compile(r"[0-9a-f]{64}")  # txids: lowercase SHA3-256 hex
_KEY_RE = re.compile(r"MN([0-9a-fA-F]{64})")
# An address as the ledger writes it: a network's prefix and 40 hex of a public key.
NETWORK_PREFIX = {"mainnet": "TIME1", "testnet": "TIME0", "regtest": "TIME0"}
WIRE_ADDRESS = re.compile(r"TIME[01][0-9a-f]{40}")


class KeyFormatError(ValueError):
    """A key string that is not in the upstream format."""


def sha3(data: bytes) -> bytes:
    """SHA3-256 of ``data``."""
    return hashlib.sha3_256(data).digest()


def address_of(public_key_hex: str, network: str) -> str:
    """Address of a public key: ``TIME1`` on mainnet, ``TIME0`` elsewhere, + 40 hex."""
    return NETWORK_PREFIX[network] + public_key_hex[:40].lower()


def parse_private_key(text: str) -> SigningKey:
    """``MN`` + 64 hex (the upstream format) to a signing key."""
    m = _KEY_RE.fullmatch(text.strip())
    if m is None:
        raise KeyFormatError("a masternode key is 'MN' followed by 64 hex characters")
    return SigningKey(bytes.fromhex(m.group(1)))


def format_private_key(key: SigningKey) -> str:
    """A signing key in the upstream ``MN`` + 64 hex format."""
    return "MN" + bytes(key).hex()


def public_key_hex(key: SigningKey) -> str:
    """Hex of the 32-byte public key of ``key``."""
    return key.verify_key.encode().hex()


def new_key() -> SigningKey:
    """A fresh random signing key."""
    return SigningKey.generate()


def load_or_create_key(data_dir: Path, configured: str | None) -> SigningKey:
    """The node key: ``configured`` if given, else DATA_DIR/masternode.key (made once, 0600)."""
    if configured:
        return parse_private_key(configured)
    path = data_dir / "masternode.key"
    if path.exists():
        return parse_private_key(path.read_text())
    key = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(format_private_key(key) + "\n")
    return key


def is_public_key_hex(text: object) -> bool:
    """Whether ``text`` is 64 hex characters."""
    return isinstance(text, str) and HEX64.fullmatch(text) is not None


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """ed25519 verification; False for any bad key or signature."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def _verify_address() -> int:
    # libsodium as PyNaCl ships it (its cffi module exports the C symbols).
    import nacl._sodium

    lib = ctypes.CDLL(nacl._sodium.__file__)
    address = ctypes.cast(lib.crypto_sign_verify_detached, ctypes.c_void_p).value
    if not address:
        raise ImportError("libsodium's crypto_sign_verify_detached is not available")
    return int(address)


_VERIFY_FN = _verify_address()


def verify_batch(items: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """``verify`` of many ``(public key, message, signature)`` at once, the GIL
    released throughout (a thread can run it beside the event loop); one byte per
    item, 1 when good."""
    return _core.verify_many(_VERIFY_FN, items)


def vote_bytes(txid: str, approve: bool) -> bytes:
    """What a vote signs: ``b"TIMEVOTE" + txid ASCII + (01 approve | 00 against)``."""
    return b"TIMEVOTE" + txid.encode("ascii") + (b"\x01" if approve else b"\x00")


def sign_vote(key: SigningKey, txid: str, approve: bool) -> dict[str, object]:
    """A vote in the upstream JSON shape, signed by ``key``."""
    sig = key.sign(vote_bytes(txid, approve)).signature
    return {"txid": txid, "voter": public_key_hex(key), "approve": approve,
            "signature": sig.hex()}
