"""Message reassembly and UTF-8 checks (timefast/fragments.py), alone and on the wire.

The Autobahn testsuite cannot run here (it needs Docker or Python 2), so its groups 5
(fragmentation) and 6 (UTF-8 handling) are written out below as raw frame sequences
and sent both to the wallet port and to a plain ``websockets`` asyncio echo server:
each case must end the same way on both (messages answered, pongs, close code).
"""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
from websockets.asyncio.server import serve
from websockets.frames import Frame, Opcode

from timefast.fragments import MessageAssembler, MessageError

from .helpers import NodeThread, client_frame

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def test_one_frame_is_one_message():
    a = MessageAssembler(100)
    assert a.feed(Frame(Opcode.TEXT, b'{"type":"Ping"}')) == (Opcode.TEXT, b'{"type":"Ping"}')
    assert a.feed(Frame(Opcode.PING, b"")) is None


def test_fragments_are_joined_and_checked_as_they_come():
    a = MessageAssembler(100)
    assert a.feed(Frame(Opcode.TEXT, b'{"type":', fin=False)) is None
    assert a.buffered == 8
    assert a.feed(Frame(Opcode.PING, b"x")) is None  # control frames may come between
    # A character split across fragments is fine.
    assert a.feed(Frame(Opcode.CONT, b'"Ping","x":"\xc3', fin=False)) is None
    assert a.feed(Frame(Opcode.CONT, b'\xa9"}')) == (Opcode.TEXT,
                                                    '{"type":"Ping","x":"é"}'.encode())
    assert a.buffered == 0


def test_bad_utf8_fails_on_the_fragment_that_carries_it():
    a = MessageAssembler(100)
    with pytest.raises(MessageError) as e:
        a.feed(Frame(Opcode.TEXT, b'{"x":"\xff', fin=False))
    assert e.value.code == 1007 and a.buffered == 0
    # Failed: what follows the bad frame is not a message.
    assert a.failed and a.feed(Frame(Opcode.TEXT, b"{}")) is None
    with pytest.raises(MessageError) as e:
        MessageAssembler(100).feed(Frame(Opcode.TEXT, b'"\xed\xa0\x80"'))  # a surrogate
    assert e.value.code == 1007
    # A message that ends inside a character is not UTF-8 either.
    a = MessageAssembler(100)
    a.feed(Frame(Opcode.TEXT, b'"\xe2\x82', fin=False))
    with pytest.raises(MessageError) as e:
        a.feed(Frame(Opcode.CONT, b""))
    assert e.value.code == 1007
    # Binary data is not checked.
    assert MessageAssembler(100).feed(Frame(Opcode.BINARY, b"\xff")) == (Opcode.BINARY,
                                                                         b"\xff")


def test_size_is_bounded_over_all_fragments():
    a = MessageAssembler(10)
    a.feed(Frame(Opcode.TEXT, b"12345678", fin=False))
    with pytest.raises(MessageError) as e:
        a.feed(Frame(Opcode.CONT, b"90ab", fin=False))
    assert e.value.code == 1009 and a.buffered == 0


def test_fragments_out_of_order_are_a_protocol_error():
    with pytest.raises(MessageError) as e:
        MessageAssembler(100).feed(Frame(Opcode.CONT, b"x"))
    assert e.value.code == 1002
    a = MessageAssembler(100)
    a.feed(Frame(Opcode.TEXT, b"x", fin=False))
    with pytest.raises(MessageError) as e:
        a.feed(Frame(Opcode.TEXT, b"y"))
    assert e.value.code == 1002


# -- Autobahn groups 5 and 6, on the wire ---------------------------------------------

