"""The wallet WebSocket server on WS_ADDR (SPEC 3): a thin asyncio layer.

Each connection is an ``asyncio.Protocol`` around websockets' sans-I/O
``ServerProtocol`` (handshake, inbound frames, pings, closing).  The connection cuts
what it reads into the request's head and whole frames itself: a plain upgrade is
answered here, a text message in one frame (nearly every wallet message) goes
straight to the session, and websockets reads the rest, always from a boundary.
After a restart every wallet comes back at once; that is what this path is for
(issue 20: websockets' parser and protocol objects were most of a connection's
cost).  Everything the node
writes to a wallet, replies and events alike, goes through the connection's slot
in the compiled ``Fanout``: an event is serialized once (by the ledger), framed once
here, copied by the core into every target's buffer, and each buffer is written
once per loop turn.  There is no task per connection and none per message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import logging
import random
import socket
import ssl
import time
from typing import Any, cast

import orjson
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import SERVER, Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from timefast import _core
from timefast.commits import GroupCommit
from timefast.fragments import MessageAssembler, MessageError, drain
from timefast.ledger import Event, Ledger
from timefast.metrics import Histogram, render
from timefast.page import asset
from timefast.session import Limits, WalletSession
from timefast.source import LedgerSource, WalletSource

_FRAME_TEXT, _FRAME_OTHER = _core.FRAME_TEXT, _core.FRAME_OTHER
_getrandbits = random.getrandbits

log = logging.getLogger("timefast.wallet")

WS_PATHS = ("/", "/ws/utxo-protocol")
OPEN_TIMEOUT = 10.0  # seconds a client has to finish its handshake (TLS, then WebSocket)
# Connections past MAX_CONNECTIONS or the per-IP cap that may wait, uncounted, for
# their request to be answered 503 (or /health); any more are cut at once, so that
# the descriptors the node holds stay bounded whatever a client opens.
REFUSED_WAITING = 64
CLOSE_TIMEOUT = 5.0  # seconds a closing peer has before the TCP connection is cut
# Kernel send buffer of a wallet socket.  Fixed rather than autotuned (up to 4 MiB on
# Linux) so that a wallet that stops reading is noticed by SEND_BUFFER_BYTES soon and
# holds little kernel memory; notifications never need a large window.
SOCKET_SEND_BUFFER = 128 * 1024
# listen() backlog: the kernel caps it at net.core.somaxconn (4096 by default), so
# the node takes whatever the operator allows.  After a restart every wallet
# connects at once; one refused by a full queue waits a second or more for its
# SYN to be sent again (docs/OPERATIONS.md).
LISTEN_BACKLOG = 65535
# A request's head not ended within this many bytes goes to websockets whole, which
# answers it (its own limits: 8 KiB a line, 128 headers) or keeps reading.
HANDSHAKE_BYTES = 16 * 1024


_FAST_PATHS = {p.encode() for p in WS_PATHS}


def plain_upgrade(data: bytes) -> bytes | None:
    """The 101 response to ``data`` when it is exactly one plain WebSocket upgrade
    request (GET on a wallet path, version 13, a valid key; no Origin,
    subprotocol or extension to decide on), else None: websockets then parses
    and answers it (errors, origins, the HTTP pages).

    A restart brings every wallet back at once; websockets' general parser and
    response builder cost several times this per handshake.
    """
    if not data.startswith(b"GET ") or len(data) > 4096 \
            or data.find(b"\r\n\r\n") != len(data) - 4:  # nothing after the request
        return None
    lines = data[:-4].split(b"\r\n")
    method_path = lines[0].split(b" ")
    if len(method_path) != 3 or method_path[1] not in _FAST_PATHS \
            or method_path[2] != b"HTTP/1.1":
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        name = name.lower()
        if not sep or not name or name in headers or name != name.strip():
            return None
        headers[name] = value.strip()
    if b"origin" in headers or b"sec-websocket-protocol" in headers \
            or b"sec-websocket-extensions" in headers \
            or headers.get(b"upgrade", b"").lower() != b"websocket" \
            or b"upgrade" not in [t.strip() for t in
                                  headers.get(b"connection", b"").lower().split(b",")] \
            or headers.get(b"sec-websocket-version") != b"13":
        return None
    key = headers.get(b"sec-websocket-key", b"")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    accept = accept_key(key.decode()).encode()
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
            + b"\r\nServer: " + SERVER.encode() + b"\r\n\r\n")


def http_response(status: int, reason: str, body: bytes,
                  content_type: str = "application/json") -> Response:
    """A plain HTTP response that closes the connection."""
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close"
    return Response(status, reason, headers, body)


class WalletConnection(asyncio.Protocol):
    """One TCP connection to WS_ADDR."""

    __slots__ = (
        "assembler",
        "client_id",
        "closing",
        "counted",
        "fd",
        "inbuf",
        "ip",
        "last_recv",
        "lost",
        "need",
        "opened",
        "peer",
        "raw",
        "reading_paused",
        "refusal",
        "server",
        "session",
        "slot",
        "timer",
        "transport",
        "writing_paused",
        "ws",
    )

    def __init__(self, server: WalletServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.ws: ServerProtocol | None = None
        self.assembler = MessageAssembler(server.limits.max_message_bytes)
        self.session: WalletSession | None = None
        self.slot = -1
        self.opened = False
        self.closing = False
        self.ip = ""
        self.peer = ""
        self.client_id = ""
        self.last_recv = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.fd = -1  # the socket, written directly by the fan-out when >= 0
        self.writing_paused = False  # the transport is above its high-water mark
        self.reading_paused = False  # for replies the wallet has not read yet
        self.counted = False  # against MAX_CONNECTIONS and the per-IP cap
        self.refusal: str | None = None  # why a WebSocket would be refused (503)
        # Inbound bytes are cut into whole frames here (``_read``); websockets is
        # handed only whole requests and whole frames, so it always stands at a
        # boundary.  ``inbuf`` holds the unfinished request head or frame (``need``
        # bytes in all when known); ``raw``: websockets reads everything from now on.
        self.inbuf = bytearray()
        self.need = 0
        self.raw = False
        self.lost = False

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        srv = self.server
        addr = transport.get_extra_info("peername") or ("?", 0)
        self.ip, self.peer = str(addr[0]), f"{addr[0]}:{addr[1]}"
        # Every connection counts from here, handshake finished or not: connections
        # that never finish one would otherwise hold descriptors without limit.
        self.refusal = srv.capacity_refusal(self.ip)
        if self.refusal is None:
            srv.count(self)
        elif srv.refused_waiting >= REFUSED_WAITING:
            self.lost = True
            self.transport.abort()
            return
        else:
            srv.refused_waiting += 1
        fd = -1
        # SOCKET_SEND_BUFFER is set on the listening socket: accepted sockets
        # inherit it, a system call less per connection in a reconnect storm.
        if srv.direct_writes:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                fd = sock.fileno()
        self.fd = fd
        self.slot = srv.fanout.open(self.transport, fd)
        srv.conns[self.slot] = self
        # websockets' protocol is made when the request is read (``_handshake``): a
        # plain upgrade needs one that starts OPEN, any other request one that reads it.
        self.last_recv = time.monotonic()
        self.timer = srv.loop.call_later(srv.open_timeout, self._open_timeout)

    def data_received(self, data: bytes) -> None:
        if self.lost:
            return
        self.last_recv = time.monotonic()
        if self.raw:
            self._to_websockets(data)
        elif self.opened:
            self._read(data)
        else:
            self._handshake(data)

    def eof_received(self) -> bool | None:
        if not self.lost:
            # What is unfinished goes to websockets, which then fails or ends the
            # connection as it would have with every byte.
            rest, self.inbuf = bytes(self.inbuf), bytearray()
            ws = self._protocol()
            if rest:
                ws.receive_data(rest)
            ws.receive_eof()
            self._events()
        return None

    def _protocol(self) -> ServerProtocol:
        """websockets' protocol of this connection, made when first needed: to read
        a request, or (a plain upgrade answered here) OPEN, for the first frame it
        reads or sends (a ping, a close, a fragment).  A wallet that sends only
        one-frame text messages needs none until the first heartbeat: a reconnect
        storm does not pay for 10,000 of them at once."""
        ws = self.ws
        if ws is None:
            srv = self.server
            ws = self.ws = (
                ServerProtocol(origins=None, max_size=srv.limits.max_message_bytes,
                               state=State.OPEN) if self.opened
                else ServerProtocol(origins=cast(Any, srv.origins),
                                    max_size=srv.limits.max_message_bytes))
        return ws

    def _to_websockets(self, data: bytes) -> None:
        self._protocol().receive_data(data)
        self._events()

    def _events(self) -> None:
        ws = self.ws
        if ws is None:
            return
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Request):
                self._on_request(event)
        self._pump()

    def _handshake(self, data: bytes) -> None:
        """Read up to the end of the request's head; answer it; read what follows."""
        buf = self.inbuf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > HANDSHAKE_BYTES:
                self.raw = True
                self.inbuf = bytearray()
                self._to_websockets(bytes(buf))
            return
        request, rest = bytes(buf[:end + 4]), bytes(buf[end + 4:])
        self.inbuf = bytearray()
        response = None
        if self.refusal is None and self.server.origins is None \
                and self.transport is not None:
            response = plain_upgrade(request)
        if response is not None:
            # Answered here: websockets, when needed, starts at OPEN (``_protocol``).
            assert self.transport is not None
            self.transport.write(response)
            self._opened()
        else:
            self._to_websockets(request)
        if rest and not self.lost:
            if self.opened:
                self._read(rest)
            else:  # an HTTP answer is on its way and the connection closes
                self.raw = True
                self._to_websockets(rest)

    def _read(self, data: bytes) -> None:
        """Frames of an open WebSocket: a text message in one frame goes straight to
        the session, every other frame through websockets (pings, closes, fragments,
        errors), in the order they came."""
        buf = self.inbuf
        if buf:
            buf += data
            if len(buf) < self.need:
                return
            whole: bytes | bytearray = buf
        else:
            whole = data
        items, used, self.need = _core.read_frames(whole, self.server.limits.max_message_bytes)
        self.inbuf = bytearray(whole[used:]) if used < len(whole) else bytearray()
        if not items:
            return
        for kind, chunk in items:
            ws = self.ws
            if kind == _FRAME_TEXT:
                if ws is None or ws.state is State.OPEN:
                    self._on_frame(Frame(Opcode.TEXT, chunk))
                continue
            if kind != _FRAME_OTHER:  # a frame no client may send: websockets fails it
                self.raw = True
            ws = self._protocol()
            ws.receive_data(chunk)
            for event in ws.events_received():
                if isinstance(event, Frame):
                    self._on_frame(event)
        self._pump()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.server.fanout.pause(self.slot)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.server.fanout.resume(self.slot)
        self.server.schedule_flush()
        if self.reading_paused and self.transport is not None \
                and not (self.session is not None and self.session.queued):
            # The replies it had not read are (nearly all) read: take requests again.
            self.reading_paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.server
        if self.counted:
            srv.uncount(self)
        elif self.refusal is not None and not self.lost:
            srv.refused_waiting -= 1
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
        if self.slot >= 0:
            srv.fanout.close(self.slot)
            srv.conns.pop(self.slot, None)
        if self.session is not None:
            self.session.closed = True
        srv.via_transport.discard(self)
        if self.opened:
            srv.forget(self)
            log.info("👋 Client %s disconnected", self.client_id)
        self.ws = None
        self.session = None

    # -- handshake ---------------------------------------------------------------------

    def _open_timeout(self) -> None:
        if not self.opened and self.transport is not None:
            self.transport.abort()

    def _on_request(self, request: Request) -> None:
        assert self.ws is not None
        srv = self.server
        path = request.path.split("?", 1)[0]
        if path == "/health":
            self._respond(http_response(200, "OK", orjson.dumps(srv.health())))
            return
        if path == "/metrics":
            self._respond(http_response(200, "OK", srv.metrics(),
                                        "text/plain; version=0.0.4; charset=utf-8"))
            return
        if path == "/status":
            self._respond(http_response(200, "OK", orjson.dumps(srv.source.status())))
            return
        page = asset(path, request.headers)
        if page is not None:  # the live page; a WebSocket upgrade on / goes on below
            self._respond(http_response(200, "OK", *page))
            return
        if path not in WS_PATHS:
            self._respond(http_response(404, "Not Found", orjson.dumps(
                {"error": "not_found", "message": f"no such path {path}; wallets connect "
                 "to / or /ws/utxo-protocol"})))
            return
        if self.refusal is not None:
            self._respond(http_response(503, "Service Unavailable", orjson.dumps(
                {"error": "capacity", "message": self.refusal})))
            return
        response = self.ws.accept(request)
        if response.status_code == 403:
            response = http_response(403, "Forbidden", orjson.dumps(
                {"error": "origin", "message": "Origin not allowed"}))
        self.ws.send_response(response)
        if response.status_code != 101:
            return
        # websockets' parser keeps the request alive for the connection's life;
        # its headers are not needed once the handshake is answered (~1.5 KB each).
        request.headers.clear()
        self._opened()

    def _opened(self) -> None:
        """The WebSocket is open: the wallet's session starts."""
        srv = self.server
        self.opened = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # A log name, not a secret: the serial makes it unique, the random part tells
        # one run's clients from another's (no system call per connection).
        self.client_id = f"{_getrandbits(24):06x}-{next(srv.serial)}"
        self.session = WalletSession(srv.source, srv.fanout, self.slot, srv.limits,
                                     self.client_id, self.peer, commits=srv.commits,
                                     wake=srv.schedule_flush)
        self.session.overflow = self._reply_overflow
        self.session.held = self._hold
        srv.admit(self)
        log.info("📱 New WebSocket connection from: %s", self.peer)

    def _hold(self, held: bool) -> None:
        """Stop reading while the session has messages waiting for an answer."""
        transport = self.transport
        if transport is None or self.closing:
            return
        if held:
            transport.pause_reading()
        elif not self.reading_paused:
            transport.resume_reading()

    def _respond(self, response: Response) -> None:
        assert self.ws is not None
        self.ws.send_response(response)

    # -- frames ------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        session = self.session
        # Frames parsed before websockets failed the connection are still answered
        # (as websockets' own server does); the assembler takes none after it failed.
        if self.lost or session is None or self.closing:
            return
        try:
            message = self.assembler.feed(frame)
        except MessageError as e:
            self._protocol().fail(e.code, e.reason)
            return
        if message is None:
            return
        if message[0] is Opcode.TEXT:
            session.handle_text(message[1])
        else:
            session.error("BAD_REQUEST", "the protocol uses text frames only")

    def _reply_overflow(self, frame: bytes) -> None:
        """Write a large reply behind everything queued, outside the slot's limit.

        Direct replies never count as lag (SPEC 3.1).  The slot's queued bytes go to
        the transport first and the reply behind them; the fan-out then writes this
        connection through the transport too (not the socket), so nothing overtakes
        the reply, until the transport has drained (``WalletServer.flush``).  While
        the wallet leaves more than SEND_BUFFER_BYTES of it unread, the node reads
        no more of its requests: memory stays bounded by what it asked for.
        """
        srv, transport = self.server, self.transport
        if transport is None or self.closing or srv.fanout.is_lagged(self.slot):
            return
        fan = srv.fanout
        if self.fd >= 0:
            fan.set_fd(self.slot, -1)
            srv.via_transport.add(self)
        if self.writing_paused:
            fan.resume(self.slot)
        fan.flush()
        if self.writing_paused:
            fan.pause(self.slot)
        transport.write(frame)
        # pause_writing came (synchronously) if the write passed the high-water mark;
        # resume_writing will then come when it drains, and resumes reading.
        if (self.writing_paused and not self.reading_paused
                and transport.get_write_buffer_size() > srv.limits.send_buffer_bytes):
            self.reading_paused = True
            transport.pause_reading()

    def _pump(self) -> None:
        """Move what websockets wants sent into the slot, in order with everything else."""
        ws, srv = self.ws, self.server
        srv.schedule_flush()
        if ws is None:
            return
        slot, send = self.slot, srv.fanout.send
        eof = drain(ws, lambda chunk: send(slot, chunk))
        if eof or ws.close_expected() or ws.state is State.CLOSED:
            self._finish()

    def _finish(self) -> None:
        # Write what is queued, then close; cut the connection if the peer stalls.
        if self.closing:
            return
        self.server.flush()
        self._close_transport()

    def _close_transport(self, half: bool = True) -> None:
        # Half-close once what the transport holds is written, and let the peer close
        # its side: closing at once would reset the connection if the peer has sent
        # more (its data unread here), and a reset can discard the close frame before
        # the peer reads it.  abort() if the peer stalls.
        self.closing = True
        transport = self.transport
        if transport is not None:
            if half and transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
            self.server.loop.call_later(self.server.close_timeout, transport.abort)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with ``code``."""
        if self.lost or self.closing or not self.opened:
            return
        ws = self._protocol()
        if ws.state is not State.OPEN:
            return
        ws.send_close(code, reason)
        self._pump()

    def lag_close(self, last_flushed: int) -> None:
        """Tell a slow wallet where to resume, then close it with 1013."""
        transport = self.transport
        if self.lost or transport is None or self.closing or not self.opened:
            return
        ws = self._protocol()
        if ws.state is not State.OPEN:
            return
        resume_from = (self.session.resume_from(last_flushed) if self.session is not None
                       else max(0, last_flushed))
        # The slot takes no more bytes once lagged, so these go to the transport
        # directly, behind whatever it already holds.
        ws.send_text(orjson.dumps({"type": "Lagged", "data": {"resume_from": resume_from}}))
        ws.send_close(1013, "lagged: resume from the seq given")
        drain(ws, transport.write)
        # A lagged wallet reads slowly: close() lets it read to the close frame.
        self._close_transport(half=False)
        log.info("🐢 Client %s lagged; closed with 1013 (resume_from %d)",
                 self.client_id, resume_from)

    def ping(self, now: float, interval: float) -> None:
        """Heartbeat: ping, or close a peer silent for two intervals."""
        if self.lost or not self.opened or self.closing:
            return
        ws = self._protocol()
        if ws.state is not State.OPEN:
            return
        if now - self.last_recv > 2 * interval:
            log.info("Client %s sent nothing for %.0fs; closing", self.client_id,
                     now - self.last_recv)
            ws.send_close(1011, "keepalive ping timeout")
        else:
            ws.send_ping(b"")
        self._pump()


class WalletServer:
    """Connections, limits, the fan-out and the event feed of the wallet port.

    It serves from ``source`` (an edge's stream and RPC) or, when that is None, from
    ``ledger`` through the group commit ``commits`` (a masternode).
    """

    def __init__(self, ledger: Ledger | None, limits: Limits, *,
                 max_connections: int = 10_000,
                 max_connections_per_ip: int = 128, heartbeat_interval: float = 30.0,
                 origins: list[str | None] | None = None, direct_writes: bool = True,
                 loop: asyncio.AbstractEventLoop | None = None,
                 commits: GroupCommit | None = None, open_timeout: float = OPEN_TIMEOUT,
                 close_timeout: float = CLOSE_TIMEOUT,
                 source: WalletSource | None = None) -> None:
        self.limits = limits
        self.loop = loop or asyncio.get_running_loop()
        self.fanout = _core.Fanout(limits.send_buffer_bytes)
        self.commits = commits
        if source is None:
            assert ledger is not None, "a wallet server needs a ledger or a source"
            # The node's group commit, shared with the RPC and the timers.
            self.commits = commits or GroupCommit(ledger, self.loop)
            source = LedgerSource(ledger, self.commits)
        self.source = source
        self.max_connections = max_connections
        self.max_per_ip = max_connections_per_ip
        self.heartbeat_interval = heartbeat_interval
        self.origins = origins
        self.direct_writes = direct_writes
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.conns: dict[int, WalletConnection] = {}
        # Connections written through their transport since a large reply, until it
        # drains (``WalletConnection._reply_overflow``).
        self.via_transport: set[WalletConnection] = set()
        self.open_count = 0  # wallets past their handshake
        self.counted = 0  # TCP connections counted against MAX_CONNECTIONS
        self.refused_waiting = 0  # past the caps, waiting for their 503
        self.per_ip: dict[str, int] = {}  # counted connections per address
        self.serial = itertools.count(1)
        self.flush_scheduled = False
        self.events_published = 0
        self.latency = Histogram()
        self.pending_stamps: list[tuple[float, int]] = []
        self.servers: list[asyncio.AbstractServer] = []
        self._heartbeat: asyncio.TimerHandle | None = None
        source.listen(self.on_events)

    # -- lifecycle ---------------------------------------------------------------------

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                     reuse_port: bool = False) -> list[tuple[str, int]]:
        """Start accepting; returns the bound addresses.  ``reuse_port``: several
        processes (edges) may listen on the same port, the kernel spreading
        connections between them (SO_REUSEPORT)."""
        if ssl_context is not None:
            self.direct_writes = False
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            # A TLS handshake (before connection_made) obeys the same open timeout.
            tls = {"ssl": ssl_context, "ssl_handshake_timeout": self.open_timeout}
        server = await self.loop.create_server(lambda: WalletConnection(self), host, port,
                                               backlog=LISTEN_BACKLOG, reuse_address=True,
                                               reuse_port=reuse_port or None, **tls)
        for sock in server.sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        self.servers.append(server)
        if self.heartbeat_interval > 0 and self._heartbeat is None:
            self._heartbeat = self.loop.call_later(self.heartbeat_interval, self._beat)
        return [s.getsockname()[:2] for s in server.sockets]

    async def shutdown(self, code: int = 1001, reason: str = "going away") -> None:
        """Stop accepting, close every wallet with ``code``, wait briefly for them."""
        for s in self.servers:
            s.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for conn in list(self.conns.values()):
            if conn.opened:
                conn.close(code, reason)
            elif conn.transport is not None:
                conn.transport.close()
        self.flush()
        deadline = self.loop.time() + self.close_timeout
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.abort()
        for s in self.servers:
            await s.wait_closed()

    def _beat(self) -> None:
        now = time.monotonic()
        for conn in list(self.conns.values()):
            conn.ping(now, self.heartbeat_interval)
        self._heartbeat = self.loop.call_later(self.heartbeat_interval, self._beat)

    # -- admission ---------------------------------------------------------------------

    def capacity_refusal(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` cannot be admitted, or None."""
        if self.counted >= self.max_connections:
            return f"the node serves its maximum of {self.max_connections} connections"
        if self.max_per_ip and self.per_ip.get(ip, 0) >= self.max_per_ip:
            return f"at most {self.max_per_ip} connections from one IP address"
        return None

    def count(self, conn: WalletConnection) -> None:
        """A new TCP connection (handshake or not) counts against the caps."""
        conn.counted = True
        self.counted += 1
        self.per_ip[conn.ip] = self.per_ip.get(conn.ip, 0) + 1

    def uncount(self, conn: WalletConnection) -> None:
        conn.counted = False
        self.counted -= 1
        n = self.per_ip.get(conn.ip, 1) - 1
        if n:
            self.per_ip[conn.ip] = n
        else:
            self.per_ip.pop(conn.ip, None)

    def admit(self, conn: WalletConnection) -> None:
        """A wallet finished its handshake."""
        self.open_count += 1

    def forget(self, conn: WalletConnection) -> None:
        self.open_count -= 1

    # -- the hot path ------------------------------------------------------------------

    def on_events(self, events: list[Event]) -> None:
        """Ledger listener: frame each committed event once and queue it for its targets."""
        fanout = self.fanout
        frame_text = _core.frame_text
        for e in events:
            frame = frame_text(e.payload)
            if e.addresses is None:
                fanout.broadcast(frame, e.seq)
            else:
                fanout.publish(frame, e.addresses, e.seq)
        self.events_published += len(events)
        self.pending_stamps.append((time.perf_counter(), len(events)))
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Write all queued bytes once, at the end of this loop turn."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        self.fanout.flush()
        if self.pending_stamps:
            now = time.perf_counter()
            for t, n in self.pending_stamps:
                self.latency.observe(now - t, n)
            self.pending_stamps.clear()
        for slot, last_flushed in self.fanout.take_lagged():
            conn = self.conns.get(slot)
            if conn is not None:
                conn.lag_close(last_flushed)
        if self.via_transport:
            for conn in list(self.via_transport):
                tr = conn.transport
                if tr is None or conn.closing:
                    self.via_transport.discard(conn)
                elif tr.get_write_buffer_size() == 0:
                    # Drained: nothing queued there can be overtaken any more.
                    self.fanout.set_fd(conn.slot, conn.fd)
                    self.via_transport.discard(conn)

    # -- HTTP --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "height": self.source.height, "connections": self.open_count}

    def metrics(self) -> bytes:
        f, src = self.fanout, self.source
        gauges, labelled = src.metrics()
        return render(
            [
                ("timefast_connections", "gauge", "Open wallet connections", self.open_count),
                ("timefast_subscriptions", "gauge", "Address subscriptions",
                 f.index.subscription_count),
                ("timefast_subscribed_addresses", "gauge", "Addresses with a subscriber",
                 f.index.address_count),
                ("timefast_events_total", "counter", "Events published", self.events_published),
                ("timefast_event_seq", "gauge", "Last event sequence number", src.seq),
                ("timefast_block_height", "gauge", "Best block height", src.height),
                ("timefast_frames_sent_total", "counter", "Frames queued to wallets",
                 f.frames_queued),
                ("timefast_bytes_sent_total", "counter", "Bytes written to wallets",
                 f.bytes_sent),
                ("timefast_writes_total", "counter", "Coalesced socket writes", f.writes),
                ("timefast_send_buffer_bytes", "gauge",
                 "C memory held by the wallets' output buffers", f.buffer_bytes),
                ("timefast_slow_client_closes_total", "counter",
                 "Connections closed with Lagged", f.lag_closes),
                *gauges,
            ],
            labelled,
            [("timefast_fanout_latency_seconds",
              "Seconds from an event's commit to its bytes being written", self.latency)],
        )


