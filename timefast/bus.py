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
from SQLite; the ledger prunes no event above that point (``Work.keep_stored_after``).
The wallets of the masternode never wait for any of this.

This module is imported only when EVENT_BUS is set: without it, nothing of NATS is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from timefast.journal import Event
from timefast.ledger import Ledger

log = logging.getLogger("timefast.bus")

WINDOW = 1024  # messages in flight at once (each acknowledged by the stream)
ACK_TIMEOUT = 5.0  # seconds for the stream to acknowledge a message
RETRY = 0.5  # seconds between attempts while NATS cannot be reached
BUFFER = 65_536  # events kept in memory for the publisher; past it, SQLite serves
DUPLICATE_WINDOW = 120.0  # seconds the stream remembers message ids
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST = "Nats-Expected-Last-Sequence"


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
    addresses = None if addrs == b"*" else tuple(addrs.decode().split(",")) if addrs else ()
    return Event(seq, type_.decode(), addresses, payload)


# What a lost or refusing NATS raises: the publisher waits and tries again.
FAILURES: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError,
                                              ConnectionError, ValueError, KeyError)


class Publisher:
    """Publishes the ledger's committed events to its JetStream stream.

    Up to WINDOW messages are in flight; the stream's acknowledgements come back on
    an inbox of this publisher (``<inbox>.<epoch>.<seq>``), each moving ``acked``.
    A failure starts a new epoch: acknowledgements of the old one are ignored, and
    the publisher resumes from what the stream says it holds.
    """

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
        self.sent = 0  # the last event sent in this epoch
        self.in_flight = 0  # sent, not yet acknowledged
        self.stream_sent = 0  # the stream sequence the last sent message is to get
        self.connected = False
        self.published = 0
        self.nc: Any = None
        self.inbox = ""
        self.epoch = 0
        self.failure: str | None = None
        self._progress = 0.0  # when the last acknowledgement came
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Until the stream has said what it holds, nothing may be pruned.
        ledger.work.keep_stored_after(0)
        ledger.listen(self.on_events)

    def start(self) -> None:
        """Start publishing in the background."""
        self._task = asyncio.get_running_loop().create_task(self._publish_forever())

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

    async def _publish_forever(self) -> None:
        failed = False
        while True:
            try:
                if self.nc is None:
                    self.nc = await nats.connect(
                        servers=self.servers, connect_timeout=2, reconnect_time_wait=RETRY,
                        max_reconnect_attempts=-1, allow_reconnect=True,
                        name=f"timefast {self.stream}")
                    self.inbox = self.nc.new_inbox()
                    await self.nc.subscribe(f"{self.inbox}.>", cb=self._on_ack)
                js = self.nc.jetstream()
                await self._sync(js)
                if failed:
                    log.info("📡 event bus back: stream %s holds up to seq %d",
                             self.stream, self.acked)
                failed = False
                self.connected = True
                await self._publish()
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
        """Make sure the stream exists; learn the last event it holds; a new epoch."""
        self.epoch += 1
        self.failure = None
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
        self.stream_sent = info.state.last_seq
        self.acked = self.sent = acked
        self.in_flight = 0
        self.ledger.work.keep_stored_after(acked)

    def _take(self, after: int, n: int) -> list[Event]:
        """The next events after ``after``: from memory, else from SQLite."""
        buf = self.buffer
        while buf and buf[0].seq <= after:
            buf.popleft()
        if buf and buf[0].seq == after + 1:
            return [buf[i] for i in range(min(n, len(buf)))]
        return self.ledger.reads.stored_events(after, n)

    async def _on_ack(self, msg: Any) -> None:
        """The stream's answer to one message: ``<inbox>.<epoch>.<seq>``."""
        _, _, tail = msg.subject.rpartition(f"{self.inbox}.")
        epoch, _, seq = tail.partition(".")
        if int(epoch) != self.epoch:
            return  # sent before the last failure: _sync read what the stream holds
        try:
            ack = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            ack = {"error": {"description": "no acknowledgement"}}
        if "error" in ack or ack.get("duplicate") or not isinstance(ack.get("seq"), int):
            # Refused (not the next one, or the stream away): resynchronize.
            self.failure = str(ack.get("error", {}).get("description") or ack)
        else:
            self.acked = int(seq)
            self.in_flight -= 1
            self.published += 1
            self._progress = time.monotonic()
        self._wake.set()

    async def _publish(self) -> None:
        """Publish what the stream lacks, WINDOW messages in flight at most, until a
        failure."""
        nc = self.nc
        while True:
            if self.failure is not None:
                raise nats.errors.Error(f"the stream refused a message: {self.failure}")
            assert self.acked is not None
            self.ledger.work.keep_stored_after(self.acked)
            room = WINDOW - self.in_flight
            if room > 0 and self.sent < self.target:
                events = self._take(self.sent, room)
                for e in events:
                    await nc.publish(self.subject, encode(e),
                                     reply=f"{self.inbox}.{self.epoch}.{e.seq}",
                                     headers={MSG_ID: str(e.seq),
                                              EXPECTED_LAST: str(self.stream_sent)})
                    self.stream_sent += 1
                    self.sent = e.seq
                    self.in_flight += 1
                if events:
                    if self.in_flight == len(events):
                        self._progress = time.monotonic()
                    continue
            self._wake.clear()
            if self.in_flight:
                wait = self._progress + ACK_TIMEOUT - time.monotonic()
                if wait <= 0:
                    raise TimeoutError(f"no acknowledgement from the stream for "
                                       f"{ACK_TIMEOUT:g} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            else:
                await self._wake.wait()
