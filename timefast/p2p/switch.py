"""The switch (SPEC 7.2-7.4): sockets around the sans-I/O links, and dispatch.

Like CometBFT's switch, ``Switch`` owns the peer connections and nothing of what
they carry: it listens on ``P2P_ADDR`` (WebSocket, path ``/p2p``), dials ``PEERS``
(and ``addnode``, and masternodes learnt from ``Addr``) with backoff, runs one
``link.Link`` per connection, keeps one authenticated link per key (the one the
smaller key dialled, SPEC 7.2), refuses inbound full nodes past ``MAX_PEERS`` and
keeps the budgets of SPEC 7.3: requests answered within rates (``budgets.py``),
answers withheld from a peer that does not read them, a link closed past
``PEER_BUFFER`` unsent bytes, and misbehaviour scores (``scores.py``) that refuse a
key (and its IP, for keys outside the voting set) for 10 minutes.  Each message a
link receives goes to the one reactor that registered its type (``add_reactor``);
reactors hear of links coming up and going down, and send through ``broadcast``,
``send_to`` and ``answer``, and report faults through ``misbehaved`` and
``penalize``.

Dial policy (SPEC 7.2): ``PEERS`` and ``addnode`` addresses are dialled for good, and
so is the newest gossiped address of each key of the voting set, one loop per key
(a newer ``Addr`` changes the address that loop dials) and never more loops than
``MAX_PEERS``; nothing else is dialled (``Hello.listen`` is shown, not dialled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nacl.signing import SigningKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from timefast import wire
from timefast.ledger import Ledger
from timefast.p2p.budgets import AnswerCache, RequestBudget, TokenBucket
from timefast.p2p.dialer import PATH, Dialer
from timefast.p2p.link import Authenticated, Closed, Link, Misbehaviour, Received, link_stays
from timefast.p2p.scores import FATAL, SOFT, Refusals
from timefast.p2p.seal import OVERHEAD
from timefast.rules import genesis_hash

log = logging.getLogger("timefast.p2p")

TICK = 1.0  # seconds between a link's timer checks (pings every 10 s, silence 30 s)
# Bytes queued to one peer before it is treated as stuck and closed (SPEC 7.3): two
# answers of half a message each, and room for the gossip between them.
PEER_BUFFER = 16 << 20
# Seconds a closing link may take to send its last frames and close; then it is cut.
CLOSE_WAIT = 5.0
# The requests answered within budgets (SPEC 7.3), each to its kind (the answer cache
# is per kind; the rate is per peer): a new request type is one line here.
REQUESTS: dict[type[wire.Message], str] = {
    wire.GetBlocks: "blocks",
    wire.GetPending: "pending",
}
# Answer bytes a second for peers outside the voting set, all together, and the
# burst: a member's catch-up is never held back by them (members have only their
# per-peer rate), and a full node catching up still gets a full GetBlocks answer
# (at most half of MAX_P2P_MESSAGE_BYTES, 4 MiB: 500 small blocks) every quarter
# second while nobody else asks, so syncing 500 blocks takes a second or two, while
# 64 full nodes asking for 4 MiB answers get 16 MiB/s between them, not 512 MiB/s.
NODE_ANSWER_RATE = 16 << 20
NODE_ANSWER_BURST = 32 << 20


@dataclass(eq=False)
class Peer:
    """One connection to a peer and its link state."""

    link: Link
    address: str  # host:port as dialled, or the remote address of an inbound link
    inbound: bool
    send: Callable[[bytes | str], None] = field(repr=False)
    height: int = -1
    tip: str = ""
    queued: int = 0  # bytes handed to the socket and not yet written
    sent: int = 0  # bytes handed to the socket in all (written: sent - queued)
    # ``sent`` just after the last answer was queued: while less than that was
    # written, the peer has not read it, and gets no other answer.
    answer_end: int = 0
    # Frames not yet written: str a text frame (the handshake), bytes a binary one.
    out: list[bytes | str] = field(default_factory=list, repr=False)
    budget: RequestBudget = field(default_factory=RequestBudget, repr=False)
    proven: bool = False  # its Auth verified: faults count against its key
    up: bool = False  # the reactors heard of it (peer_up): they hear of its end too
    over_budget: bool = False  # a request of it was dropped (logged once)
    # The link ended: the connection's task closes the socket with this code.
    close_code: tuple[int, str] | None = None

    @property
    def unread_answer(self) -> bool:
        """Whether part of the last answer queued to the peer is still unwritten."""
        return self.sent - self.queued < self.answer_end

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
        self.refused_misbehaviour_total = 0  # links refused for a refused key or IP
        self.requests_answered = 0
        self.requests_dropped = 0
        self.refusals = Refusals(self.masternodes)
        self.answers = AnswerCache()
        self.reactors: list[Reactor] = []
        self._routes: dict[type[wire.Message], Reactor] = {}
        self._server: Server | None = None
        self.dialer = Dialer(self.public_key, self.masternodes,
                             lambda ws, address, key: self._serve(ws, address, False, key),
                             waiting=self._no_dial, max_loops=max_peers,
                             discovery=discovery, max_message_bytes=max_message_bytes)
        self._node_answers = TokenBucket(NODE_ANSWER_RATE, NODE_ANSWER_BURST,
                                        time.monotonic())
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
                process_request=self._check_request,
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
        self.dialer.stop()
        for task in list(self._tasks):
            task.cancel()
        for peer in list(self.peers):
            peer.link.close("going away", 1001)
            self._events(peer)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for reactor in self.reactors:
            reactor.stop()

    # -- what the RPC shows and does -------------------------------------------------

    def add_node(self, address: str) -> bool:
        """Dial ``address`` (host:port) and keep dialling it; False if already.  Its
        host, chosen by the operator, is never refused by IP."""
        if self._closing:
            return False
        self.refusals.exempt.add(address.rpartition(":")[0].strip("[]"))
        return self.dialer.add(address)

    def discover(self, address: str, key: str) -> None:
        """The gossiped address of ``key``: dialled if the key is of the voting set
        (``dialer.Dialer.discover``)."""
        self.dialer.discover(address, key)

    def peer_info(self) -> list[dict[str, Any]]:
        """``getpeerinfo`` (SPEC 7.6): ``listen`` is what the peer's Hello says (a
        hint for operators, never dialled), ``misbehaviour`` its key's score."""
        out = []
        now = time.monotonic()
        for p in self.peers:
            if not p.link.authenticated:
                continue
            lat = p.link.latency
            hello = p.link.peer_hello
            out.append({"public_key": p.key, "address": p.address, "inbound": p.inbound,
                        "masternode": p.link.peer_masternode, "height": p.height,
                        "listen": None if hello is None else hello.listen,
                        "latency_ms": None if lat is None else round(lat * 1000, 3),
                        "misbehaviour": self.refusals.score(p.key or "", now)})
        return sorted(out, key=lambda d: str(d["public_key"]))

    def connected(self, key: str) -> bool:
        """Whether a masternode is connected now (this node counts as connected)."""
        return key == self.public_key or key in self.by_key

    def metrics(self) -> list[tuple[str, str, str, float | int]]:
        """Link counters for ``/metrics``."""
        now = time.monotonic()
        return [
            ("timefast_peers", "gauge", "Authenticated peer links", len(self.by_key)),
            ("timefast_peer_misbehaviour_total", "counter",
             "Peer links closed for a protocol violation or a bad signature",
             self.misbehaviour_total),
            ("timefast_peer_refused_total", "counter",
             "Inbound peer links refused (MAX_PEERS, duplicates)", self.refused_total),
            ("timefast_peer_refused_misbehaviour_total", "counter",
             "Peer connections refused because their key or IP is refused for "
             "misbehaviour", self.refused_misbehaviour_total),
            ("timefast_peer_refusals_total", "counter",
             "Peer keys and IPs refused for 10 minutes for their misbehaviour score",
             self.refusals.refusals),
            ("timefast_peer_refused", "gauge",
             "Peer keys and IPs refused now for misbehaviour",
             self.refusals.refused(now)),
            ("timefast_peer_requests_answered_total", "counter",
             "Peer requests (GetBlocks, GetPending) answered", self.requests_answered),
            ("timefast_peer_requests_dropped_total", "counter",
             "Peer requests dropped over budget (rate, unread answers, node-wide bytes)",
             self.requests_dropped),
            ("timefast_peer_answer_cache_hits_total", "counter",
             "Peer requests answered from an answer encoded for another",
             self.answers.hits)]

    # -- sending -----------------------------------------------------------------------

    def send_to(self, peer: Peer, msg: wire.Message) -> None:
        """Send ``msg`` to one peer (dropped when its link is not open)."""
        if peer.link.authenticated:
            peer.link.send(msg)
            self._flush(peer)

    def broadcast(self, msg: wire.Message | bytes, but: Peer | None = None,
                  to: Iterable[Peer] | None = None) -> int:
        """Send ``msg`` (a message, or one ``wire.encode``d already) to the
        authenticated peers ``to`` (default: all) but ``but``, encoded once (each link
        seals it with its own stream); returns to how many."""
        message = msg if isinstance(msg, bytes) else wire.encode(msg)
        n = 0
        for p in list(self.by_key.values()) if to is None else list(to):
            if p is not but and p.link.authenticated:
                p.link.send_encoded(message)
                self._flush(p)
                n += 1
        return n

    def answer(self, peer: Peer, kind: str, key: Hashable, state: Hashable,
               make: Callable[[], bytes | None]) -> bool:
        """Answer a request of ``peer`` (the switch checked its budget before handing
        it over): the frame encoded for ``key`` at ledger ``state`` by an earlier
        asker, else ``make()``'s (``wire.encode``d; None: nothing to send), kept for
        the next.  True if something was sent."""
        if not peer.link.authenticated:
            return False
        now = time.monotonic()
        frame = self.answers.get(kind, key, state, now)
        if frame is None:
            frame = make()
            if frame is None:
                return False
            self.answers.put(kind, key, state, frame, now)
        if not peer.link.peer_masternode:
            self._node_answers.charge(now, len(frame))
        self.requests_answered += 1
        peer.link.send_encoded(frame)  # encoded once for every asker, sealed per link
        self._flush(peer)
        peer.answer_end = peer.sent
        return True

    def misbehaved(self, peer: Peer, reason: str) -> None:
        """``peer`` sent something this node checked and refused (a bad signature,
        a block that does not hold): count, score ``FATAL`` and close."""
        peer.link.misbehaved(reason)
        self._events(peer)
        self._flush(peer)

    def penalize(self, peer: Peer, points: float, reason: str) -> None:
        """A softer fault of ``peer`` (a request over budget, a re-spend it should know
        was spent): ``points`` on its score.  A key outside the voting set whose score
        reaches the threshold is refused for 10 minutes (its IP too, unless loopback or
        a PEERS host) and its link closed; a member is never refused."""
        if self._score(peer, points, reason) and not peer.link.closed:
            peer.link.close(f"refused for misbehaviour: {reason}", wire.CLOSE_POLICY)
            self._events(peer)
            self._flush(peer)

    def _score(self, peer: Peer, points: float, reason: str) -> bool:
        """Count ``points`` against the peer (its key once proven, its IP if it
        dialled in); True when it is refused now."""
        refused = self.refusals.fault(peer.key if peer.proven else None,
                                      peer.address.rpartition(":")[0].strip("[]")
                                      if peer.inbound else None,
                                      points, time.monotonic())
        if refused:
            log.warning("peer %s at %s refused for %d s: %s", (peer.key or "?")[:16],
                        peer.address, self.refusals.keys.refusal, reason)
        return refused

    # -- connections -------------------------------------------------------------------

    def _check_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Before the WebSocket handshake: the path, and an IP refused for
        misbehaviour (cheap: no link, no parse)."""
        if request.path != PATH:
            return conn.respond(404, f"peers connect to {PATH}\n")
        host = str(conn.remote_address[0])
        if self.refusals.ip_refused(host, time.monotonic()):
            self.refused_misbehaviour_total += 1
            return conn.respond(403, "refused for misbehaviour\n")
        return None

    async def _accept(self, ws: ServerConnection) -> None:
        host, port = ws.remote_address[:2]
        await self._serve(ws, f"{host}:{port}", inbound=True)

    def _no_dial(self, key: str) -> bool:
        """Whether a dial loop for ``key`` waits: linked already (it dialled us), or
        refused for misbehaviour."""
        return key in self.by_key or self.refusals.key_refused(key, time.monotonic()) > 0

    async def _serve(self, ws: Any, address: str, inbound: bool,
                     expected: str | None = None) -> bool:
        """Serve one connection until it closes; True if it authenticated."""
        loop = asyncio.get_running_loop()
        link = Link(self.key, self.network_id, self.masternodes, outbound=not inbound,
                    now=loop.time(), height=self.ledger.height, tip=self.ledger.tip,
                    listen=self.advertise, network=self.ledger.network,
                    genesis=genesis_hash(self.ledger.network), expected_key=expected,
                    max_message_bytes=self.max_message_bytes)
        wake = asyncio.Event()

        def send(frame: bytes | str) -> None:
            if peer.close_code is not None:
                return  # the link ended: nothing more is kept for it
            out.append(frame)
            peer.queued += len(frame)
            peer.sent += len(frame)
            wake.set()
            if peer.queued > PEER_BUFFER and not peer.link.closed:
                peer.link.close(f"more than {PEER_BUFFER} bytes unread", wire.CLOSE_POLICY)
                self._events(peer)

        peer = Peer(link, address, inbound, send)
        out = peer.out
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

        writing = asyncio.ensure_future(writer())
        self._tasks.add(writing)
        writing.add_done_callback(self._tasks.discard)
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
            # What the link said last (a Pong, a refusal) goes first; a peer that does
            # not read gets CLOSE_WAIT seconds for it, then the connection is cut.
            try:
                async with asyncio.timeout(CLOSE_WAIT):
                    for frame in out:
                        await ws.send(frame)
                    await ws.close(code, reason[:120])
            except TimeoutError:
                ws.transport.abort()
        except ConnectionClosed:
            pass
        finally:
            writing.cancel()
            self._gone(peer)
        return authenticated

    def _flush(self, peer: Peer) -> None:
        for frame in peer.link.data_to_send():
            peer.send(frame)

    def _gone(self, peer: Peer) -> None:
        """The connection ended: nothing of it is kept, and every reactor that heard
        of it coming up hears of its end (a link replaced as a duplicate too)."""
        self.peers.discard(peer)
        peer.out.clear()
        peer.queued = 0
        key = peer.key
        if key is not None and self.by_key.get(key) is peer:
            del self.by_key[key]
            log.info("peer down: %s at %s", key[:16], peer.address)
        if peer.up:
            peer.up = False
            for reactor in self.reactors:
                reactor.peer_down(peer)

    def _events(self, peer: Peer) -> bool:
        """Act on what the link reports; True when it just authenticated."""
        up = False
        for ev in peer.link.events_received():
            if isinstance(ev, Received):
                self.dispatch(peer, ev.message)
            elif isinstance(ev, Authenticated):
                peer.proven = True
                up = self._up(peer, ev)
            elif isinstance(ev, Misbehaviour):
                self.misbehaviour_total += 1
                log.warning("peer %s at %s misbehaved: %s", (peer.key or "?")[:16],
                            peer.address, ev.reason)
                self._score(peer, FATAL, ev.reason)
            elif isinstance(ev, Closed):
                # Nothing queued before the end is kept or sent: only what the link
                # said last (a refusal, a Pong).
                peer.out.clear()
                peer.queued = 0
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
        kind = REQUESTS.get(type(msg))
        if kind is not None and not self._within_budget(peer, kind):
            return
        reactor = self._routes.get(type(msg))
        if reactor is None:
            log.debug("peer %s: %s taken by no reactor", (peer.key or "?")[:16], msg.TYPE)
            return
        try:
            reactor.receive(peer, msg)
        except Exception:  # a bug on one message must not end the node
            log.exception("peer %s: message %s failed", peer.key, msg.TYPE)

    def _within_budget(self, peer: Peer, kind: str) -> bool:
        """Whether a request of ``kind`` from ``peer`` is answered: not while an earlier
        answer is unread, at most ``budgets.RATE`` a second, and for a peer outside
        the voting set while the node-wide answer bytes last.  A request dropped is
        not queued; the peer's own overshoot costs it ``SOFT`` points."""
        now = time.monotonic()
        if peer.unread_answer:
            why = "asked again before reading the last answer"
        elif not peer.budget.allow(now):
            why = f"more than {peer.budget.rate:g} requests a second ({kind})"
        elif not peer.link.peer_masternode and not self._node_answers.available(now):
            why = ""  # the node's budget, spent by all of them: no fault of this one
        else:
            return True
        self.requests_dropped += 1
        if why:
            if not peer.over_budget:
                peer.over_budget = True  # logged once per link, counted always
                log.info("peer %s at %s: requests dropped: %s", (peer.key or "?")[:16],
                         peer.address, why)
            self.penalize(peer, SOFT, why)
        return False

    def _up(self, peer: Peer, ev: Authenticated) -> bool:
        key = ev.public_key
        if not peer.inbound:
            self.dialer.found(peer.address, key)
        left = self.refusals.key_refused(key, time.monotonic())
        if left:
            self.refused_misbehaviour_total += 1
            peer.link.close(f"refused for misbehaviour for {left:.0f} s more",
                            wire.CLOSE_POLICY)
            log.debug("peer refused: %s at %s (misbehaviour)", key[:16], peer.address)
            return False
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
        # Where this node is, first: what the reactors send next builds on it.
        peer.link.send(wire.Status(self.ledger.height, self.ledger.tip))
        peer.up = True
        for reactor in self.reactors:
            reactor.peer_up(peer, ev.hello)
        return True
