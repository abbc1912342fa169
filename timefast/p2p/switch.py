"""The switch (SPEC 7.2-7.4): sockets around the sans-I/O links, and dispatch.

Like CometBFT's switch, ``Switch`` owns the peer connections and nothing of what
they carry: it listens on ``P2P_ADDR`` (WebSocket, path ``/p2p``), dials ``PEERS``
(and ``addnode``, and masternodes learnt from ``Addr``) with backoff, runs one
``link.Link`` per connection, keeps one authenticated link per key (the one the
smaller key dialled, SPEC 7.2), refuses inbound full nodes past ``MAX_PEERS`` and
counts misbehaviour.  Each message a link receives goes to the one reactor that
registered its type (``add_reactor``); reactors hear of links coming up and going
down, and send through ``broadcast``, ``send_to`` and ``misbehaved``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nacl.signing import SigningKey
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import Request, Response

from timefast import wire
from timefast.ledger import Ledger
from timefast.p2p.link import Authenticated, Closed, Link, Misbehaviour, Received, link_stays
from timefast.p2p.seal import OVERHEAD
from timefast.rules import genesis_hash

log = logging.getLogger("timefast.p2p")

PATH = "/p2p"
BACKOFF_MIN = 1.0  # seconds before dialling a lost peer again, doubling...
BACKOFF_MAX = 30.0  # ...up to this
TICK = 1.0  # seconds between a link's timer checks (pings every 10 s, silence 30 s)
# Bytes queued to one peer before it is treated as stuck and closed.
PEER_BUFFER = 64 << 20


@dataclass(eq=False)
class Peer:
    """One connection to a peer and its link state."""

    link: Link
    address: str  # host:port as dialled, or the remote address of an inbound link
    inbound: bool
    send: Callable[[bytes | str], None] = field(repr=False)
    height: int = -1
    tip: str = ""
    misbehaviour: int = 0
    queued: int = 0  # bytes handed to the socket and not yet written
    # The link ended: the connection's task closes the socket with this code.
    close_code: tuple[int, str] | None = None

    @property
    def key(self) -> str | None:
        """The peer's public key once its link authenticated."""
        return self.link.peer_key


class Reactor:
    """What registers with the switch: the message types it takes (``MESSAGES``,
    each taken by one reactor only) and what it does with them.  The defaults do
    nothing; ``receive`` refuses any type the reactor did not declare."""

    MESSAGES: ClassVar[tuple[type[wire.Message], ...]] = ()

    def receive(self, peer: Peer, msg: wire.Message) -> None:
        """A message of one of ``MESSAGES`` from an authenticated peer."""
        self.refuse(msg)

    def refuse(self, msg: wire.Message) -> None:
        """Raise for a message of a type this reactor does not take."""
        raise TypeError(f"{type(self).__name__} does not take {msg.TYPE}")

    def peer_up(self, peer: Peer, hello: wire.Hello) -> None:
        """``peer`` authenticated and is kept (after the node's ``Status``)."""

    def peer_down(self, peer: Peer) -> None:
        """``peer``'s authenticated link ended."""

    def start(self) -> None:
        """The switch listens (its ``advertise`` known): start timers."""

    def stop(self) -> None:
        """The switch is stopping: cancel timers."""


