"""One peer link, and the node-wide relay and address records, sans-I/O (SPEC 7.2-7.4).

``Link`` is the state machine of one WebSocket link at path ``/p2p``. Its caller owns
the socket and the clock: it passes each received text frame with ``now`` (any
monotonic seconds) to ``receive_frame``, calls ``tick(now)`` by ``next_deadline()``,
sends what ``data_to_send()`` returns, and acts on ``events_received()``:

- ``Authenticated``: the peer proved its key (``masternode`` says whether it is in
  MASTERNODES: a plain full node may relay and sync, it never votes);
- ``Received``: an application message (``Addr`` already signature-checked);
- ``Misbehaviour``: count it (``timefast_peer_misbehaviour_total``); a ``Closed``
  with 1008 or 1009 follows;
- ``Closed``: close the WebSocket with this code and reason; the link is done.

Handshake: both sides send ``Hello`` at once (queued by the constructor), then
``Auth`` signed over the peer's nonce. Before the peer's ``Auth`` verifies, any other
message closes the link (1008), as do a second ``Hello`` or ``Auth``, another network
id or protocol version, and a frame that does not parse (1009 if too large). Once
open, the link sends ``Ping`` every ``ping_interval`` and closes (1011) after
``silence_timeout`` without a frame; a handshake not done in ``handshake_timeout``
closes likewise.

``RelayFilter`` (one per node) says which ``Tx`` and ``Votes`` to relay, once each,
and finds vote batches that equivocate; ``AddrBook`` (one per node) keeps the newest
``Addr`` per key for gossip. ``link_stays`` decides between two links of one pair.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

from nacl.signing import SigningKey

from timefast import wire
from timefast.wire import (
    CLOSE_POLICY,
    MAX_P2P_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Addr,
    Auth,
    Hello,
    Message,
    Ping,
    Pong,
    StartHeight,
    Votes,
)

PING_INTERVAL = 10.0
SILENCE_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0

CLOSE_NORMAL = 1000
CLOSE_TIMEOUT = 1011  # as websockets closes a connection whose keepalive failed


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The peer's ``Auth`` verified: the link is open."""

    public_key: str
    masternode: bool
    hello: Hello


