"""One peer link, sans-I/O (SPEC 7.2-7.3).

``Link`` is the state machine of one WebSocket link at path ``/p2p``. Its caller owns
the socket and the clock: it passes each received frame (``str`` for a text frame,
``bytes`` for a binary one) with ``now`` (any monotonic seconds) to
``receive_frame``, calls ``tick(now)`` by ``next_deadline()``, sends what
``data_to_send()`` returns (``str`` as a text frame, ``bytes`` as a binary one), and
acts on ``events_received()``:

- ``Authenticated``: the peer proved its key (``masternode`` says whether it is in
  the voting set: a plain full node may relay and sync, it never votes);
- ``Received``: an application message (``Addr`` already signature-checked);
- ``Misbehaviour``: count it (``timefast_peer_misbehaviour_total``); a ``Closed``
  with 1008 or 1009 follows;
- ``Closed``: close the WebSocket with this code and reason; the link is done.

Handshake (version 2, a SIGMA exchange): both sides send ``Hello`` at once (queued by
the constructor) with a fresh X25519 ephemeral; on the peer's ``Hello`` each sends
``Auth``, signed over the roles, both ephemerals and both keys. A third party that
dials two nodes and relays one's handshake to the other cannot finish it: both of
them accepted, so neither signed the dialler's role, and the session keys are theirs.
Before the peer's ``Auth`` verifies, only ``Hello`` and ``Auth`` may come, as text
frames of at most ``MAX_HANDSHAKE_BYTES`` (checked before parsing); anything else, a
second ``Hello`` or ``Auth``, another network id or protocol version closes the link
(1008). Then each side sends the header of its secretstream (``seal.Sealer``) as
one binary frame, and every later message is one sealed binary frame; a text frame
or a frame that does not open closes the link (1008), a message over
``max_message_bytes`` too (1009). Once open, the link sends ``Ping`` every
``ping_interval`` and closes (1011) after ``silence_timeout`` without a frame; a
handshake not done in ``handshake_timeout`` closes likewise.
``link_stays`` decides between two links of one pair.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from nacl.signing import SigningKey

from timefast import wire
from timefast.p2p.seal import (
    OVERHEAD,
    NotOpened,
    Opener,
    Sealer,
    ephemeral_keypair,
    session_keys,
)
from timefast.wire import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    MAX_HANDSHAKE_BYTES,
    MAX_P2P_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Addr,
    Auth,
    Hello,
    Message,
    Ping,
    Pong,
    StartHeight,
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


def _differs(hello: Hello, network: str, genesis: str) -> str:
    """What differs between a peer's network and ours (``network``, ``genesis``), for
    the operator whose node refused it."""
    if hello.network != network:
        return f"network {hello.network!r}, ours {network!r}"
    if hello.genesis != genesis:
        return f"genesis {hello.genesis}, ours {genesis}"
    return (f"network id {hello.network_id}: the same genesis with another "
            "genesis voting set (MASTERNODES)")


def link_stays(dialer: str, accepter: str) -> bool:
    """Whether a link dialled by ``dialer`` to ``accepter`` is the one kept when a pair
    of keys has two links: the one dialled by the smaller public key stays (SPEC 7.2).
    Both sides decide alike, so they close the same one."""
    return dialer.lower() < accepter.lower()


class Link:
    """The protocol state of one peer link (see the module docstring)."""

    def __init__(self, key: SigningKey, network_id: bytes, masternodes: Collection[str], *,
                 outbound: bool, now: float, height: int, tip: str, listen: str | None,
                 network: str = "regtest", genesis: str = "00" * 32,
                 expected_key: str | None = None,
                 max_message_bytes: int = MAX_P2P_MESSAGE_BYTES,
                 ping_interval: float = PING_INTERVAL,
                 silence_timeout: float = SILENCE_TIMEOUT,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 ephemeral_seed: bytes | None = None) -> None:
        """``outbound``: we dialled. ``network`` and ``genesis`` go in ``Hello`` so
        that a peer of another network id can say what differs. ``expected_key``: the
        key we meant to reach (from an ``Addr``), refused if the peer shows another.
        ``ephemeral_seed``: only for known-answer tests (a link's ephemeral is
        otherwise fresh random, so that its session keys are its own)."""
        self.key = key
        self.public_key = key.verify_key.encode().hex()
        self.network_id = network_id
        self.network = network
        self.genesis = genesis
        self.masternodes = frozenset(k.lower() for k in masternodes)
        self.outbound = outbound
        self._role = 0 if outbound else 1  # in Auth: 0 this side dialled, 1 it accepted
        self.expected_key = expected_key.lower() if expected_key else None
        self.max_message_bytes = max_message_bytes
        self.ping_interval = ping_interval
        self.silence_timeout = silence_timeout
        self.ephemeral, self._ephemeral_secret = ephemeral_keypair(ephemeral_seed)
        self.peer_hello: Hello | None = None
        self.latency: float | None = None  # seconds, from the last answered Ping
        self._state = _HELLO_WAIT
        self._out: list[bytes | str] = []
        self._events: list[Event] = []
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None  # from the peer's stream header on
        self._rx_key = b""
        self._last_heard = now
        self._handshake_deadline = now + handshake_timeout
        self._next_ping = 0.0
        self._ping_nonce = 0
        self._ping_sent_at: float | None = None
        self._queue_text(Hello(PROTOCOL_VERSION, network_id.hex(), network, genesis,
                               self.public_key, self.ephemeral.hex(), height, tip, listen))

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
        """Whether the authenticated peer's key is in the voting set (it may vote)."""
        return self._state == _OPEN and self.peer_key in self.masternodes

    @property
    def dialer(self) -> str | None:
        """The key of the side that dialled this link (for ``link_stays``)."""
        return self.public_key if self.outbound else self.peer_key

    @property
    def accepter(self) -> str | None:
        """The key of the side that accepted this link."""
        return self.peer_key if self.outbound else self.public_key

    def data_to_send(self) -> list[bytes | str]:
        """Frames to send, in order: ``str`` as a text frame (the handshake), ``bytes``
        as a binary one (the stream header, sealed messages); drained."""
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
        """One frame from the peer: ``str`` for a text frame, ``bytes`` for binary."""
        if self._state == _CLOSED:
            return
        if self._state != _OPEN:
            # Refused before parsing: an outsider cannot make the node parse more.
            if not isinstance(frame, str):
                self._fail("binary frame before authentication")
            elif len(frame) > MAX_HANDSHAKE_BYTES:
                self._fail(f"handshake frame over {MAX_HANDSHAKE_BYTES} bytes")
            else:
                self._parse(frame, now, MAX_HANDSHAKE_BYTES)
            return
        if isinstance(frame, str):
            self._fail("unsealed frame after authentication")
        elif self._opener is None:
            try:
                self._opener = Opener(self._rx_key, frame)
            except NotOpened as e:
                self._fail(str(e))
            self._last_heard = now
        elif len(frame) - OVERHEAD > self.max_message_bytes:
            self._fail(f"message of {len(frame) - OVERHEAD} bytes "
                       f"(limit {self.max_message_bytes})", CLOSE_TOO_BIG)
        else:
            try:
                message = self._opener.open(frame)
            except NotOpened as e:
                self._fail(str(e))
                return
            self._parse(message, now, self.max_message_bytes)

    def _parse(self, frame: bytes | str, now: float, limit: int) -> None:
        try:
            msg = wire.parse(frame, limit)
        except wire.ParseError as e:
            self._fail(str(e), e.code)
            return
        self.receive(msg, now)

    def receive(self, msg: Message, now: float) -> None:
        """One parsed message from the peer (as ``receive_frame`` opened it)."""
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
        """Queue an application message, sealed (the link must be open). To send one
        message to many links, encode it once with ``wire.encode`` and hand the bytes
        to each link's ``send_encoded``."""
        if isinstance(msg, Hello | Auth):
            raise ValueError(f"{msg.TYPE} belongs to the handshake")
        self.send_encoded(wire.encode(msg))

    def send_encoded(self, message: bytes) -> None:
        """Queue an already encoded message (``wire.encode``), sealed for this link."""
        if self._state != _OPEN or self._sealer is None:
            raise RuntimeError("the link is not authenticated")
        self._out.append(self._sealer.seal(message))

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

    def _queue_text(self, msg: Message) -> None:
        self._out.append(wire.encode(msg).decode())

    def _close(self, code: int, reason: str) -> None:
        self._state = _CLOSED
        self._sealer = self._opener = None  # nothing of a closed link is kept
        self._events.append(Closed(code, reason))

    def _fail(self, reason: str, code: int = CLOSE_POLICY) -> None:
        self._events.append(Misbehaviour(reason))
        self._close(code, reason)

    def _receive_hello(self, hello: Hello) -> None:
        if hello.network_id != self.network_id.hex():
            self._fail(f"another network: {_differs(hello, self.network, self.genesis)}")
        elif hello.public_key == self.public_key:
            self._close(CLOSE_NORMAL, "connected to self")
        elif self.expected_key is not None and hello.public_key != self.expected_key:
            self._fail(f"key {hello.public_key}, expected {self.expected_key}")
        elif hello.ephemeral == self.ephemeral.hex():
            # Our own Hello reflected back: no session key would be secret.
            self._fail("the peer's ephemeral is ours")
        else:
            self.peer_hello = hello
            self._state = _AUTH_WAIT
            self._queue_text(wire.sign_auth(self.key, self.network_id, self._role,
                                            self.ephemeral, bytes.fromhex(hello.ephemeral),
                                            hello.public_key))

    def _receive_auth(self, auth: Auth, now: float) -> None:
        hello = self.peer_hello
        assert hello is not None  # _AUTH_WAIT is entered with it
        peer_ephemeral = bytes.fromhex(hello.ephemeral)
        try:
            wire.verify_auth(auth, self.network_id, self._role, self.ephemeral,
                             peer_ephemeral, self.public_key, hello.public_key)
        except wire.BadSignature as e:
            self._fail(str(e))
            return
        self._rx_key, tx_key = session_keys(self.outbound, self.ephemeral,
                                            self._ephemeral_secret, peer_ephemeral)
        self._ephemeral_secret = b""  # the session keys are made: forward secrecy
        self._sealer = Sealer(tx_key)
        self._out.append(self._sealer.header)
        self._state = _OPEN
        self._next_ping = now + self.ping_interval
        key = hello.public_key
        self._events.append(Authenticated(key, key in self.masternodes, hello))

    def _receive_open(self, msg: Message, now: float) -> None:
        if isinstance(msg, Ping):
            self.send(Pong(msg.nonce))
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
            self._fail("StartHeight from a peer outside the voting set")
        else:
            self._events.append(Received(msg))

    def _ping(self, now: float) -> None:
        self._ping_nonce += 1
        self._ping_sent_at = now
        self._next_ping = now + self.ping_interval
        self.send(Ping(self._ping_nonce))
