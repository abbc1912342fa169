"""Whole WebSocket messages from their frames (RFC 6455 5.4), text checked as UTF-8 (8.1).

websockets' sans-I/O protocol hands over frames as they arrive: a message sent in
several frames comes as a TEXT or BINARY frame without FIN and then CONT frames.
``MessageAssembler`` joins them, refuses a message that grows past its limit
(close 1009) and checks text as UTF-8 while it arrives, so that a bad byte in the
first fragment fails the connection (close 1007) without waiting for the rest.
The wallet port and the RPC's WebSocket both read their messages through it, and
both hand what websockets wants sent to their transport through ``drain``.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

from websockets.frames import Frame, Opcode

INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
PROTOCOL_ERROR = 1002

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def drain(ws: Any, write: Callable[[bytes], object]) -> bool:
    """Hand every chunk the sans-I/O protocol ``ws`` wants sent to ``write``; True
    when it also asked for the end of the stream (its empty chunk: half-close)."""
    eof = False
    for chunk in ws.data_to_send():
        if chunk:
            write(chunk)
        else:
            eof = True
    return eof


class MessageError(Exception):
    """The peer broke a message rule; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MessageAssembler:
    """Feed it every frame of one connection; it returns each complete data message.

    Invariant: between messages it holds nothing; during a fragmented one it holds
    the fragments so far, at most ``max_size`` bytes, and for text an incremental
    UTF-8 decoder (a few bytes of an unfinished character).  Once it has raised
    ``MessageError`` it is ``failed`` and returns nothing more: the connection is
    closing, and frames after the bad one are not messages.
    """

    __slots__ = ("_decoder", "_opcode", "_parts", "_size", "failed", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.failed = False
        self._opcode: Opcode | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._decoder: Any = None

    @property
    def buffered(self) -> int:
        """Bytes held of a message still arriving."""
        return self._size

    def feed(self, frame: Frame) -> tuple[Opcode, bytes] | None:
        """The message ``frame`` completes, as ``(TEXT or BINARY, payload)``, or None.

        Control frames (ping, pong, close) pass through as None: websockets answers
        them.  Raises ``MessageError`` for a message over ``max_size`` (1009), text
        that is not UTF-8 (1007), or fragments out of order (1002).
        """
        if self.failed:
            return None
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if self._opcode is not None:
                raise self._fail(PROTOCOL_ERROR, "expected a continuation frame")
            data = bytes(frame.data)
            if len(data) > self.max_size:
                raise self._fail(MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")
            if frame.fin:  # the usual case: one frame, one message
                if op is Opcode.TEXT:
                    try:
                        data.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise self._fail(INVALID_DATA, f"invalid UTF-8: {e.reason}") from None
                return op, data
            self._opcode = op
            self._decoder = _utf8_decoder() if op is Opcode.TEXT else None
            self._add(data, False)
            return None
        if op is not Opcode.CONT:
            return None
        if self._opcode is None:
            raise self._fail(PROTOCOL_ERROR, "unexpected continuation frame")
        data = bytes(frame.data)
        if self._size + len(data) > self.max_size:
            raise self._fail(MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")
        self._add(data, frame.fin)
        if not frame.fin:
            return None
        whole = (self._opcode, b"".join(self._parts))
        self._reset()
        return whole

    def _add(self, data: bytes, final: bool) -> None:
        if self._decoder is not None:
            try:
                # Only validity matters: the decoded text is dropped at once.
                self._decoder.decode(data, final)
            except UnicodeDecodeError as e:
                raise self._fail(INVALID_DATA, f"invalid UTF-8: {e.reason}") from None
        self._parts.append(data)
        self._size += len(data)

    def _fail(self, code: int, reason: str) -> MessageError:
        self._reset()
        self.failed = True
        return MessageError(code, reason)

    def _reset(self) -> None:
        self._opcode = None
        self._parts = []
        self._size = 0
        self._decoder = None