def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One masked client frame."""
    return client_frame(opcode, payload, fin)


def msg(text: bytes) -> bytes:
    """A wallet message carrying ``text`` (raw bytes) in a JSON string: the wallet
    port answers it with Pong, the echo server echoes it."""
    return b'{"type":"Ping","x":"' + text + b'"}'


def fragmented(payload: bytes, n: int, opcode: int = TEXT,
               between: bytes = b"") -> list[bytes]:
    """``payload`` in ``n`` frames (cut at any byte), ``between`` after each but the last."""
    step = max(1, -(-len(payload) // n))
    parts = [payload[i:i + step] for i in range(0, len(payload), step)] or [b""]
    parts += [b""] * (n - len(parts))
    out = []
    for i, p in enumerate(parts):
        out.append(frame(opcode if i == 0 else CONT, p, fin=i == len(parts) - 1))
        if between and i < len(parts) - 1:
            out.append(between)
    return out


HELLO = msg(b"Hello, world!")
END = b'{"type":"Ping","id":"end"}'
PING_FRAME = frame(PING, b"ping payload")

WAIT = b""  # in a case: read one answer before sending the rest

# Case id -> frames sent (then a last message, and a close 1000 from the client).
CASES: dict[str, list[bytes]] = {
    "5.1 fragmented ping": [frame(PING, b"hello", fin=False), frame(CONT, b"world")],
    "5.2 fragmented pong": [frame(PONG, b"hello", fin=False), frame(CONT, b"world")],
    "5.3 text in 2 fragments": fragmented(HELLO, 2),
    "5.6 text in 2 fragments, ping between": fragmented(HELLO, 2, between=PING_FRAME),
    "5.9 continuation, FIN, nothing to continue": [frame(CONT, b"x"), frame(TEXT, HELLO)],
    "5.12 continuation, no FIN, nothing to continue": [frame(CONT, b"x", fin=False),
                                                       frame(TEXT, HELLO)],
    "5.15 message, then a stray continuation": [*fragmented(HELLO, 2), WAIT,
                                                frame(CONT, b"x", fin=False),
                                                frame(TEXT, HELLO, fin=False)],
    "5.17 stray continuations": [frame(CONT, b"x"), frame(CONT, b"y")],
    "5.18 two text frames for one message": [frame(TEXT, HELLO[:5], fin=False),
                                             frame(TEXT, HELLO[5:])],
    "5.19 text in 5 fragments, pings between": fragmented(HELLO, 5, between=PING_FRAME),
    "5.x binary in 3 fragments": fragmented(b"\x00\xff" * 10, 3, opcode=BINARY),
    "6.1 empty string": [frame(TEXT, msg(b""))],
    "6.1.2 empty fragments": [frame(TEXT, b"", fin=False), frame(CONT, b"", fin=False),
                              frame(CONT, msg(b""))],
    "6.2 valid UTF-8, cut inside characters": fragmented(msg("κόσμε€𝄞".encode()), 7),
    "6.2 valid UTF-8, one byte a frame": fragmented(msg("Hello-µ@ßöäüàá".encode()), 64),
    "6.3 invalid UTF-8, one frame": [frame(TEXT, msg(b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"))],
    "6.3 invalid UTF-8, fragmented": fragmented(msg(b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"), 4),
    "6.4 invalid in the first fragment, more to come": [
        frame(TEXT, msg(b"\xce\xba\xf4\x90\x80\x80")[:24], fin=False), frame(CONT, b"x")],
    "6.6 valid then truncated at the end": fragmented(msg(b"\xce\xba")[:-2] + b"\xe2\x82", 2),
    "6.8 5- and 6-byte sequences": [frame(TEXT, msg(b"\xf8\x88\x80\x80\x80"))],
    "6.9 maximal code points": [frame(TEXT, msg("\U0010ffff\uffff\ud7ff".encode(
        "utf-8", "surrogatepass")))],
    "6.10 first code point past U+10FFFF": [frame(TEXT, msg(b"\xf4\x90\x80\x80"))],
    "6.11 edge: U+E000, U+FFFD": [frame(TEXT, msg("\ue000\ufffd".encode()))],
    "6.12 lone continuation bytes": [frame(TEXT, msg(b"\x80\xbf"))],
    "6.14 lone start bytes": [frame(TEXT, msg(b"\xc0 \xe0 \xf0 "))],
    "6.16 impossible bytes": [frame(TEXT, msg(b"\xfe\xff"))],
    "6.17 overlong slash": [frame(TEXT, msg(b"\xc0\xaf"))],
    "6.18 maximal overlong": [frame(TEXT, msg(b"\xe0\x9f\xbf"))],
    "6.19 single surrogate": [frame(TEXT, msg(b"\xed\xbf\xbf"))],
    "6.20 surrogate pair in UTF-8": [frame(TEXT, msg(b"\xed\xa0\x80\xed\xb0\x80"))],
    "6.21 noncharacters are valid": [frame(TEXT, msg(b"\xef\xbf\xbe\xef\xbf\xbf"))],
}


async def _next_text(reader: asyncio.StreamReader) -> int:
    """Read frames up to the first data frame; returns 1."""
    while True:
        b0, b1 = await asyncio.wait_for(reader.readexactly(2), 10)
        await reader.readexactly(b1 & 0x7F)  # answers here are short
        if b0 & 0x0F in (TEXT, BINARY):
            return 1


async def _outcome(port: int, frames: list[bytes]) -> tuple[int, int, int | None]:
    """(messages answered, pongs received, close code) for one case."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0]
    texts = pongs = 0
    code: int | None = None
    for f in frames:
        if f == WAIT:
            texts += await _next_text(reader)
            continue
        writer.write(f)
    # A last message whose answer says that everything before it was read; then
    # the client closes.  A server that failed the connection closes first.
    writer.write(frame(TEXT, END))
    try:
        while True:
            b0, b1 = await asyncio.wait_for(reader.readexactly(2), 10)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(n)
            op = b0 & 0x0F
            if op in (TEXT, BINARY):
                # A message parsed from a fragment of itself is not an answer.
                texts += b'"code":"BAD_JSON"' not in payload
                if b'"id":"end"' in payload:
                    writer.write(frame(CLOSE, (1000).to_bytes(2, "big")))
            elif op == PONG:
                pongs += 1
            elif op == CLOSE:
                code = int.from_bytes(payload[:2], "big") if payload else 1005
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
    return texts, pongs, code


def test_autobahn_groups_5_and_6_end_as_websockets_own_server(tmp_path):
    n = NodeThread(tmp_path).start()
    try:
        _, port = n.node.ws_addresses[0]

        async def run_all():
            async def echo(ws):
                async for m in ws:
                    await ws.send(m)
            async with serve(echo, "127.0.0.1", 0, compression=None) as ref:
                ref_port = ref.sockets[0].getsockname()[1]
                got = {}
                for name, frames in CASES.items():
                    ours = await _outcome(port, frames)
                    theirs = await _outcome(ref_port, frames)
                    got[name] = (ours, theirs)
                return got

        got = asyncio.run(run_all())
    finally:
        n.stop()
    different = {k: v for k, v in got.items() if v[0] != v[1]}
    assert not different, different
    # The cases do test something: some answered, some failed with 1002 and 1007.
    codes = {v[0][2] for v in got.values()}
    assert {1000, 1002, 1007} <= codes
    assert got["5.3 text in 2 fragments"][0] == (2, 0, 1000)  # it and the last
