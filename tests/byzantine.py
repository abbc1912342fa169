"""A masternode driven by the test: a real key of the voting set, speaking the peer
protocol itself (SPEC 7.2-7.5), to send what an honest node never would: conflicting
approvals, a vote both ways, two blocks for one round, votes for both, old or forged
messages; and, as a catch-up peer, a lying ``Status`` and ``Blocks`` answers that
withhold blocks or carry forged commits (``answer``).

``Byzantine`` is the key and its links, with the signed messages it may send
(``votes``, ``block``, ``proposal``, ``prevote``, ``precommit``) and what the
nodes sent it (``received``, ``inbox``, ``proposals``).  Two drivers run on it:
``Liar`` (every lie at once, for as long as the test lets it) and ``Router`` (the
only path between honest nodes that the test partitioned, forwarding everything but
what the test wants withheld).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from nacl.signing import SigningKey
from websockets.sync.client import ClientConnection, connect

from timefast import wire
from timefast.p2p.link import Link, Received
from timefast.rules import block_hash, proposer

from .helpers import wait_for
from .network import Network, authenticate

# Link-level messages: answered by the link, never forwarded or replayed.
LINK_LEVEL = (wire.Hello, wire.Auth, wire.Ping, wire.Pong, wire.Addr)


class Byzantine:
    """Links to chosen nodes of ``net`` under ``key`` (one of ``net.keys``).

    Everything a node sends is kept in ``received[i]`` and put on ``inbox`` as
    ``(i, message)`` for a driver.  A link the node closed (for a malformed or
    badly signed message) is dead until ``reconnect``."""

    def __init__(self, net: Network, key: SigningKey) -> None:
        self.net = net
        self.key = key
        self.public_key = key.verify_key.encode().hex()
        self.network_id = wire.network_id(net.rpc(net.up()[0], "getblock", 0)["hash"],
                                          net.pubs)
        self.validators = sorted(net.pubs)
        self.links: dict[int, tuple[ClientConnection, Link]] = {}
        self.received: dict[int, list[wire.Message]] = {}
        self.inbox: queue.SimpleQueue[tuple[int, wire.Message]] = queue.SimpleQueue()
        self.dead: set[int] = set()
        # Set when node i closed the link (or it broke).
        self.closed: dict[int, threading.Event] = {}
        # Called (node, message) on the reader's thread for each message received:
        # how the test answers a node itself (a GetBlocks, say).
        self.answer: Callable[[int, wire.Message], None] | None = None
        self._lock = threading.Lock()
        self._send_locks: dict[int, threading.Lock] = {}
        self._batch = 1_000_000  # vote batch numbers, far above any honest node's

    # -- links ---------------------------------------------------------------------------

    def connect(self, nodes: list[int], height: int = 0, tip: str = "00" * 32
                ) -> Byzantine:
        """Open an authenticated link to each of ``nodes`` (a new one where one is
        open), claiming ``height`` and ``tip`` in its ``Hello``; what they send is
        kept."""
        for i in nodes:
            self._open(i, height, tip)
        return self

    def _open(self, i: int, height: int = 0, tip: str = "00" * 32, keep: bool = False
              ) -> None:
        # ``keep``: what node i sent on earlier links stays in ``received`` (a liar
        # linking again keeps the proposals it learnt); else it starts empty, for
        # ``wait_message`` on this link.
        ws = connect(f"ws://127.0.0.1:{self.net.ports[i]}/p2p", max_size=None,
                     open_timeout=10).__enter__()
        link = Link(self.key, self.network_id, self.net.pubs, outbound=True, now=0,
                    height=height, tip=tip, listen=None)
        authenticate(ws, link)
        closed = threading.Event()
        with self._lock:
            self.links[i] = (ws, link)
            self.received[i] = self.received.get(i, []) if keep else []
            self.closed[i] = closed
            self._send_locks.setdefault(i, threading.Lock())
            self.dead.discard(i)
        threading.Thread(target=self._read, args=(i, ws, link, closed), daemon=True).start()

    def reconnect(self, i: int) -> bool:
        """Link to node ``i`` again (after it closed the link); False if it refused."""
        old = self.links.get(i)
        if old is not None:
            old[0].close()
        try:
            self._open(i, keep=True)
        except Exception:
            with self._lock:
                self.dead.add(i)
            return False
        return True

    def _read(self, i: int, ws: ClientConnection, link: Link,
              closed: threading.Event) -> None:
        try:
            for frame in ws:
                # The link opens the sealed frame (and answers a Ping itself); its
                # stream to the node is shared with the senders, under their lock.
                with self._send_locks[i]:
                    link.receive_frame(frame, 0)
                    for out in link.data_to_send():
                        ws.send(out)
                for ev in link.events_received():
                    if not isinstance(ev, Received):
                        continue
                    msg = ev.message
                    # Answered before it is kept: whoever waits for it (wait_message)
                    # finds the answer already sent.
                    if self.answer is not None:
                        self.answer(i, msg)
                    with self._lock:
                        self.received[i].append(msg)
                    self.inbox.put((i, msg))
                if link.closed:
                    break
        except Exception:
            pass
        finally:
            closed.set()
        with self._lock:
            if self.links.get(i, (None,))[0] is ws:
                self.dead.add(i)

    def wait_message(self, i: int, kind: type, timeout: float = 10) -> Any:
        """The first message of type ``kind`` node ``i`` sent on the current link
        (waiting for it); ``TimeoutError`` if none comes."""
        def first() -> Any:
            with self._lock:
                return next((m for m in self.received[i] if isinstance(m, kind)), None)
        return wait_for(first, timeout, f"a {kind.__name__} from node {i}")

    def fetch_blocks(self, i: int, first: int, count: int) -> dict[int, wire.Block]:
        """Real blocks ``first``.. (with their commits) asked of node ``i``, by height."""
        with self._lock:
            self.received[i] = [m for m in self.received[i]
                                if not isinstance(m, wire.Blocks)]
        self.send(i, wire.GetBlocks(first, count))
        got: wire.Blocks = self.wait_message(i, wire.Blocks)
        return {b.height: b for b in got.blocks}

    def send(self, i: int, msg: Any) -> bool:
        """One message (a ``wire`` message, or raw text: garbage the test sends) to
        node ``i``, sealed on the link; False when the link is down."""
        held = self.links.get(i)
        if held is None:
            return False
        ws, link = held
        payload = msg.encode() if isinstance(msg, str) else wire.encode(msg)
        try:
            with self._send_locks[i]:
                link.send_encoded(payload)
                for frame in link.data_to_send():
                    ws.send(frame)
        except Exception:
            return False
        return True

    def send_all(self, msg: Any) -> None:
        """One message to every linked node."""
        for i in list(self.links):
            self.send(i, msg)

    def close(self) -> None:
        """Close every link."""
        for ws, _ in list(self.links.values()):
            ws.close()

    # -- what it signs -------------------------------------------------------------------

    def votes(self, batch: int, votes: list[tuple[str, bool]]) -> wire.Votes:
        """A vote batch signed by this masternode."""
        return wire.sign_votes(self.key, self.network_id, batch, votes)

    def next_votes(self, votes: list[tuple[str, bool]]) -> wire.Votes:
        """A vote batch under this masternode's next batch number."""
        self._batch += 1
        return self.votes(self._batch, votes)

    def proposer(self, height: int, round_: int) -> str:
        """The proposer of (height, round) (SPEC 7.5)."""
        return proposer(self.validators, height, round_)

    def block(self, height: int, prev_hash: str, timestamp: int, round_: int) -> wire.Block:
        """An empty block this masternode makes for ``height`` in ``round_``: valid
        for any validator whose tip is ``prev_hash`` (no fees, so no coinbase); two
        timestamps make two different valid blocks for one round."""
        h = block_hash(height, prev_hash, timestamp, [], self.public_key, round_)
        return wire.Block(height, prev_hash, timestamp, (), self.public_key, round_, h, ())

    def proposal(self, block: wire.Block, round_: int, valid_round: int = -1
                 ) -> wire.Proposal:
        """``block`` proposed by this masternode for (its height, ``round_``)."""
        return wire.sign_proposal(self.key, self.network_id, block.height, round_,
                                  valid_round, block)

    def prevote(self, height: int, round_: int, value: str | None) -> wire.Prevote:
        """A prevote of this masternode (``value`` None: nil)."""
        return wire.sign_prevote(self.key, self.network_id, height, round_, value)

    def precommit(self, height: int, round_: int, value: str | None) -> wire.Precommit:
        """A precommit of this masternode (``value`` None: nil)."""
        return wire.sign_precommit(self.key, self.network_id, height, round_, value)

    # -- what it has learnt ----------------------------------------------------------------

    def proposals(self, height: int, round_: int) -> list[wire.Proposal]:
        """The proposals for (height, round) that nodes sent or relayed, one per block."""
        with self._lock:
            found = {m.block.hash: m for ms in self.received.values() for m in ms
                     if isinstance(m, wire.Proposal) and (m.height, m.round) == (height,
                                                                                   round_)}
        return list(found.values())


