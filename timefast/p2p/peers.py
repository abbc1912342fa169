"""The peer network's asyncio layer (SPEC 7.2-7.4): sockets around the sans-I/O links.

``PeerNetwork`` listens on ``P2P_ADDR`` (WebSocket, path ``/p2p``), dials ``PEERS``
(and ``addnode``, and masternodes learnt from ``Addr``) with backoff, and runs one
``link.Link`` per connection.  It decides no ledger rule: transactions and vote
batches from peers go through the node's group commit like a wallet's, and it
relays what the ledger accepted:

- a ``Tx`` is submitted as relayed (its signatures are checked ahead on the group
  commit's thread); once accepted it is relayed to every other peer (the ledger's
  ``TxAccepted`` change), each transaction once;
- a ``Votes`` batch has its signature checked off the event loop (many at once),
  then is counted by the ledger and relayed once per (voter, batch, content);
- the node's own votes are signed in batches (``Ledger.sign_batch``) a few
  milliseconds after they are decided, and leave only after the commit that stores
  them;
- ``GetPending`` is sent to each new peer and, for transactions still without
  quorum, every ``FINALITY_TIMEOUT``; its answer carries the transactions and the
  signed batches that vote on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from nacl.signing import SigningKey
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import Request, Response

from timefast import crashpoints, wire
from timefast.commits import GroupCommit
from timefast.crypto import verify_batch
from timefast.journal import Change, TxAccepted, TxConfirmed, TxFinalized
from timefast.ledger import Ledger, LedgerError
from timefast.p2p.link import (
    AddrBook,
    Authenticated,
    Closed,
    Link,
    Misbehaviour,
    Received,
    RelayFilter,
    link_stays,
)
from timefast.transaction import Transaction
from timefast.transaction import parse as parse_tx

log = logging.getLogger("timefast.p2p")

PATH = "/p2p"
BACKOFF_MIN = 1.0  # seconds before dialling a lost peer again, doubling...
BACKOFF_MAX = 30.0  # ...up to this
VOTE_DELAY = 0.005  # seconds own votes wait to be signed together
TICK = 1.0  # seconds between a link's timer checks (pings every 10 s, silence 30 s)
# Bytes queued to one peer before it is treated as stuck and closed.
PEER_BUFFER = 64 << 20
ASK_LIMIT = 1000  # txids per GetPending sent for transactions without quorum
ADDR_REFRESH = 3600.0  # seconds between re-signings of this node's Addr


@dataclass(eq=False)
class Peer:
    """One connection to a peer and its link state."""

    link: Link
    address: str  # host:port as dialled, or the remote address of an inbound link
    inbound: bool
    send: Callable[[bytes], None] = field(repr=False)
    height: int = -1
    tip: str = ""
    misbehaviour: int = 0
    queued: int = 0  # bytes handed to the socket and not yet written
    # The link ended: the connection's task closes the socket with this code.
    close_code: tuple[int, str] | None = None

    @property
    def key(self) -> str | None:
        return self.link.peer_key


class PeerNetwork:
    """The node's peers: listening, dialling, relaying (see the module docstring)."""

    def __init__(self, ledger: Ledger, commits: GroupCommit, key: SigningKey, *,
                 listen: tuple[str, int] | None, advertise: str | None,
                 peers: Iterable[str] = (), discovery: bool = True, max_peers: int = 64,
                 max_message_bytes: int = wire.MAX_P2P_MESSAGE_BYTES) -> None:
        self.ledger = ledger
        self.commits = commits
        self.key = key
        self.public_key = ledger.public_key
        self.network = ledger.network_id
        self.masternodes = frozenset(ledger.masternodes)
        self.listen_addr = listen
        self.advertise = advertise
        self.discovery = discovery
        self.max_peers = max_peers
        self.max_message_bytes = max_message_bytes
        self.relay = RelayFilter(self.network)
        self.addrs = AddrBook(self.network, self.masternodes)
        self.peers: set[Peer] = set()
        self.by_key: dict[str, Peer] = {}  # authenticated links, one per key
        self.addresses: list[tuple[str, int]] = []
        self.misbehaviour_total = 0
        self.refused_total = 0
        self.counters = {"tx_received": 0, "tx_relayed": 0, "votes_received": 0,
                         "votes_relayed": 0, "batches_signed": 0, "pending_asked": 0}
        self._server: Server | None = None
        self._dialling: dict[str, asyncio.Task[None]] = {}
        self._dial_keys: dict[str, str] = {}  # address -> the key found there
        self._tasks: set[asyncio.Task[Any]] = set()
        self._source: dict[str, Peer] = {}  # txid -> the peer it came from
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="timefast-p2p-verify")
        self._to_check: list[tuple[Peer, wire.Votes]] = []
        self._checking_votes: set[tuple[str, int, str]] = set()
        self._checking = False
        self._vote_timer: asyncio.TimerHandle | None = None
        self._signing = False
        self._own_addr: wire.Addr | None = None
        self._closing = False
        # Blocks by rounds (set by the node): takes Proposal, Prevote, Precommit,
        # GetBlocks, Blocks, StartHeight and Status.
        self.rounds: Any = None

    # -- life ------------------------------------------------------------------------

    async def start(self, peers: Iterable[str] = ()) -> None:
        """Listen (when a listen address is set) and start dialling ``peers``."""
        loop = asyncio.get_running_loop()
        self.ledger.on_own_votes(self._want_votes)
        self.ledger.watch(self._changes)
        if self.listen_addr is not None:
            self._server = await serve(
                self._accept, self.listen_addr[0], self.listen_addr[1],
                process_request=self._check_path, max_size=self.max_message_bytes,
                ping_interval=None, compression=None, max_queue=64)
            self.addresses = [s.getsockname()[:2] for s in self._server.sockets]
            if self.advertise is None and self.addresses[0][0] not in ("0.0.0.0", "::"):
                self.advertise = f"{self.addresses[0][0]}:{self.addresses[0][1]}"
        if self.advertise is not None:
            self._sign_addr()
        for address in peers:
            self.add_node(address)
        if self.ledger.has_own_votes():
            self._want_votes()
        self._spawn(self._ticker(loop))

    async def stop(self) -> None:
        """Close every link and stop dialling."""
        self._closing = True
        for task in list(self._dialling.values()) + list(self._tasks):
            task.cancel()
        for peer in list(self.peers):
            peer.link.close("going away", 1001)
            self._events(peer)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._vote_timer is not None:
            self._vote_timer.cancel()
        self._checker.shutdown(wait=False)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _sign_addr(self) -> None:
        assert self.advertise is not None
        self._own_addr = wire.sign_addr(self.key, self.network, self.advertise,
                                        int(time.time()))
        self.addrs.offer(self._own_addr, time.time(), checked=True)

    # -- what the RPC shows and does -------------------------------------------------

    def add_node(self, address: str) -> bool:
        """Dial ``address`` (host:port) and keep dialling it; False if already."""
        if address in self._dialling or self._closing:
            return False
        self._dialling[address] = asyncio.ensure_future(self._dial_loop(address))
        return True

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
        """Peer and vote counters for ``/metrics``."""
        c = self.counters
        return [
            ("timefast_peers", "gauge", "Authenticated peer links", len(self.by_key)),
            ("timefast_peer_misbehaviour_total", "counter",
             "Peer links closed for a protocol violation or a bad signature",
             self.misbehaviour_total),
            ("timefast_peer_refused_total", "counter",
             "Inbound peer links refused (MAX_PEERS, duplicates)", self.refused_total),
            ("timefast_peer_tx_received_total", "counter", "Tx messages from peers",
             c["tx_received"]),
            ("timefast_peer_tx_relayed_total", "counter", "Transactions relayed to peers",
             c["tx_relayed"]),
            ("timefast_peer_votes_received_total", "counter",
             "Vote batches from peers", c["votes_received"]),
            ("timefast_peer_votes_relayed_total", "counter",
             "Vote batches relayed or sent to peers", c["votes_relayed"]),
            ("timefast_vote_batches_signed_total", "counter",
             "Vote batches this masternode signed", c["batches_signed"]),
            ("timefast_pending_asked_total", "counter",
             "GetPending requests for transactions still without quorum",
             c["pending_asked"]),
            ("timefast_equivocations_total", "counter",
             "Equivocation evidence kept (all masternodes)",
             sum(self.ledger.equivocations.values())),
        ]

    # -- connections -------------------------------------------------------------------

    @staticmethod
    def _check_path(conn: ServerConnection, request: Request) -> Response | None:
        if request.path != PATH:
            return conn.respond(404, f"peers connect to {PATH}\n")
        return None

    async def _accept(self, ws: ServerConnection) -> None:
        host, port = ws.remote_address[:2]
        await self._run(ws, f"{host}:{port}", inbound=True)

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
                async with connect(uri, max_size=self.max_message_bytes, ping_interval=None,
                                   compression=None, open_timeout=10, max_queue=64) as ws:
                    authenticated = await self._run(ws, address, inbound=False,
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

    async def _run(self, ws: Any, address: str, inbound: bool,
                   expected: str | None = None) -> bool:
        """Serve one connection until it closes; True if it authenticated."""
        loop = asyncio.get_running_loop()
        link = Link(self.key, self.network, self.masternodes, outbound=not inbound,
                    now=loop.time(), height=self.ledger.height, tip=self.ledger.tip,
                    listen=self.advertise, expected_key=expected,
                    max_message_bytes=self.max_message_bytes)
        out: list[bytes] = []
        wake = asyncio.Event()

        def send(frame: bytes) -> None:
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
                        await ws.send(frame.decode())

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
                await ws.send(frame.decode())
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

    def _events(self, peer: Peer) -> bool:
        """Act on what the link reports; True when it just authenticated."""
        up = False
        for ev in peer.link.events_received():
            if isinstance(ev, Received):
                try:
                    self._message(peer, ev.message)
                except Exception:  # a bug on one message must not end the node
                    log.exception("peer %s: message %s failed", peer.key,
                                  ev.message.TYPE)
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
        link = peer.link
        link.send(wire.Status(self.ledger.height, self.ledger.tip))
        for addr in self.addrs.records(time.time()):
            link.send(addr)
        link.send(wire.GetPending(None))
        if self.rounds is not None:
            self.rounds.peer_up(peer, ev.hello.height)
        return True

    # -- messages ------------------------------------------------------------------

    def _message(self, peer: Peer, msg: wire.Message) -> None:
        if isinstance(msg, wire.Tx):
            self.counters["tx_received"] += 1
            self._take_tx(peer, msg.tx)
        elif isinstance(msg, wire.Votes):
            self.counters["votes_received"] += 1
            self._take_votes(peer, msg)
        elif isinstance(msg, wire.GetPending):
            txs, batches = self.ledger.pending_for(
                msg.txids, self.max_message_bytes // 2)
            peer.link.send(wire.Pending(tuple(txs), tuple(batches)))
        elif isinstance(msg, wire.Pending):
            for tx in msg.txs:
                self._take_tx(peer, tx)
            for votes in msg.votes:
                self._take_votes(peer, votes)
        elif isinstance(msg, wire.Addr):
            self._take_addr(peer, msg)
        else:
            if isinstance(msg, wire.Status):
                peer.height, peer.tip = msg.height, msg.tip
            if self.rounds is not None:
                self.rounds.on_message(peer, msg)

    def _take_tx(self, peer: Peer, tx: Transaction) -> None:
        txid = tx.txid
        if self.relay.tx_known(txid):
            return
        if txid in self._source or self.ledger.status_of(txid) is not None:
            return  # on its way in, or known (pending, decided for good, confirmed)
        self._source[txid] = peer

        def done(_: Any, err: BaseException | None) -> None:
            self._source.pop(txid, None)  # (the relay, on TxAccepted, has used it)
            if err is None:
                return
            if isinstance(err, LedgerError) and "bad signature" in err.message:
                peer.link.misbehaved(f"transaction {txid}: {err.message}")
                self._events(peer)
                self._flush(peer)
            elif isinstance(err, LedgerError):
                log.debug("peer %s: transaction %s not taken: %s", (peer.key or "?")[:16],
                          txid, err.message)

        self.commits.submit(lambda: self.ledger.submit(tx, relayed=True), done, tx)

    def _take_votes(self, peer: Peer, votes: wire.Votes) -> None:
        if self.relay.votes_known(votes):
            return
        if votes.voter not in self.masternodes:
            peer.link.misbehaved(f"votes by {votes.voter}, not a masternode")
            self._events(peer)
            return
        # The same batch from several peers while the first copy is being checked:
        # checked and counted once.
        key = (votes.voter, votes.batch, votes.signature)
        if key in self._checking_votes:
            return
        self._checking_votes.add(key)
        self._to_check.append((peer, votes))
        if not self._checking:
            self._check_votes()

    def _check_votes(self) -> None:
        batch, self._to_check = self._to_check, []
        if not batch:
            return
        self._checking = True
        items = [wire.votes_check(v, self.network) for _, v in batch]
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._checker, verify_batch, items)

        def checked(f: asyncio.Future[bytes]) -> None:
            self._checking = False
            if f.cancelled() or f.exception() is not None:
                return
            good = f.result()
            for _, votes in batch:
                self._checking_votes.discard((votes.voter, votes.batch, votes.signature))
            for (peer, votes), ok in zip(batch, good, strict=True):
                if ok:
                    self._count_votes(peer, votes)
                else:
                    peer.link.misbehaved(f"Votes {votes.voter[:16]}/{votes.batch}: "
                                         "signature does not verify")
                    self._events(peer)
                    self._flush(peer)
            self._check_votes()
        fut.add_done_callback(checked)

    def _count_votes(self, peer: Peer | None, votes: wire.Votes) -> None:
        new, evidence = self.relay.add_votes(votes)
        if not new:
            return
        if evidence is not None:
            log.warning("masternode %s signed two batches numbered %d", votes.voter[:16],
                        votes.batch)

        def done(_: Any, err: BaseException | None) -> None:
            if err is not None:
                log.warning("votes %s/%d not counted: %s", votes.voter[:16], votes.batch, err)
                return
            self._relay_votes(votes, peer)
        self.commits.submit(lambda: self.ledger.add_batch(votes), done)

    def _relay_votes(self, votes: wire.Votes, source: Peer | None) -> None:
        """Pass a counted batch on.  Masternodes link to every other masternode, so a
        batch that came straight from its voter reached the others the same way: it
        goes on to one masternode only (the next after this one in key order), and
        to peers outside the voting set.  That one copy is what spreads a voter's
        second, different batch under one number: whoever gets it second-hand and
        finds it new passes it to every peer, so every node ends with both (the
        evidence, and both count).  A batch that came second-hand goes to every
        other peer.  A masternode that missed a batch gets it when it asks again for
        the votes of what it holds pending (``GetPending``, every FINALITY_TIMEOUT)."""
        frame = wire.encode(votes)
        direct = source is not None and source.key == votes.voter
        ring: str | None = None
        if direct:
            others = sorted(k for k, p in self.by_key.items() if p.link.peer_masternode
                            and k != votes.voter and p is not source)
            later = [k for k in others if k > self.public_key]
            ring = (later or others)[0] if others else None
        for key, p in list(self.by_key.items()):
            if p is source or key == votes.voter or not p.link.authenticated:
                continue
            if direct and p.link.peer_masternode and key != ring:
                continue
            p.send(frame)
            self.counters["votes_relayed"] += 1

    def _take_addr(self, peer: Peer, addr: wire.Addr) -> None:
        if not self.addrs.offer(addr, time.time(), checked=True):
            return
        self._broadcast(addr, but=peer)
        key = addr.public_key
        if (self.discovery and key in self.masternodes and key != self.public_key
                and key not in self.by_key and addr.listen not in self._dialling):
            self._dial_keys.setdefault(addr.listen, key)
            self.add_node(addr.listen)

    def send_to(self, peer: Peer, msg: wire.Message) -> None:
        """Send ``msg`` to one peer (dropped when its link is not open)."""
        if peer.link.authenticated:
            peer.link.send(msg)
            self._flush(peer)

    def send(self, msg: wire.Message, but: Peer | None = None) -> None:
        """Send ``msg`` to every peer but ``but``."""
        self._broadcast(msg, but)

    def misbehaved(self, peer: Peer, reason: str) -> None:
        """``peer`` sent something this node checked and refused: count and close."""
        peer.link.misbehaved(reason)
        self._events(peer)
        self._flush(peer)

    def _broadcast(self, msg: wire.Message, but: Peer | None = None) -> int:
        """Send ``msg`` to every authenticated peer but ``but``: encoded once."""
        frame = wire.encode(msg)
        n = 0
        for p in list(self.by_key.values()):
            if p is not but and p.link.authenticated:
                p.send(frame)
                n += 1
        return n

    # -- the ledger's side ---------------------------------------------------------

    def _changes(self, changes: list[Change]) -> None:
        parents: list[str] = []
        for c in changes:
            if isinstance(c, TxAccepted):
                source = self._source.pop(c.txid, None)
                if self.relay.add_tx(c.txid):
                    # Relayed whatever became of it since: one accepted and then
                    # rejected (or finalized) within one group commit is no longer
                    # pending when the commit is announced, and the other nodes must
                    # still hear of it, to end it as this node did.
                    tx = self.ledger.pending_tx(c.txid) or parse_tx(orjson.loads(c.raw))
                    self._broadcast(wire.Tx(tx), but=source)
                    self.counters["tx_relayed"] += 1
            elif isinstance(c, TxFinalized | TxConfirmed):
                parents.append(c.txid)
        if parents and self.ledger.has_orphans():
            for tx in self.ledger.take_orphans(parents):
                self._resubmit(tx)

    def _resubmit(self, tx: Transaction) -> None:
        """An orphan whose inputs appeared: submitted again (or kept again)."""
        def done(_: Any, err: BaseException | None) -> None:
            if err is not None and not (isinstance(err, LedgerError)
                                        and err.code == "TX_ORPHAN"):
                log.debug("orphan %s not taken: %s", tx.txid, err)
        self.commits.submit(lambda: self.ledger.submit(tx, relayed=True), done, tx)

    def _want_votes(self) -> None:
        if self._vote_timer is None and not self._signing:
            self._vote_timer = asyncio.get_running_loop().call_later(VOTE_DELAY,
                                                                      self._sign_votes)

    def _sign_votes(self) -> None:
        self._vote_timer = None
        self._signing = True

        def done(msg: wire.Votes | None, err: BaseException | None) -> None:
            self._signing = False
            if err is not None:
                log.error("could not store own votes: %s", err)
            elif msg is not None:
                # Stored (with the approvals it holds) before it leaves.
                crashpoints.reached("send")
                self.relay.add_votes(msg)
                self._broadcast(msg)
                self.counters["batches_signed"] += 1
            if self.ledger.has_own_votes():
                self._want_votes()
        self.commits.submit(self.ledger.sign_batch, done)

    async def _ticker(self, loop: asyncio.AbstractEventLoop) -> None:
        period = max(0.05, min(1.0, self.ledger.finality_timeout / 4))
        while True:
            await asyncio.sleep(period)
            due = self.ledger.overdue()
            if due and self.by_key:
                self.counters["pending_asked"] += 1
                self._broadcast(wire.GetPending(tuple(due[:ASK_LIMIT])))
            if (self._own_addr is not None
                    and time.time() - self._own_addr.timestamp > ADDR_REFRESH):
                self._sign_addr()
                self._broadcast(self._own_addr)
