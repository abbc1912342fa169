"""The sealed stream of a peer link (SPEC 7.2): X25519 ephemerals, ``crypto_kx``
session keys, and libsodium's ``crypto_secretstream_xchacha20poly1305`` each way.

Sans-I/O and stateful per direction: ``Sealer`` pushes messages with this side's
transmit key (its first output, the 24-byte stream header, is sent before any
message); ``Opener`` pulls the peer's stream from its header on. The stream numbers
its messages itself, so a frame replayed, dropped, reordered or from another link does
not open; a link whose frame does not open is closed.
"""

from __future__ import annotations

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

HEADER_BYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
OVERHEAD = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17 per message
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE


class NotOpened(Exception):
    """A sealed frame that does not open (wrong key, altered, replayed, reordered)."""


def ephemeral_keypair(seed: bytes | None = None) -> tuple[bytes, bytes]:
    """A fresh X25519 ``(public, secret)`` pair for one connection (from ``seed``
    only for known-answer tests)."""
    if seed is not None:
        return sodium.crypto_kx_seed_keypair(seed)
    return sodium.crypto_kx_keypair()


def session_keys(dialler: bool, ephemeral: bytes, ephemeral_secret: bytes,
                 peer_ephemeral: bytes) -> tuple[bytes, bytes]:
    """``(receive key, transmit key)`` from the X25519 exchange, the dialler as
    ``crypto_kx`` client. The dialler's transmit key is the acceptor's receive key."""
    if dialler:
        rx, tx = sodium.crypto_kx_client_session_keys(ephemeral, ephemeral_secret,
                                                      peer_ephemeral)
    else:
        rx, tx = sodium.crypto_kx_server_session_keys(ephemeral, ephemeral_secret,
                                                      peer_ephemeral)
    return rx, tx


class Sealer:
    """This side's stream: ``header`` goes first, then ``seal(message)`` per frame."""

    def __init__(self, key: bytes) -> None:
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        self.header: bytes = sodium.crypto_secretstream_xchacha20poly1305_init_push(
            self._state, key)

    def seal(self, message: bytes) -> bytes:
        """The next frame of the stream, holding ``message`` (tag ``MESSAGE``)."""
        return sodium.crypto_secretstream_xchacha20poly1305_push(
            self._state, message, None, _TAG_MESSAGE)


class Opener:
    """The peer's stream, from its header on."""

    def __init__(self, key: bytes, header: bytes) -> None:
        """Raises ``NotOpened`` for a header of the wrong size."""
        if len(header) != HEADER_BYTES:
            raise NotOpened(f"a stream header is {HEADER_BYTES} bytes, not {len(header)}")
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)

    def open(self, frame: bytes) -> bytes:
        """The message in the stream's next frame; ``NotOpened`` if it does not
        authenticate or carries another tag than ``MESSAGE``."""
        if len(frame) < OVERHEAD:
            raise NotOpened("frame shorter than its seal")
        try:
            message, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                self._state, frame, None)
        except (CryptoError, RuntimeError, ValueError):
            raise NotOpened("frame does not open") from None
        if tag != _TAG_MESSAGE:
            raise NotOpened(f"frame with stream tag {tag}, expected MESSAGE")
        return bytes(message)
