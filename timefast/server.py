"""The wallet WebSocket server on WS_ADDR (SPEC 3): a thin asyncio layer.

Each connection is an ``asyncio.Protocol`` around websockets' sans-I/O
``ServerProtocol`` (handshake, inbound frames, pings, closing).  Everything the node
writes to a wallet, replies and events alike, goes through the connection's slot
in the compiled ``Fanout``: an event is serialized once (by the ledger), framed once
here, copied by the core into every target's buffer, and each buffer is written
once per loop turn.  There is no task per connection and none per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import socket
import ssl
import time
from typing import Any, cast

import orjson
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from timefast import _core
from timefast.commits import GroupCommit
from timefast.ledger import Event, Ledger
from timefast.metrics import Histogram, render
from timefast.page import asset, status
from timefast.session import Limits, WalletSession

log = logging.getLogger("timefast.wallet")

WS_PATHS = ("/", "/ws/utxo-protocol")
OPEN_TIMEOUT = 10.0  # seconds a client has to finish its handshake
CLOSE_TIMEOUT = 5.0  # seconds a closing peer has before the TCP connection is cut
# Kernel send buffer of a wallet socket.  Fixed rather than autotuned (up to 4 MiB on
# Linux) so that a wallet that stops reading is noticed by SEND_BUFFER_BYTES soon and
# holds little kernel memory; notifications never need a large window.
SOCKET_SEND_BUFFER = 128 * 1024


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
        "client_id",
        "closing",
        "ip",
        "last_recv",
        "opened",
        "peer",
        "server",
        "session",
        "slot",
        "timer",
        "transport",
        "ws",
    )

    def __init__(self, server: WalletServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.ws: ServerProtocol | None = None
        self.session: WalletSession | None = None
        self.slot = -1
        self.opened = False
        self.closing = False
        self.ip = ""
        self.peer = ""
        self.client_id = ""
        self.last_recv = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        srv = self.server
        addr = transport.get_extra_info("peername") or ("?", 0)
        self.ip, self.peer = str(addr[0]), f"{addr[0]}:{addr[1]}"
        fd = -1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
            if srv.direct_writes:
                fd = sock.fileno()
        self.slot = srv.fanout.open(self.transport, fd)
        srv.conns[self.slot] = self
        self.ws = ServerProtocol(origins=cast(Any, srv.origins),
                                 max_size=srv.limits.max_message_bytes)
        self.last_recv = time.monotonic()
        self.timer = srv.loop.call_later(OPEN_TIMEOUT, self._open_timeout)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws is None:
            return
        self.last_recv = time.monotonic()
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Request):
                self._on_request(event)
        self._pump()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            self._pump()
        return None

    def pause_writing(self) -> None:
        self.server.fanout.pause(self.slot)

    def resume_writing(self) -> None:
        self.server.fanout.resume(self.slot)
        self.server.schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.server
        if self.timer is not None:
            self.timer.cancel()
        if self.slot >= 0:
            srv.fanout.close(self.slot)
            srv.conns.pop(self.slot, None)
        if self.session is not None:
            self.session.closed = True
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
            self._respond(http_response(200, "OK", orjson.dumps(status(srv.ledger))))
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
        refusal = srv.capacity_refusal(self.ip)
        if refusal is not None:
            self._respond(http_response(503, "Service Unavailable", orjson.dumps(
                {"error": "capacity", "message": refusal})))
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
        self.opened = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.client_id = f"{secrets.token_hex(3)}-{next(srv.serial)}"
        self.session = WalletSession(srv.ledger, srv.fanout, self.slot, srv.limits,
                                     self.client_id, self.peer, commits=srv.commits)
        srv.admit(self)
        log.info("📱 New WebSocket connection from: %s", self.peer)

    def _respond(self, response: Response) -> None:
        assert self.ws is not None
        self.ws.send_response(response)

    # -- frames ------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            if self.session is not None and not self.closing:
                self.session.handle_text(bytes(frame.data))
        elif frame.opcode is Opcode.BINARY and self.session is not None:
            self.session.error("BAD_REQUEST", "the protocol uses text frames only")

    def _pump(self) -> None:
        """Move what websockets wants sent into the slot, in order with everything else."""
        ws, srv = self.ws, self.server
        if ws is None:
            return
        eof = False
        for chunk in ws.data_to_send():
            if chunk:
                srv.fanout.send(self.slot, chunk)
            else:
                eof = True
        srv.schedule_flush()
        if eof or ws.close_expected() or ws.state is State.CLOSED:
            self._finish()

    def _finish(self) -> None:
        # Write what is queued, then close; cut the connection if the peer stalls.
        if self.closing:
            return
        self.server.flush()
        self._close_transport()

    def _close_transport(self) -> None:
        # close() writes what the transport holds first; abort() if the peer stalls.
        self.closing = True
        transport = self.transport
        if transport is not None:
            transport.close()
            self.server.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with ``code``."""
        ws = self.ws
        if ws is None or self.closing or ws.state is not State.OPEN:
            return
        ws.send_close(code, reason)
        self._pump()

    def lag_close(self, resume_from: int) -> None:
        """Tell a slow wallet where to resume, then close it with 1013."""
        ws, transport = self.ws, self.transport
        if ws is None or transport is None or self.closing or ws.state is not State.OPEN:
            return
        # The slot takes no more bytes once lagged, so these go to the transport
        # directly, behind whatever it already holds.
        ws.send_text(orjson.dumps({"type": "Lagged", "data": {"resume_from": resume_from}}))
        ws.send_close(1013, "lagged: resume from the seq given")
        for chunk in ws.data_to_send():
            if chunk:
                transport.write(chunk)
        self._close_transport()
        log.info("🐢 Client %s lagged; closed with 1013 (resume_from %d)",
                 self.client_id, resume_from)

    def ping(self, now: float, interval: float) -> None:
        """Heartbeat: ping, or close a peer silent for two intervals."""
        ws = self.ws
        if ws is None or not self.opened or self.closing or ws.state is not State.OPEN:
            return
        if now - self.last_recv > 2 * interval:
            log.info("Client %s sent nothing for %.0fs; closing", self.client_id,
                     now - self.last_recv)
            ws.send_close(1011, "keepalive ping timeout")
        else:
            ws.send_ping(b"")
        self._pump()