def sender(msg: wire.Message, byz: Byzantine) -> str | None:
    """Who signed a consensus message (a proposal names no signer: its proposer)."""
    if isinstance(msg, wire.Proposal):
        return byz.proposer(msg.height, msg.round)
    if isinstance(msg, wire.Prevote | wire.Precommit):
        return msg.voter
    return None


class Liar(threading.Thread):
    """Every lie of a byzantine masternode at once, until ``stop``:

    - as the proposer of a round, two different blocks, each to a different part of
      the honest nodes (drawn by ``rng``);
    - a prevote and a precommit for each block proposed in a round it sees, and for
      nil beside them (two votes for one round and step);
    - an approval of every transaction it hears of (so of both spends of a coin);
    - replays of old messages (proposals, votes of earlier heights, earlier vote
      batches, its own earlier lies), every 0.2-0.6 s;
    - a malformed or badly signed message every 0.5-1.5 s (the node closes the link,
      it links again).

    The height and round come from what the nodes send (``Status``, their proposals
    and votes).  ``counts`` says what it did."""

    GARBAGE = ("not json", "not an object", "unknown type", "bad field",
               "bad signature", "forged voter", "not the proposer", "bad batch")

    def __init__(self, byz: Byzantine, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.byz, self.rng = byz, rng
        self.stopped = threading.Event()
        self.counts = {"double_proposals": 0, "double_votes": 0, "replays": 0,
                       "garbage": 0, "approvals": 0}
        self.tips: dict[int, str] = {}
        self.rounds: dict[int, int] = {}  # height -> highest round an honest node is in
        self.values: dict[tuple[int, int], set[str]] = {}
        self.voted: set[tuple[int, int, str | None]] = set()  # (height, round, value)
        self.lied: set[tuple[int, int]] = set()  # rounds it voted two ways in
        self.proposed: set[tuple[int, int]] = set()
        self.approved: set[str] = set()
        self.old: list[wire.Message] = []  # what may be replayed
        self.last_ts = 0
        self._reconnect_at: dict[int, float] = {}

    def stop(self) -> None:
        """Stop lying (the links stay open)."""
        self.stopped.set()
        self.join(10)

    def height(self) -> int:
        """The height the honest nodes decide now, as far as it knows."""
        tip = max(self.tips, default=-1) + 1
        return max([tip, *self.rounds])

    def run(self) -> None:
        now = time.monotonic()
        replay_at = now + self.rng.uniform(0.2, 0.6)
        garbage_at = now + self.rng.uniform(0.5, 1.5)
        while not self.stopped.is_set():
            try:
                self._take(*self.byz.inbox.get(timeout=0.02))
                while True:
                    self._take(*self.byz.inbox.get_nowait())
            except queue.Empty:
                pass
            self._act()
            now = time.monotonic()
            if now >= replay_at:
                self._replay()
                replay_at = now + self.rng.uniform(0.2, 0.6)
            if now >= garbage_at:
                self._garbage()
                garbage_at = now + self.rng.uniform(0.5, 1.5)
            for i in list(self.byz.dead):
                if now >= self._reconnect_at.get(i, 0.0):
                    self._reconnect_at[i] = now + 0.3
                    self.byz.reconnect(i)

    def _take(self, i: int, msg: wire.Message) -> None:
        byz = self.byz
        if isinstance(msg, wire.Status):
            self.tips[msg.height] = msg.tip
        elif isinstance(msg, wire.Tx) and msg.tx.txid not in self.approved:
            self.approved.add(msg.tx.txid)
            self.counts["approvals"] += 1
            byz.send_all(byz.next_votes([(msg.tx.txid, True)]))
        elif isinstance(msg, wire.Votes):
            self.old.append(msg)
        elif isinstance(msg, wire.Proposal | wire.Prevote | wire.Precommit):
            self.old.append(msg)
            if sender(msg, byz) != byz.public_key:
                self.rounds[msg.height] = max(self.rounds.get(msg.height, 0), msg.round)
            if isinstance(msg, wire.Proposal):
                self.values.setdefault((msg.height, msg.round), set()).add(msg.block.hash)

    def _honest(self) -> list[int]:
        return sorted(self.byz.links)

    def _act(self) -> None:
        byz = self.byz
        h = self.height()
        for r in range(self.rounds.get(h, 0) + 1):
            if byz.proposer(h, r) == byz.public_key and (h, r) not in self.proposed:
                self._propose_twice(h, r)
            values = self.values.get((h, r), set())
            if not values:
                continue
            for v in [*sorted(values), None]:
                if (h, r, v) in self.voted:
                    continue
                self.voted.add((h, r, v))
                for m in (byz.prevote(h, r, v), byz.precommit(h, r, v)):
                    byz.send_all(m)
                    self.old.append(m)
            if (h, r) not in self.lied:
                self.lied.add((h, r))
                self.counts["double_votes"] += 1

    def _propose_twice(self, h: int, r: int) -> None:
        prev = self.tips.get(h - 1)
        nodes = self._honest()
        if prev is None or len(nodes) < 2:
            return  # it does not know the tip yet: it tries again later
        self.proposed.add((h, r))
        ts = max(int(time.time()), self.last_ts)
        self.last_ts = ts + 1
        a, b = (self.byz.block(h, prev, t, r) for t in (ts, ts + 1))
        first = set(self.rng.sample(nodes, self.rng.randint(1, len(nodes) - 1)))
        for block, to in ((a, first), (b, set(nodes) - first)):
            p = self.byz.proposal(block, r)
            self.old.append(p)
            for i in to:
                self.byz.send(i, p)
        self.values.setdefault((h, r), set()).update((a.hash, b.hash))
        self.counts["double_proposals"] += 1

    def _replay(self) -> None:
        h = self.height()
        old = [m for m in self.old if isinstance(m, wire.Votes)
               or getattr(m, "height", h) < h]
        nodes = self._honest()
        if old and nodes:
            self.byz.send(self.rng.choice(nodes), self.rng.choice(old))
            self.counts["replays"] += 1

    def _garbage(self) -> None:
        nodes = [i for i in self._honest() if i not in self.byz.dead]
        if not nodes:
            return
        i = self.rng.choice(nodes)
        self.byz.send(i, self.garbage(self.rng.choice(self.GARBAGE), self.height()))
        self.counts["garbage"] += 1

    def garbage(self, kind: str, h: int) -> Any:
        """A message no node may take: it closes the link (1008) and counts it."""
        byz = self.byz
        if kind == "not json":
            return "{not json"
        if kind == "not an object":
            return "[1, 2, 3]"
        if kind == "unknown type":
            return '{"type": "Gimme", "data": {}}'
        if kind == "bad field":
            return '{"type": "Prevote", "data": {"height": -1, "round": "x"}}'
        if kind == "bad signature":  # its own prevote, signed over another height
            good = byz.prevote(h + 7, 0, None)
            return wire.Prevote(h, 0, None, good.voter, good.signature)
        if kind == "forged voter":  # a vote in an honest masternode's name
            honest = next(k for k in byz.validators if k != byz.public_key)
            good = byz.prevote(h, 0, None)
            return wire.Prevote(h, 0, None, honest, good.signature)
        if kind == "not the proposer":  # a proposal for a round that is not its own
            r = next(r for r in range(len(byz.validators))
                     if byz.proposer(h, r) != byz.public_key)
            prev = self.tips.get(h - 1, "00" * 32)
            return byz.proposal(byz.block(h, prev, int(time.time()), r), r)
        good = byz.next_votes([("ab" * 32, True)])  # "bad batch": a signature of another
        return wire.Votes(good.voter, good.batch, (("cd" * 32, True),), good.signature)


class Router(threading.Thread):
    """The byzantine masternode as the only path between honest nodes (the test cut
    their links): every message one sends it goes on to the others, each copy once,
    unless ``withhold(source, destination, message)`` says no."""

    def __init__(self, byz: Byzantine,
                 withhold: Callable[[int, int, wire.Message], bool] | None = None) -> None:
        super().__init__(daemon=True)
        self.byz = byz
        self.withhold = withhold or (lambda i, j, m: False)
        self.stopped = threading.Event()
        self.sent: set[tuple[int, bytes]] = set()
        self.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                i, msg = self.byz.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(msg, LINK_LEVEL):
                continue
            frame = wire.encode(msg)
            for j in list(self.byz.links):
                if j == i or (j, frame) in self.sent or self.withhold(i, j, msg):
                    continue
                self.sent.add((j, frame))
                self.byz.send(j, frame.decode())

    def stop(self) -> None:
        """Stop forwarding."""
        self.stopped.set()
        self.join(5)
