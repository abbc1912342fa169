"""``time-masternode edge``: a wallet port fed by NATS JetStream (docs/EDGES.md).

An edge holds no ledger.  Its events come from the masternode's stream (``bus.py``),
kept in the same window a masternode keeps for resume (``journal.Journal``); its
answers come from the masternode's RPC (``EdgeRpc``, one WebSocket); and the wallet
port is the masternode's own (``server.py``, ``session.py``, the compiled index and
fan-out) over a ``StreamSource``.  A snapshot or a submission is answered once the
stream has reached the ``seq`` the masternode gave with it, so a wallet sees the same
messages, ``seq`` values included, as on the masternode.  Several edges may listen
on one port (SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import logging
import signal
import ssl
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import nats
import nats.errors
import orjson
from nats.js.api import ConsumerConfig, DeliverPolicy
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from timefast import __version__
from timefast.bus import FAILURES, MSG_ID, decode, stream_name, subject
from timefast.errors import RequestError
from timefast.journal import Event, Journal
from timefast.node import FD_RESERVE, raise_fd_limit
from timefast.server import REFUSED_WAITING, WalletServer
from timefast.session import Limits
from timefast.settings import Settings
from timefast.source import Done, Gauge, Labelled, Listener, WalletSource

log = logging.getLogger("timefast.edge")

WAIT_TIMEOUT = 10.0  # seconds an answer may wait for the stream to reach its seq
RPC_TIMEOUT = 10.0  # seconds for the masternode's RPC to answer
RETRY = 0.5  # seconds between attempts to reach NATS or the RPC
HEARTBEAT = 1.0  # seconds between JetStream heartbeats: a lost consumer is seen in 2
# JSON-RPC error codes (rpc.LEDGER_CODES) back to SPEC 3.4's names, when the error
# carries none of its own.
RPC_NAMES = {-26: "TX_INVALID", -27: "TX_CONFLICT", -5: "NOT_FOUND", -8: "INVALID_ADDRESS",
             -32001: "UNAVAILABLE"}


class EdgeRpc:
    """JSON-RPC calls to the masternode over one WebSocket, opened when needed."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.headers: dict[str, str] = {}
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                f"{user}:{password}".encode()).decode()
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.url = urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", "", ""))
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ws: ClientConnection | None = None
        self._opening: asyncio.Lock | None = None
        self._reader: asyncio.Task[None] | None = None

    async def call(self, method: str, *params: Any) -> Any:
        """The method's result; ``RequestError`` with SPEC 3.4's code on an error,
        ``UNAVAILABLE`` when the masternode cannot be reached."""
        try:
            ws = await self._connection()
            rid = next(self.ids)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.pending[rid] = fut
            try:
                await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                                            "params": list(params)}).decode())
                reply = await asyncio.wait_for(fut, RPC_TIMEOUT)
            finally:
                self.pending.pop(rid, None)
        except (OSError, TimeoutError, ConnectionError, WebSocketException) as e:
            raise RequestError("UNAVAILABLE", "the masternode's RPC cannot be reached: "
                               f"{e or type(e).__name__}") from None
        err = reply.get("error")
        if err is not None:
            data = err.get("data") if isinstance(err.get("data"), dict) else {}
            code = data.get("code") or RPC_NAMES.get(err.get("code"), "BAD_REQUEST")
            raise RequestError(str(code), str(err.get("message", "")))
        return reply.get("result")

    async def _connection(self) -> ClientConnection:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.ws is None:
                ws = await asyncio.wait_for(connect(
                    self.url, additional_headers=self.headers, max_size=8 << 20,
                    open_timeout=RPC_TIMEOUT, compression=None), RPC_TIMEOUT)
                self.ws = ws
                self._reader = asyncio.get_running_loop().create_task(self._read(ws))
            return self.ws

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                reply = orjson.loads(message)
                rid = reply.get("id") if isinstance(reply, dict) else None
                fut = self.pending.get(rid) if isinstance(rid, int) else None
                if fut is not None and not fut.done():
                    fut.set_result(reply)
        except Exception as e:  # the connection broke: callers see it below
            log.debug("RPC connection lost: %s", e)
        finally:
            if self.ws is ws:
                self.ws = None
            for fut in list(self.pending.values()):
                if not fut.done():
                    fut.set_exception(ConnectionError("the RPC connection closed"))

    async def close(self) -> None:
        """Close the WebSocket."""
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None:
            self._reader.cancel()