class WalletServer:
    """Connections, limits, the fan-out and the event feed of the wallet port."""

    def __init__(self, ledger: Ledger, limits: Limits, *, max_connections: int = 10_000,
                 max_connections_per_ip: int = 128, heartbeat_interval: float = 30.0,
                 origins: list[str | None] | None = None, direct_writes: bool = True,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.ledger = ledger
        self.limits = limits
        self.loop = loop or asyncio.get_running_loop()
        self.fanout = _core.Fanout(limits.send_buffer_bytes)
        self.commits = GroupCommit(ledger, self.loop)
        self.max_connections = max_connections
        self.max_per_ip = max_connections_per_ip
        self.heartbeat_interval = heartbeat_interval
        self.origins = origins
        self.direct_writes = direct_writes
        self.conns: dict[int, WalletConnection] = {}
        self.open_count = 0
        self.per_ip: dict[str, int] = {}
        self.serial = itertools.count(1)
        self.flush_scheduled = False
        self.events_published = 0
        self.latency = Histogram()
        self.pending_stamps: list[tuple[float, int]] = []
        self.servers: list[asyncio.AbstractServer] = []
        self._heartbeat: asyncio.TimerHandle | None = None
        ledger.listeners.append(self.on_events)

    # -- lifecycle ---------------------------------------------------------------------

    async def listen(self, host: str, port: int,
                     ssl_context: ssl.SSLContext | None = None) -> list[tuple[str, int]]:
        """Start accepting; returns the bound addresses."""
        if ssl_context is not None:
            self.direct_writes = False
        server = await self.loop.create_server(lambda: WalletConnection(self), host, port,
                                               ssl=ssl_context, backlog=4096,
                                               reuse_address=True)
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
        deadline = self.loop.time() + CLOSE_TIMEOUT
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
        """Why a new wallet from ``ip`` cannot be admitted, or None."""
        if self.open_count >= self.max_connections:
            return f"the node serves its maximum of {self.max_connections} connections"
        if self.max_per_ip and self.per_ip.get(ip, 0) >= self.max_per_ip:
            return f"at most {self.max_per_ip} connections from one IP address"
        return None

    def admit(self, conn: WalletConnection) -> None:
        self.open_count += 1
        self.per_ip[conn.ip] = self.per_ip.get(conn.ip, 0) + 1

    def forget(self, conn: WalletConnection) -> None:
        self.open_count -= 1
        n = self.per_ip.get(conn.ip, 1) - 1
        if n:
            self.per_ip[conn.ip] = n
        else:
            self.per_ip.pop(conn.ip, None)

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
        for slot, resume_from in self.fanout.take_lagged():
            conn = self.conns.get(slot)
            if conn is not None:
                conn.lag_close(resume_from)

    # -- HTTP --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "height": self.ledger.height, "connections": self.open_count}

    def metrics(self) -> bytes:
        f, led = self.fanout, self.ledger
        return render(
            [
                ("timefast_connections", "gauge", "Open wallet connections", self.open_count),
                ("timefast_subscriptions", "gauge", "Address subscriptions",
                 f.index.subscription_count),
                ("timefast_subscribed_addresses", "gauge", "Addresses with a subscriber",
                 f.index.address_count),
                ("timefast_events_total", "counter", "Events published", self.events_published),
                ("timefast_event_seq", "gauge", "Last event sequence number", led.seq),
                ("timefast_block_height", "gauge", "Best block height", led.height),
                ("timefast_frames_sent_total", "counter", "Frames queued to wallets",
                 f.frames_queued),
                ("timefast_bytes_sent_total", "counter", "Bytes written to wallets",
                 f.bytes_sent),
                ("timefast_writes_total", "counter", "Coalesced socket writes", f.writes),
                ("timefast_send_buffer_bytes", "gauge",
                 "C memory held by the wallets' output buffers", f.buffer_bytes),
                ("timefast_slow_client_closes_total", "counter",
                 "Connections closed with Lagged", f.lag_closes),
                ("timefast_pending_transactions", "gauge", "Transactions awaiting quorum",
                 len(led.pending)),
            ],
            [("timefast_transactions_total", "outcome", "Transactions by outcome",
              dict(led.outcomes))],
            [("timefast_fanout_latency_seconds",
              "Seconds from an event's commit to its bytes being written", self.latency)],
        )


