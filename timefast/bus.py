"""The event bus (EVENT_BUS): committed wallet events to NATS JetStream, for edges.

One stream per masternode, ``TIMEFAST_<NETWORK>_<first 16 hex of its public key>``,
subject ``timefast.<network>.<16 hex>.events``.  Each event is one message: its
``Nats-Msg-Id`` is the event's ``seq`` (a republish after a crash is dropped by the
stream as a duplicate), its body the event's type, its addresses and its payload
(``encode``), so that an edge fans it out exactly as the masternode does.

The publisher follows the ledger: every committed event is published after its
commit, in ``seq`` order, each message sent with ``Nats-Expected-Last-Sequence`` so
that the stream refuses anything but the next one (no gap, no reordering, even
with many messages in flight).  On any failure (NATS down, a refusal) it asks the
stream what it holds last and goes on from there, reading the events it lacks back
from SQLite; the ledger prunes no event above that point (``Ledger.publish_floor``).
The wallets of the masternode never wait for any of this.

This module is imported only when EVENT_BUS is set: without it, nothing of NATS is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from timefast.journal import Event
from timefast.ledger import Ledger

log = logging.getLogger("timefast.bus")

WINDOW = 512  # messages in flight at once (each acknowledged by the stream)
ACK_TIMEOUT = 5.0  # seconds for the stream to acknowledge a message
RETRY = 0.5  # seconds between attempts while NATS cannot be reached
BUFFER = 65_536  # events kept in memory for the publisher; past it, SQLite serves
DUPLICATE_WINDOW = 120.0  # seconds the stream remembers message ids
MSG_ID = "Nats-Msg-Id"


def stream_name(network: str, public_key: str) -> str:
    """The JetStream stream of one masternode's events."""
    return f"TIMEFAST_{network.upper()}_{public_key[:16].upper()}"


def subject(network: str, public_key: str) -> str:
    """The subject the masternode's events are published on."""
    return f"timefast.{network}.{public_key[:16].lower()}.events"


def encode(e: Event) -> bytes:
    """A message body: ``type \\n addresses (comma-separated, * for everyone) \\n
    payload``.  Addresses are ``[A-Za-z0-9_]``, so neither separator occurs in them."""
    addrs = b"*" if e.addresses is None else ",".join(e.addresses).encode()
    return e.type.encode() + b"\n" + addrs + b"\n" + e.payload


def decode(seq: int, body: bytes) -> Event:
    """The event of a message body made by ``encode``."""
    type_, addrs, payload = body.split(b"\n", 2)
    return Event(seq, type_.decode(), None if addrs == b"*" else tuple(
        addrs.decode().split(",")), payload)


# What a lost or refusing NATS raises: the publisher waits and tries again.
FAILURES: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError,
                                              ConnectionError, ValueError, KeyError)