@dataclass(frozen=True, slots=True)
class Received:
    """An application message from an authenticated peer."""

    message: Message


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """The peer broke the protocol (counted); a ``Closed`` follows."""

    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The link is over: close the WebSocket with ``code`` and ``reason``."""

    code: int
    reason: str


Event = Authenticated | Received | Misbehaviour | Closed

_HELLO_WAIT, _AUTH_WAIT, _OPEN, _CLOSED = range(4)


def link_stays(dialer: str, accepter: str) -> bool:
    """Whether a link dialled by ``dialer`` to ``accepter`` is the one kept when a pair
    of keys has two links: the one dialled by the smaller public key stays (SPEC 7.2).
    Both sides decide alike, so they close the same one."""
    return dialer.lower() < accepter.lower()


class Link:
    """The protocol state of one peer link (see the module docstring)."""

    def __init__(self, key: SigningKey, network_id: bytes, masternodes: Collection[str], *,
                 outbound: bool, now: float, height: int, tip: str, listen: str | None,
                 expected_key: str | None = None,
                 max_message_bytes: int = MAX_P2P_MESSAGE_BYTES,
                 ping_interval: float = PING_INTERVAL,
                 silence_timeout: float = SILENCE_TIMEOUT,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """``outbound``: we dialled. ``expected_key``: the key we meant to reach (from
        an ``Addr``), refused if the peer shows another."""
        self.key = key
        self.public_key = key.verify_key.encode().hex()
        self.network_id = network_id
        self.masternodes = frozenset(k.lower() for k in masternodes)
        self.outbound = outbound
        self.expected_key = expected_key.lower() if expected_key else None
        self.max_message_bytes = max_message_bytes
        self.ping_interval = ping_interval
        self.silence_timeout = silence_timeout
        self.nonce = os.urandom(32)  # fresh per link: an Auth cannot be replayed
        self.peer_hello: Hello | None = None
        self.latency: float | None = None  # seconds, from the last answered Ping
        self._state = _HELLO_WAIT
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._last_heard = now
        self._handshake_deadline = now + handshake_timeout
        self._next_ping = 0.0
        self._ping_nonce = 0
        self._ping_sent_at: float | None = None
        self._queue(Hello(PROTOCOL_VERSION, network_id.hex(), self.public_key, self.nonce.hex(),
                          height, tip, listen))

    # -- what the caller reads -----------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """Whether the peer's ``Auth`` verified and the link is not closed."""
        return self._state == _OPEN

    @property
    def closed(self) -> bool:
        """Whether the link is over (a ``Closed`` event was emitted)."""
        return self._state == _CLOSED

    @property
    def peer_key(self) -> str | None:
        """The peer's public key once its ``Hello`` arrived (proved only once
        ``authenticated``)."""
        return self.peer_hello.public_key if self.peer_hello else None

    @property
    def peer_masternode(self) -> bool:
        """Whether the authenticated peer's key is in MASTERNODES (it may vote)."""
        return self._state == _OPEN and self.peer_key in self.masternodes

    @property
    def dialer(self) -> str | None:
        """The key of the side that dialled this link (for ``link_stays``)."""
        return self.public_key if self.outbound else self.peer_key

    @property
    def accepter(self) -> str | None:
        """The key of the side that accepted this link."""
        return self.peer_key if self.outbound else self.public_key

    def data_to_send(self) -> list[bytes]:
        """Frames to send, in order (each a UTF-8 JSON text frame); drained."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        """What happened since the last call, in order; drained."""
        ev, self._events = self._events, []
        return ev

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called (None once closed)."""
        if self._state == _CLOSED:
            return None
        if self._state != _OPEN:
            return min(self._handshake_deadline, self._last_heard + self.silence_timeout)
        return min(self._next_ping, self._last_heard + self.silence_timeout)

    # -- what the caller feeds -----------------------------------------------------

    def receive_frame(self, frame: bytes | str, now: float) -> None:
        """One text frame from the peer."""
        if self._state == _CLOSED:
            return
        try:
            msg = wire.parse(frame, self.max_message_bytes)
        except wire.ParseError as e:
            self._fail(str(e), e.code)
            return
        self.receive(msg, now)

    def receive(self, msg: Message, now: float) -> None:
        """One parsed message from the peer."""
        if self._state == _CLOSED:
            return
        self._last_heard = now
        if self._state == _OPEN:
            self._receive_open(msg, now)
        elif isinstance(msg, Hello):
            if self._state != _HELLO_WAIT:
                self._fail("second Hello")
            else:
                self._receive_hello(msg)
        elif isinstance(msg, Auth):
            if self._state != _AUTH_WAIT:
                self._fail("Auth before Hello")
            else:
                self._receive_auth(msg, now)
        else:
            self._fail(f"{msg.TYPE} before authentication")

    def tick(self, now: float) -> None:
        """Send a due ``Ping``; close a silent link or an unfinished handshake."""
        if self._state == _CLOSED:
            return
        if now >= self._last_heard + self.silence_timeout:
            self._close(CLOSE_TIMEOUT, f"silent for {self.silence_timeout:g} s")
        elif self._state != _OPEN:
            if now >= self._handshake_deadline:
                self._close(CLOSE_TIMEOUT, "handshake not done in time")
        elif now >= self._next_ping:
            self._ping(now)

    def send(self, msg: Message) -> None:
        """Queue an application message (the link must be open). To send one message
        to many links, encode it once with ``wire.encode`` and hand the frame to each
        socket instead."""
        if self._state != _OPEN:
            raise RuntimeError("the link is not authenticated")
        if isinstance(msg, Hello | Auth):
            raise ValueError(f"{msg.TYPE} belongs to the handshake")
        self._queue(msg)

    def misbehaved(self, reason: str) -> None:
        """The caller found the peer at fault (a signature that did not verify in its
        ``Tx`` or ``Votes``, a ``StartHeight`` off regtest...): count and close (1008)."""
        if self._state != _CLOSED:
            self._fail(reason)

    def close(self, reason: str = "closing", code: int = CLOSE_NORMAL) -> None:
        """The caller ends the link (shutdown, duplicate link, too many peers)."""
        if self._state != _CLOSED:
            self._close(code, reason)

    # -- internals -----------------------------------------------------------------

    def _queue(self, msg: Message) -> None:
        self._out.append(wire.encode(msg))

    def _close(self, code: int, reason: str) -> None:
        self._state = _CLOSED
        self._events.append(Closed(code, reason))

    def _fail(self, reason: str, code: int = CLOSE_POLICY) -> None:
        self._events.append(Misbehaviour(reason))
        self._close(code, reason)

    def _receive_hello(self, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            self._fail(f"protocol version {hello.version}, expected {PROTOCOL_VERSION}")
        elif hello.network_id != self.network_id.hex():
            self._fail(f"another network {hello.network_id}")
        elif hello.public_key == self.public_key:
            self._close(CLOSE_NORMAL, "connected to self")
        elif self.expected_key is not None and hello.public_key != self.expected_key:
            self._fail(f"key {hello.public_key}, expected {self.expected_key}")
        else:
            self.peer_hello = hello
            self._state = _AUTH_WAIT
            self._queue(wire.sign_auth(self.key, self.network_id, bytes.fromhex(hello.nonce)))

    def _receive_auth(self, auth: Auth, now: float) -> None:
        assert self.peer_hello is not None  # _AUTH_WAIT is entered with it
        try:
            wire.verify_auth(auth, self.network_id, self.nonce, self.peer_hello.public_key)
        except wire.BadSignature as e:
            self._fail(str(e))
            return
        self._state = _OPEN
        self._next_ping = now + self.ping_interval
        key = self.peer_hello.public_key
        self._events.append(Authenticated(key, key in self.masternodes, self.peer_hello))

    def _receive_open(self, msg: Message, now: float) -> None:
        if isinstance(msg, Ping):
            self._queue(Pong(msg.nonce))
        elif isinstance(msg, Pong):
            if self._ping_sent_at is not None and msg.nonce == self._ping_nonce:
                self.latency = now - self._ping_sent_at
                self._ping_sent_at = None
        elif isinstance(msg, Hello):
            self._fail("second Hello")
        elif isinstance(msg, Auth):
            self._fail("second Auth")
        elif isinstance(msg, Addr):
            try:
                wire.verify_addr(msg, self.network_id)
            except wire.BadSignature as e:
                self._fail(str(e))
                return
            self._events.append(Received(msg))
        elif isinstance(msg, StartHeight) and not self.peer_masternode:
            self._fail("StartHeight from a peer outside MASTERNODES")
        else:
            self._events.append(Received(msg))

    def _ping(self, now: float) -> None:
        self._ping_nonce += 1
        self._ping_sent_at = now
        self._next_ping = now + self.ping_interval
        self._queue(Ping(self._ping_nonce))


# -- node-wide records -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two different signed batches of one voter under one number (SPEC 7.4): the
    evidence, to keep, log and show; both batches' votes still count."""

    voter: str
    batch: int
    first: Votes
    second: Votes


class RelayFilter:
    """Which transactions and vote batches this node has already relayed, so that
    each reaches every peer once (SPEC 7.3, 7.4); one per node, shared by its links.

    Only what the caller verified goes in: a txid is added after the transaction's
    signatures verified, a batch after its signature verified, so that a copy with a
    broken signature never hides the real one. Both sets are bounded (oldest out
    first): they need to cover the time a message takes to spread, not the chain;
    the ledger remembers the rest.
    """

    def __init__(self, network_id: bytes, max_txids: int = 262_144,
                 max_batches: int = 65_536) -> None:
        """``network``: the network id (batch content hashes bind it)."""
        self.network_id = network_id
        self.max_txids = max_txids
        self.max_batches = max_batches
        self._txids: dict[str, None] = {}
        # (voter, batch) -> the batches seen under that number, by content hash
        self._batches: dict[tuple[str, int], dict[bytes, Votes]] = {}

    def tx_known(self, txid: str) -> bool:
        """Whether the transaction was relayed already (skip checking it again)."""
        return txid in self._txids

    def add_tx(self, txid: str) -> bool:
        """Record a transaction whose signatures verified; True if it is new here
        (relay it to every peer but the one it came from)."""
        if txid in self._txids:
            return False
        self._txids[txid] = None
        if len(self._txids) > self.max_txids:
            del self._txids[next(iter(self._txids))]
        return True

    def votes_known(self, votes: Votes) -> bool:
        """Whether this very batch (voter, number and content) was relayed already."""
        seen = self._batches.get((votes.voter, votes.batch))
        return seen is not None and votes.content_hash(self.network_id) in seen

    def add_votes(self, votes: Votes) -> tuple[bool, Equivocation | None]:
        """Record a batch whose signature verified. Returns (new: relay it,
        evidence): evidence when another batch with other content was seen under the
        same (voter, batch); that batch is new too and is relayed, so every node sees
        both."""
        key = (votes.voter, votes.batch)
        content = votes.content_hash(self.network_id)
        seen = self._batches.get(key)
        if seen is None:
            self._batches[key] = {content: votes}
            if len(self._batches) > self.max_batches:
                del self._batches[next(iter(self._batches))]
            return True, None
        if content in seen:
            return False, None
        first = next(iter(seen.values()))
        seen[content] = votes
        return True, Equivocation(votes.voter, votes.batch, first, votes)


class AddrBook:
    """The newest signed ``Addr`` per key, for gossip and dialling (SPEC 7.2).

    Records of MASTERNODES keys are always kept; others are bounded by
    ``max_records``, the oldest (by timestamp) dropped first. A record dated more
    than ``max_future`` seconds ahead of ``now`` or older than ``max_age`` is refused,
    so a node re-signs its own record more often than ``max_age``.
    """

    def __init__(self, network_id: bytes, masternodes: Collection[str], *,
                 max_records: int = 1024, max_future: float = 600.0,
                 max_age: float = 86_400.0) -> None:
        """``network``: the network id the records are signed for."""
        self.network_id = network_id
        self.masternodes = frozenset(k.lower() for k in masternodes)
        self.max_records = max_records
        self.max_future = max_future
        self.max_age = max_age
        self._records: dict[str, Addr] = {}

    def offer(self, addr: Addr, now: float, checked: bool = False) -> bool:
        """Keep ``addr`` if it is the newest for its key; True if kept (gossip it on).
        Its signature is checked here unless ``checked`` (a ``Link`` checked it);
        a bad one raises ``wire.BadSignature``. ``now``: unix seconds."""
        if not now - self.max_age <= addr.timestamp <= now + self.max_future:
            return False
        held = self._records.get(addr.public_key)
        if held is not None and held.timestamp >= addr.timestamp:
            return False
        if not checked:
            wire.verify_addr(addr, self.network_id)
        self._records[addr.public_key] = addr
        if held is None and addr.public_key not in self.masternodes:
            others = [a for a in self._records.values()
                      if a.public_key not in self.masternodes]
            if len(others) > self.max_records:
                oldest = min(others, key=lambda a: a.timestamp)
                del self._records[oldest.public_key]
                return oldest is not addr
        return True

    def get(self, public_key: str) -> Addr | None:
        """The record held for a key."""
        return self._records.get(public_key.lower())

    def records(self, now: float | None = None) -> list[Addr]:
        """Every record held (not older than ``max_age`` when ``now`` is given), to
        send to a new peer."""
        if now is None:
            return list(self._records.values())
        return [a for a in self._records.values() if a.timestamp >= now - self.max_age]

    def __len__(self) -> int:
        return len(self._records)