class StreamSource(WalletSource):
    """The masternode's events from its stream, its answers from its RPC."""

    def __init__(self, rpc: EdgeRpc, info: dict[str, Any], keep: int, keep_bytes: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.rpc = rpc
        self.loop = loop
        self.network = str(info["network"])
        self.public_key = str(info["masternode"])
        self.address = str(info["address"])
        self.listeners: list[Listener] = []
        self.window = Journal(keep, 0, keep_bytes)  # only its replay window is used
        self._seq = 0  # the last event handed to the listeners
        self._height = int(info["height"])
        self.stream_seq = 0  # the stream's own sequence of that event
        self.consumed = 0
        self.gaps = 0
        self.connected = False
        self.waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def listen(self, fn: Listener) -> None:
        self.listeners.append(fn)

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def height(self) -> int:
        return self._height

    # -- the feed --------------------------------------------------------------------

    def on_event(self, stream_seq: int, e: Event) -> None:
        """One event from the stream, in order; those already had are skipped."""
        self.stream_seq = stream_seq
        if e.seq <= self._seq:
            return
        if self._seq and e.seq != self._seq + 1:
            # The stream dropped events this edge never had (it was away longer
            # than the stream keeps them): no resume may reach back past this one.
            log.warning("stream jumped from seq %d to %d: resumes from before it get "
                        "a snapshot", self._seq, e.seq)
            self.window.load([], lambda _: None)
            self.gaps += 1
        self._seq = e.seq
        self.consumed += 1
        if e.addresses is None and e.type == "NewBlock":
            height = orjson.loads(e.payload)["data"]["height"]
            self._height = max(self._height, height)
        self.window.keep_events([e])
        for listener in self.listeners:
            listener([e])
        waiters = self.waiters
        while waiters and waiters[0][0] <= e.seq:
            heapq.heappop(waiters)[2]()

    def oldest_seq(self) -> int:
        return self.window.oldest(self._seq)

    def events_for(self, addresses: Iterable[str], seq: int) -> tuple[bool, list[Event]]:
        return self.window.events_for(addresses, seq, self._seq)

    def reach(self, seq: int, done: Done) -> None:
        self.when(seq, lambda: done(None, None), lambda: done(None, self._behind(seq)))

    def _behind(self, seq: int) -> RequestError:
        return RequestError("UNAVAILABLE", f"this edge's event stream has not reached seq "
                            f"{seq} (it is at {self._seq}); try again")

    def when(self, seq: int, fn: Callable[[], None], failed: Callable[[], None]) -> None:
        """Call ``fn`` once the stream has reached ``seq``; ``failed`` if it does not
        within WAIT_TIMEOUT."""
        if seq <= self._seq:
            fn()
            return
        done = False

        def ready() -> None:
            nonlocal done
            if not done:
                done = True
                timer.cancel()
                fn()

        def late() -> None:
            nonlocal done
            if not done:
                done = True
                failed()

        timer = self.loop.call_later(WAIT_TIMEOUT, late)
        heapq.heappush(self.waiters, (seq, next(self._order), ready))

    # -- answers ---------------------------------------------------------------------

    def _ask(self, done: Done, method: str, *params: Any,
             then: Callable[[Any], tuple[int, Any]] | None = None) -> None:
        """Call ``method``; ``done`` its result (through ``then``: ``(seq, value)``,
        given once the stream has reached that seq)."""
        async def run() -> None:
            try:
                result = await self.rpc.call(method, *params)
            except RequestError as e:
                done(None, e)
                return
            if then is None:
                done(result, None)
                return
            seq, value = then(result)
            self.when(seq, lambda: done(value, None), lambda: done(None, self._behind(seq)))
        self.loop.create_task(run())

    def snapshots(self, addresses: list[str], after: tuple[str, int] | None,
                  done: Done) -> None:
        params: list[Any] = [addresses]
        if after is not None:
            params.append(f"{after[0]}:{after[1]}")
        self._ask(done, "getsnapshot", *params,
                  then=lambda r: (r["seq"], (r["seq"], r["snapshot"])))

    def get_transaction(self, txid: Any, done: Done) -> None:
        self._ask(done, "gettransaction", txid)

    def history(self, address: Any, limit: Any, before: Any, done: Done) -> None:
        self._ask(done, "getaddresshistory", address, limit, before)

    def submit(self, prepared: Any, done: Done) -> None:
        self._ask(done, "submittransaction", prepared, then=lambda r: (r["seq"], r["txid"]))

    def status(self) -> dict[str, Any]:
        return {"edge": True, "network": self.network, "node": self.public_key,
                "address": self.address, "height": self._height, "seq": self._seq,
                "stream_connected": self.connected}

    def metrics(self) -> tuple[list[Gauge], list[Labelled]]:
        return ([("timefast_edge_stream_connected", "gauge",
                  "1 while the edge reads the masternode's stream", int(self.connected)),
                 ("timefast_edge_events_consumed_total", "counter",
                  "Events read from the stream", self.consumed),
                 ("timefast_edge_stream_gaps_total", "counter",
                  "Times the stream skipped events this edge never had", self.gaps)],
                [])


class Edge:
    """A running edge: the RPC client, the stream consumer and the wallet port."""

    def __init__(self, settings: Settings) -> None:
        if not settings.event_bus or not settings.node_rpc:
            raise ValueError("an edge needs EVENT_BUS and NODE_RPC")
        self.settings = settings
        self.rpc = EdgeRpc(settings.node_rpc)
        self.source: StreamSource | None = None
        self.wallets: WalletServer | None = None
        self.ws_addresses: list[tuple[str, int]] = []
        self.nc: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Learn the masternode (waits for its RPC), then serve and consume."""
        s = self.settings
        loop = asyncio.get_running_loop()
        raise_fd_limit(s.max_connections + REFUSED_WAITING + FD_RESERVE)
        info = await self._node_info()
        self.source = src = StreamSource(self.rpc, info, s.replay_events, s.replay_bytes, loop)
        limits = Limits(s.max_subscriptions, s.max_message_bytes, s.send_buffer_bytes,
                        s.replay_events, s.wallet_rate, s.wallet_burst)
        origins: list[str | None] | None = None
        if s.allowed_origins:
            origins = [*s.allowed_origins, *([None] if s.allow_no_origin else [])]
        self.wallets = WalletServer(None, limits, max_connections=s.max_connections,
                                    max_connections_per_ip=s.max_connections_per_ip,
                                    heartbeat_interval=s.heartbeat_interval, origins=origins,
                                    open_timeout=s.open_timeout,
                                    close_timeout=s.close_timeout, source=src)
        ctx = None
        if s.tls_cert and s.tls_key:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(s.tls_cert, s.tls_key)
        self.ws_addresses = await self.wallets.listen(*s.ws_addr, ssl_context=ctx,
                                                      reuse_port=True)
        self._task = loop.create_task(self._consume())
        log.info("⏱  timefast %s edge of masternode %s (%s): wallets %s://%s:%d, stream %s "
                 "on %s, RPC %s", __version__, src.public_key[:16], src.network,
                 "wss" if ctx else "ws", *self.ws_addresses[0],
                 stream_name(src.network, src.public_key), ",".join(s.event_bus or ()),
                 self.rpc.url)

    async def _node_info(self) -> dict[str, Any]:
        warned = False
        while True:
            try:
                info: dict[str, Any] = await self.rpc.call("getinfo")
                return info
            except RequestError as e:
                if not warned:
                    log.warning("waiting for the masternode's RPC %s: %s", self.rpc.url,
                                e.message)
                    warned = True
                await asyncio.sleep(RETRY)

    async def _consume(self) -> None:
        """Read the stream from where this edge is (or, at start, the last
        REPLAY_EVENTS of it) for as long as the edge runs."""
        src = self.source
        assert src is not None
        s = self.settings
        name, subj = stream_name(src.network, src.public_key), subject(src.network,
                                                                      src.public_key)

        async def on_msg(msg: Any) -> None:
            src.on_event(msg.metadata.sequence.stream,
                         decode(int(msg.headers[MSG_ID]), msg.data))

        warned = False
        while True:
            sub = None
            try:
                if self.nc is None:
                    self.nc = await nats.connect(
                        servers=list(s.event_bus or ()), connect_timeout=2,
                        reconnect_time_wait=RETRY, max_reconnect_attempts=-1,
                        name="timefast edge")
                js = self.nc.jetstream()
                info = await js.stream_info(name)
                start = src.stream_seq + 1 if src.stream_seq else max(
                    info.state.first_seq, info.state.last_seq - s.replay_events + 1, 1)
                # An ordered consumer: in order, and recreated by the client from
                # the last message it had when its heartbeats stop (NATS restarted).
                sub = await js.subscribe(
                    subj, stream=name, cb=on_msg, ordered_consumer=True,
                    idle_heartbeat=HEARTBEAT,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                          opt_start_seq=start))
                src.connected = True
                if warned:
                    log.info("📡 reading stream %s again from its seq %d", name, start)
                warned = False
                while self.nc.is_connected or self.nc.is_reconnecting:
                    src.connected = self.nc.is_connected
                    await asyncio.sleep(RETRY)
            except asyncio.CancelledError:
                raise
            except FAILURES as e:
                if not warned:
                    log.warning("📡 stream %s on %s: %s; retrying", name,
                                ",".join(s.event_bus or ()), e or type(e).__name__)
                warned = True
            src.connected = False
            if sub is not None:
                with contextlib.suppress(*FAILURES):
                    await sub.unsubscribe()
            if self.nc is not None and self.nc.is_closed:
                self.nc = None
            await asyncio.sleep(RETRY)

    async def stop(self) -> None:
        """Stop accepting, close wallets with 1001, let go of NATS and the RPC."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.wallets is not None:
            await self.wallets.shutdown(1001, "going away")
        if self.nc is not None:
            with contextlib.suppress(*FAILURES):
                await asyncio.wait_for(self.nc.close(), 2)
        await self.rpc.close()
        log.info("stopped")

    async def run(self) -> None:
        """Start, then serve until SIGINT or SIGTERM."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("signal received: shutting down")
        await self.stop()