class Publisher:
    """Publishes the ledger's committed events to its JetStream stream."""

    def __init__(self, ledger: Ledger, servers: tuple[str, ...], keep: int) -> None:
        self.ledger = ledger
        self.servers = list(servers)
        self.keep = keep
        self.stream = stream_name(ledger.network, ledger.public_key)
        self.subject = subject(ledger.network, ledger.public_key)
        # Events heard from the ledger and not yet published (a cache of SQLite).
        self.buffer: deque[Event] = deque()
        self.target = ledger.seq  # the last committed event
        self.acked: int | None = None  # the last event the stream holds; None: not asked
        self.stream_last = 0  # the stream's own sequence of its last message
        self.connected = False
        self.published = 0
        self.nc: Any = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Until the stream has said what it holds, nothing may be pruned.
        ledger.publish_floor = 0
        ledger.listeners.append(self.on_events)

    def start(self) -> None:
        """Start publishing in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop publishing (what the stream lacks is published at the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.nc is not None:
            with contextlib.suppress(*FAILURES):
                await asyncio.wait_for(self.nc.close(), 2)

    def on_events(self, events: list[Event]) -> None:
        """Ledger listener: called after each commit."""
        self.buffer.extend(events)
        if len(self.buffer) > BUFFER:
            # NATS is away for long: SQLite holds them all, memory need not.
            self.buffer.clear()
        self.target = events[-1].seq
        self._wake.set()

    def info(self) -> dict[str, Any]:
        """For ``getinfo``: where the publisher stands."""
        return {"stream": self.stream, "connected": self.connected,
                "published_seq": self.acked}

    async def _run(self) -> None:
        failed = False
        while True:
            try:
                if self.nc is None:
                    self.nc = await nats.connect(
                        servers=self.servers, connect_timeout=2, reconnect_time_wait=RETRY,
                        max_reconnect_attempts=-1, allow_reconnect=True,
                        name=f"timefast {self.stream}")
                js = self.nc.jetstream()
                await self._sync(js)
                if failed:
                    log.info("📡 event bus back: stream %s holds up to seq %d",
                             self.stream, self.acked)
                failed = False
                self.connected = True
                while True:
                    await self._publish(js)
                    if self.acked is not None and self.acked >= self.target:
                        self._wake.clear()
                        await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except FAILURES as e:
                if not failed:
                    log.warning("📡 event bus %s: %s; wallets here are served as usual, "
                                "the stream catches up when it is back",
                                ",".join(self.servers), e or type(e).__name__)
                failed = True
                self.connected = False
                if self.nc is not None and self.nc.is_closed:
                    self.nc = None
                await asyncio.sleep(RETRY)

    async def _sync(self, js: Any) -> None:
        """Make sure the stream exists; learn the last event it holds."""
        config = StreamConfig(name=self.stream, subjects=[self.subject],
                              max_msgs=self.keep, discard=DiscardPolicy.OLD,
                              storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW)
        try:
            info = await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # It exists with other limits (REPLAY_EVENTS changed): take ours.
            info = await js.update_stream(config)
        state = info.state
        acked = 0
        if state.messages:
            last = await js.get_msg(self.stream, state.last_seq)
            acked = int((last.headers or {})[MSG_ID])
        if acked > self.ledger.seq:
            # The stream tells of events this database never had (a new DATA_DIR
            # with the same key): edges must not serve them.
            log.error("📡 stream %s holds events up to seq %d, beyond this node's %d: "
                      "purging it", self.stream, acked, self.ledger.seq)
            await js.purge_stream(self.stream)
            info = await js.stream_info(self.stream)
            acked = 0
        self.stream_last = info.state.last_seq
        self.acked = acked
        self.ledger.publish_floor = acked

    def _take(self, after: int) -> list[Event]:
        """The next events after ``after``: from memory, else from SQLite."""
        buf = self.buffer
        while buf and buf[0].seq <= after:
            buf.popleft()
        if buf and buf[0].seq == after + 1:
            return [buf[i] for i in range(min(WINDOW, len(buf)))]
        return self.ledger.stored_events(after, WINDOW)

    async def _publish(self, js: Any) -> None:
        """Publish everything committed that the stream lacks, WINDOW at a time."""
        assert self.acked is not None
        while self.acked < self.target:
            events = self._take(self.acked)
            if not events:
                return
            futures = []
            try:
                for i, e in enumerate(events):
                    futures.append(await js.publish_async(
                        self.subject, encode(e),
                        headers={MSG_ID: str(e.seq),
                                 "Nats-Expected-Last-Sequence": str(self.stream_last + i)}))
                for e, f in zip(events, futures, strict=False):
                    ack = await asyncio.wait_for(f, ACK_TIMEOUT)
                    self.stream_last = ack.seq
                    self.acked = e.seq
                    self.published += 1
            finally:
                for f in futures:
                    if not f.done():
                        # Answered later or never: its outcome is read back by _sync.
                        f.add_done_callback(_ignore)
                self.ledger.publish_floor = self.acked


def _ignore(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()