class Switch:
    """The node's peer links (see the module docstring)."""

    def __init__(self, ledger: Ledger, key: SigningKey, *,
                 listen: tuple[str, int] | None, advertise: str | None,
                 discovery: bool = True, max_peers: int = 64,
                 max_message_bytes: int = wire.MAX_P2P_MESSAGE_BYTES) -> None:
        self.ledger = ledger
        self.key = key
        self.public_key = ledger.public_key
        self.network_id = ledger.network_id
        self.masternodes = frozenset(ledger.masternodes)
        self.listen_addr = listen
        self.advertise = advertise
        self.discovery = discovery
        self.max_peers = max_peers
        self.max_message_bytes = max_message_bytes
        self.peers: set[Peer] = set()
        self.by_key: dict[str, Peer] = {}  # authenticated links, one per key
        self.addresses: list[tuple[str, int]] = []
        self.misbehaviour_total = 0
        self.refused_total = 0
        self.reactors: list[Reactor] = []
        self._routes: dict[type[wire.Message], Reactor] = {}
        self._server: Server | None = None
        self._dialling: dict[str, asyncio.Task[None]] = {}
        self._dial_keys: dict[str, str] = {}  # address -> the key found there
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def add_reactor(self, reactor: Reactor) -> None:
        """Route the message types ``reactor`` declares to it; it hears of peers
        coming up and going down in the order reactors were added.  Raises
        ValueError for a type another reactor took already."""
        for t in reactor.MESSAGES:
            held = self._routes.get(t)
            if held is not None:
                raise ValueError(f"{t.TYPE} is taken by {type(held).__name__} already")
        for t in reactor.MESSAGES:
            self._routes[t] = reactor
        self.reactors.append(reactor)

    # -- life ------------------------------------------------------------------------

    async def start(self, peers: Iterable[str] = ()) -> None:
        """Listen (when a listen address is set), start the reactors, then dial
        ``peers``."""
        if self.listen_addr is not None:
            self._server = await serve(
                self._accept, self.listen_addr[0], self.listen_addr[1],
                process_request=self._check_path,
                max_size=self.max_message_bytes + OVERHEAD,
                ping_interval=None, compression=None, max_queue=64)
            self.addresses = [s.getsockname()[:2] for s in self._server.sockets]
            if self.advertise is None and self.addresses[0][0] not in ("0.0.0.0", "::"):
                self.advertise = f"{self.addresses[0][0]}:{self.addresses[0][1]}"
        for reactor in self.reactors:
            reactor.start()
        for address in peers:
            self.add_node(address)

    async def stop(self) -> None:
        """Close every link, stop dialling, stop the reactors."""
        self._closing = True
        for task in list(self._dialling.values()) + list(self._tasks):
            task.cancel()
        for peer in list(self.peers):
            peer.link.close("going away", 1001)
            self._events(peer)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for reactor in self.reactors:
            reactor.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what the RPC shows and does -------------------------------------------------

    def add_node(self, address: str) -> bool:
        """Dial ``address`` (host:port) and keep dialling it; False if already."""
        if address in self._dialling or self._closing:
            return False
        self._dialling[address] = asyncio.ensure_future(self._dial_loop(address))
        return True

    def discover(self, address: str, key: str) -> None:
        """Dial the masternode ``key`` learnt at ``address`` unless it is linked or
        that address is dialled already (with ``P2P_DISCOVERY``)."""
        if (self.discovery and key != self.public_key and key not in self.by_key
                and address not in self._dialling):
            self._dial_keys.setdefault(address, key)
            self.add_node(address)

    def peer_info(self) -> list[dict[str, Any]]:
        """``getpeerinfo`` (SPEC 7.6)."""
        out = []
        for p in self.peers:
            if not p.link.authenticated:
                continue
            lat = p.link.latency
            out.append({"public_key": p.key, "address": p.address, "inbound": p.inbound,
                        "masternode": p.link.peer_masternode, "height": p.height,
                        "latency_ms": None if lat is None else round(lat * 1000, 3),
                        "misbehaviour": p.misbehaviour})
        return sorted(out, key=lambda d: str(d["public_key"]))

    def connected(self, key: str) -> bool:
        """Whether a masternode is connected now (this node counts as connected)."""
        return key == self.public_key or key in self.by_key

    def metrics(self) -> list[tuple[str, str, str, float | int]]:
        """Link counters for ``/metrics``."""
        return [
            ("timefast_peers", "gauge", "Authenticated peer links", len(self.by_key)),
            ("timefast_peer_misbehaviour_total", "counter",
             "Peer links closed for a protocol violation or a bad signature",
             self.misbehaviour_total),
            ("timefast_peer_refused_total", "counter",
             "Inbound peer links refused (MAX_PEERS, duplicates)", self.refused_total)]

    # -- sending -----------------------------------------------------------------------

    def send_to(self, peer: Peer, msg: wire.Message) -> None:
        """Send ``msg`` to one peer (dropped when its link is not open)."""
        if peer.link.authenticated:
            peer.link.send(msg)
            self._flush(peer)

    def broadcast(self, msg: wire.Message, but: Peer | None = None) -> int:
        """Send ``msg`` to every authenticated peer but ``but``, encoded once (each
        link seals it with its own stream); returns to how many."""
        return self.broadcast_encoded(wire.encode(msg), but)

    def broadcast_encoded(self, message: bytes, but: Peer | None = None,
                          to: Iterable[Peer] | None = None) -> int:
        """Send an encoded message (``wire.encode``) to the authenticated peers ``to``
        (default: all) but ``but``; returns to how many."""
        n = 0
        for p in list(self.by_key.values()) if to is None else list(to):
            if p is not but and p.link.authenticated:
                p.link.send_encoded(message)
                self._flush(p)
                n += 1
        return n

    def misbehaved(self, peer: Peer, reason: str) -> None:
        """``peer`` sent something this node checked and refused: count and close."""
        peer.link.misbehaved(reason)
        self._events(peer)
        self._flush(peer)

    # -- connections -------------------------------------------------------------------

    @staticmethod
    def _check_path(conn: ServerConnection, request: Request) -> Response | None:
        if request.path != PATH:
            return conn.respond(404, f"peers connect to {PATH}\n")
        return None

    async def _accept(self, ws: ServerConnection) -> None:
        host, port = ws.remote_address[:2]
        await self._serve(ws, f"{host}:{port}", inbound=True)

    async def _dial_loop(self, address: str) -> None:
        backoff = BACKOFF_MIN
        host, _, port = address.rpartition(":")
        uri = f"ws://{host}:{port}{PATH}"
        while not self._closing:
            known = self._dial_keys.get(address)
            if known is not None and known in self.by_key:
                # Linked already (the peer dialled us): wait until that link ends.
                await asyncio.sleep(BACKOFF_MIN)
                continue
            authenticated = False
            try:
                async with connect(uri, max_size=self.max_message_bytes + OVERHEAD,
                                   ping_interval=None,
                                   compression=None, open_timeout=10, max_queue=64) as ws:
                    authenticated = await self._serve(ws, address, inbound=False,
                                                      expected=known)
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
                log.debug("peer %s: cannot connect: %s", address, e)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("peer %s: dial failed", address)
            if authenticated:
                backoff = BACKOFF_MIN
            await asyncio.sleep(backoff)
            if not authenticated:
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _serve(self, ws: Any, address: str, inbound: bool,
                     expected: str | None = None) -> bool:
        """Serve one connection until it closes; True if it authenticated."""
        loop = asyncio.get_running_loop()
        link = Link(self.key, self.network_id, self.masternodes, outbound=not inbound,
                    now=loop.time(), height=self.ledger.height, tip=self.ledger.tip,
                    listen=self.advertise, network=self.ledger.network,
                    genesis=genesis_hash(self.ledger.network), expected_key=expected,
                    max_message_bytes=self.max_message_bytes)
        out: list[bytes | str] = []
        wake = asyncio.Event()

        def send(frame: bytes | str) -> None:
            out.append(frame)
            peer.queued += len(frame)
            wake.set()

        peer = Peer(link, address, inbound, send)
        self.peers.add(peer)

        async def writer() -> None:
            with contextlib.suppress(ConnectionClosed):  # the reader sees it too
                while True:
                    await wake.wait()
                    wake.clear()
                    frames = out[:]
                    del out[:]
                    for frame in frames:
                        peer.queued -= len(frame)
                        await ws.send(frame)  # str: text frame; bytes: binary

        writing = self._spawn(writer())
        authenticated = False
        try:
            self._flush(peer)
            while peer.close_code is None:
                try:
                    frame = await asyncio.wait_for(ws.recv(), TICK)
                except TimeoutError:
                    link.tick(loop.time())
                else:
                    link.receive_frame(frame, loop.time())
                authenticated = self._events(peer) or authenticated
                self._flush(peer)
            writing.cancel()
            code, reason = peer.close_code
            for frame in out:  # what the link said last (a Pong, a refusal) goes first
                await ws.send(frame)
            await ws.close(code, reason[:120])
        except ConnectionClosed:
            pass
        finally:
            writing.cancel()
            self._gone(peer)
        return authenticated

    def _flush(self, peer: Peer) -> None:
        for frame in peer.link.data_to_send():
            peer.send(frame)
        if peer.queued > PEER_BUFFER and not peer.link.closed:
            peer.link.close(f"more than {PEER_BUFFER} bytes queued", 1008)
            self._events(peer)

    def _gone(self, peer: Peer) -> None:
        self.peers.discard(peer)
        key = peer.key
        if key is not None and self.by_key.get(key) is peer:
            del self.by_key[key]
            log.info("peer down: %s at %s", key[:16], peer.address)
            for reactor in self.reactors:
                reactor.peer_down(peer)

    def _events(self, peer: Peer) -> bool:
        """Act on what the link reports; True when it just authenticated."""
        up = False
        for ev in peer.link.events_received():
            if isinstance(ev, Received):
                self.dispatch(peer, ev.message)
            elif isinstance(ev, Authenticated):
                up = self._up(peer, ev)
            elif isinstance(ev, Misbehaviour):
                peer.misbehaviour += 1
                self.misbehaviour_total += 1
                log.warning("peer %s at %s misbehaved: %s", (peer.key or "?")[:16],
                            peer.address, ev.reason)
            elif isinstance(ev, Closed):
                for frame in peer.link.data_to_send():
                    peer.send(frame)
                peer.close_code = (ev.code, ev.reason)
        return up

    def dispatch(self, peer: Peer, msg: wire.Message) -> None:
        """Hand ``msg`` from an authenticated ``peer`` to the reactor registered for
        its type (none: dropped, as a node without that part ignores it)."""
        if isinstance(msg, wire.Status):
            # Where a peer is goes in getpeerinfo, whoever else takes its Status.
            peer.height, peer.tip = msg.height, msg.tip
        reactor = self._routes.get(type(msg))
        if reactor is None:
            log.debug("peer %s: %s taken by no reactor", (peer.key or "?")[:16], msg.TYPE)
            return
        try:
            reactor.receive(peer, msg)
        except Exception:  # a bug on one message must not end the node
            log.exception("peer %s: message %s failed", peer.key, msg.TYPE)

    def _up(self, peer: Peer, ev: Authenticated) -> bool:
        key = ev.public_key
        if not peer.inbound:
            self._dial_keys[peer.address] = key
        held = self.by_key.get(key)
        if held is not None:
            # Two links for one pair of keys: both sides keep the one the smaller key
            # dialled (SPEC 7.2).
            if link_stays(peer.link.dialer or "", peer.link.accepter or ""):
                held.link.close("duplicate link", 1000)
                self._events(held)
            else:
                peer.link.close("duplicate link", 1000)
                self.refused_total += peer.inbound
                return False
        if (peer.inbound and not ev.masternode
                and sum(p.inbound for p in self.by_key.values()) >= self.max_peers):
            self.refused_total += 1
            peer.link.close("too many peers", 1013)
            log.info("peer refused: %s at %s (MAX_PEERS)", key[:16], peer.address)
            return False
        self.by_key[key] = peer
        peer.height, peer.tip = ev.hello.height, ev.hello.tip
        log.info("peer up: %s at %s (%s, %s, height %d)", key[:16], peer.address,
                 "inbound" if peer.inbound else "outbound",
                 "masternode" if ev.masternode else "full node", ev.hello.height)
        if ev.hello.listen and self.discovery:
            self._dial_keys.setdefault(ev.hello.listen, key)
        # Where this node is, first: what the reactors send next builds on it.
        peer.link.send(wire.Status(self.ledger.height, self.ledger.tip))
        for reactor in self.reactors:
            reactor.peer_up(peer, ev.hello)
        return True
