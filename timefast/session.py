"""One wallet's conversation (SPEC 3.1-3.5), without any I/O.

A ``WalletSession`` takes the text of each message a wallet sends and queues its
replies as WebSocket frames on the wallet's fan-out slot.  It never reads or writes
a socket, so it is tested with a plain ``Fanout`` and a ledger.  What it serves comes
from a ``WalletSource``: the masternode's ledger, or an edge's stream and RPC.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from timefast import PROTOCOL_VERSION, _core
from timefast.commits import GroupCommit
from timefast.crypto import TXID
from timefast.errors import RequestError
from timefast.ledger import Event, Ledger, StorageError, unavailable
from timefast.source import LedgerSource, WalletSource
from timefast.transaction import ADDRESS_RE

# Signatures one connection may have waiting to be checked (submitted, not yet
# answered): bounds the verification work a wallet can queue (a transaction has at
# most a few hundred inputs).
SIGNATURE_BUDGET = 2048

log = logging.getLogger("timefast.wallet")


class Limits:
    """The per-connection limits a session enforces and ``Hello`` reports."""

    __slots__ = ("max_message_bytes", "max_subscriptions", "replay_events",
                 "send_buffer_bytes", "wallet_burst", "wallet_rate")

    def __init__(self, max_subscriptions: int = 10_000, max_message_bytes: int = 1 << 20,
                 send_buffer_bytes: int = 1 << 20, replay_events: int = 100_000,
                 wallet_rate: float = 1000.0, wallet_burst: int = 2000) -> None:
        self.max_subscriptions = max_subscriptions
        self.max_message_bytes = max_message_bytes
        self.send_buffer_bytes = send_buffer_bytes
        self.replay_events = replay_events
        # Messages a wallet may send per second (sustained) and in one burst.
        self.wallet_rate = wallet_rate
        self.wallet_burst = wallet_burst

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}


def wallet_addresses(data: dict[str, Any], limit: int) -> list[str]:
    addrs = data.get("addresses")
    if not isinstance(addrs, list) or not addrs:
        raise RequestError("BAD_REQUEST", "data.addresses must be a non-empty array")
    if len(addrs) > limit:
        raise RequestError("TOO_MANY_SUBSCRIPTIONS",
                            f"at most {limit} addresses per connection")
    for a in addrs:
        if not isinstance(a, str) or not ADDRESS_RE.fullmatch(a):
            raise RequestError("INVALID_ADDRESS",
                                f"{a!r} is not 1 to 128 characters of [A-Za-z0-9_]")
    return list(dict.fromkeys(addrs))


def utxo_cursor(data: dict[str, Any], addresses: list[str]) -> tuple[str, int] | None:
    """``GetUtxos``'s ``after`` ("txid:vout", the last UTXO of the previous page)."""
    after = data.get("after")
    if after is None:
        return None
    txid, sep, vout = after.partition(":") if isinstance(after, str) else ("", "", "")
    if not sep or not TXID.fullmatch(txid) or not vout.isascii() \
            or not vout.isdigit() or len(vout) > 10:
        raise RequestError("BAD_REQUEST", 'after must be "txid:vout", the last UTXO '
                           "of the previous page")
    if len(addresses) != 1:
        raise RequestError("BAD_REQUEST", "after pages one address: give exactly one")
    return txid, int(vout)


class Seen:
    """Ranges of ``seq`` whose events (of one kind) a connection already has.

    A flat list ``[lo1, hi1, lo2, hi2, ...]`` of disjoint, sorted, half-open ranges
    ``lo < seq <= hi`` (``hi`` infinite while live).  Replays consult it so that no
    event reaches a connection twice, whatever its mix of live subscriptions,
    unsubscriptions and resumes.
    """

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[float] = []

    def __contains__(self, seq: int) -> bool:
        r = self.ranges
        return any(r[i] < seq <= r[i + 1] for i in range(0, len(r), 2))

    def add(self, lo: float, hi: float) -> None:
        """Mark ``lo < seq <= hi`` as had, merging with touching ranges."""
        r = self.ranges
        out: list[float] = []
        placed = False
        for i in range(0, len(r), 2):
            a, b = r[i], r[i + 1]
            if b < lo:
                out += (a, b)
            elif hi < a:
                if not placed:
                    out += (lo, hi)
                    placed = True
                out += (a, b)
            else:
                lo, hi = min(lo, a), max(hi, b)
        if not placed:
            out += (lo, hi)
        self.ranges = out

    def close(self, seq: int) -> None:
        """A live range ends at ``seq`` (unsubscribed)."""
        if self.ranges and self.ranges[-1] == math.inf:
            self.ranges[-1] = seq

    def forget_before(self, seq: int) -> None:
        """Drop ranges wholly at or below ``seq``: no replay reaches back there."""
        r = self.ranges
        keep = 0
        while keep < len(r) and r[keep + 1] <= seq:
            keep += 2
        if keep:
            del r[:keep]


class WalletSession:
    """Message handling for one wallet connection on fan-out slot ``slot``."""

    __slots__ = (
        "client_id",
        "clock",
        "closed",
        "commits",
        "fanout",
        "floor",
        "forgotten_to",
        "held",
        "history",
        "limits",
        "live_since",
        "overflow",
        "peer",
        "queued",
        "seen",
        "seen_broadcasts",
        "signatures_waiting",
        "slot",
        "source",
        "tokens",
        "tokens_at",
        "waiting",
        "wake",
    )

    def __init__(self, source: WalletSource | Ledger, fanout: _core.Fanout, slot: int,
                 limits: Limits, client_id: str = "", peer: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 commits: GroupCommit | None = None,
                 wake: Callable[[], None] | None = None) -> None:
        if isinstance(source, Ledger):
            source = LedgerSource(source, commits)
        self.source = source
        self.commits = commits
        # Writes what replies are queued, once this loop turn ends (the server's
        # flush): a reply that comes back from the group commit has no incoming
        # message, and maybe no event, to schedule one.
        self.wake = wake
        self.closed = False
        self.fanout = fanout
        self.slot = slot
        self.limits = limits
        self.client_id = client_id
        self.peer = peer
        self.clock = clock
        # Broadcasts (NewBlock) reach a connection from its first message on: a
        # wallet resuming with since_seq gets its replay before any live event.
        self.live_since: int | None = None
        # The lowest seq this connection is owed events after: where it resumes
        # if it lags before any event reached it (see ``resume_from``).
        self.floor: int | None = None
        # Where a reply goes when the slot has no room for it (the server writes it
        # behind the slot's bytes without counting it as lag); None: the slot.
        self.overflow: Callable[[bytes], None] | None = None
        # What this connection already has, per address and for broadcasts (live
        # or replayed), so that a replay never repeats an event.
        self.seen: dict[str, Seen] = {}
        self.seen_broadcasts = Seen()
        # Unsubscribed addresses whose ranges ``seen`` still holds, oldest first
        # (bounded: ``_remember``), and the highest seq of any it forgot.
        self.history: dict[str, None] = {}
        self.forgotten_to = 0
        self.tokens = float(limits.wallet_burst)
        self.tokens_at = clock()
        self.signatures_waiting = 0
        # A Subscribe waiting for its snapshot (an edge asks the masternode): the
        # wallet's next messages wait in ``queued``, in order, and ``held(True)``
        # asks the connection to stop reading until they are answered.
        self.waiting = False
        self.queued: deque[str | bytes] = deque()
        self.held: Callable[[bool], None] | None = None

    # -- output ----------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Queue one JSON message (a direct reply) for this wallet.

        Replies never count as lag (SPEC 3.1): one that would fill more than half
        of the slot's ``SEND_BUFFER_BYTES`` goes to ``overflow`` instead, so that
        the events queued beside replies always have half the buffer to
        themselves.
        """
        frame = _core.frame_text(payload)
        fanout = self.fanout
        if (self.overflow is not None
                and fanout.pending(self.slot) + len(frame) > fanout.limit // 2):
            self.overflow(frame)
        else:
            fanout.send(self.slot, frame)

    def resume_from(self, last_flushed: int) -> int:
        """The ``seq`` a lagged wallet resumes from: the last event that reached it,
        or, when none did, the point its subscriptions started (never negative)."""
        if last_flushed >= 0:
            return last_flushed
        return max(0, self.source.seq if self.floor is None else self.floor)

    def reply(self, type_: str, data: dict[str, Any] | None, msg_id: Any) -> None:
        obj: dict[str, Any] = {"type": type_}
        if msg_id is not None:
            obj["id"] = msg_id
        if data is not None:
            obj["data"] = data
        self.send(orjson.dumps(obj))

    def error(self, code: str, message: str, msg_id: Any = None) -> None:
        self.reply("Error", {"code": code, "message": message}, msg_id)

    # -- input -----------------------------------------------------------------------

    def _take_token(self) -> bool:
        now = self.clock()
        lim = self.limits
        self.tokens = min(lim.wallet_burst, self.tokens + (now - self.tokens_at) * lim.wallet_rate)
        self.tokens_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def handle_text(self, text: str | bytes) -> None:
        """Answer one text message from the wallet (in order: after the ones before)."""
        if self.waiting:
            self.queued.append(text)
            if len(self.queued) == 1 and self.held is not None:
                self.held(True)  # until the queue is drained (``_resume``)
            return
        self._handle(text)
        if not self.waiting:
            self._go_live()

    def _go_live(self) -> None:
        if self.live_since is None:
            self.live_since = self.source.seq
            if self.floor is None or self.floor > self.live_since:
                self.floor = self.live_since
            self.seen_broadcasts.add(self.live_since, math.inf)
            self.fanout.set_live(self.slot)

    def _resume(self) -> None:
        """The waiting message is answered: handle those that came meanwhile."""
        self.waiting = False
        self._go_live()
        had = bool(self.queued)
        while self.queued and not self.waiting and not self.closed:
            self._handle(self.queued.popleft())
            if not self.waiting:
                self._go_live()
        if had and not self.queued and self.held is not None:
            self.held(False)
        if self.wake is not None:
            self.wake()

    def _answer(self, msg_id: Any,
                fn: Callable[[Any], None]) -> Callable[[Any, BaseException | None], None]:
        """A source callback that replies with ``fn(result)``, or refuses with the error."""
        def done(value: Any, err: BaseException | None) -> None:
            # The slot may belong to another wallet by now: answer only our own.
            if self.closed:
                return
            if err is not None:
                self.refuse(err, msg_id)
            else:
                fn(value)
            if self.wake is not None:
                self.wake()
        return done

    def _handle(self, text: str | bytes) -> None:
        if not self._take_token():
            self.error("RATE_LIMITED",
                       f"more than {self.limits.wallet_rate:g} messages a second")
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.error("BAD_JSON", "message is not valid JSON")
            return
        if not isinstance(msg, dict):
            self.error("BAD_REQUEST", "message must be a JSON object")
            return
        msg_id = msg.get("id")
        if msg_id is not None and (isinstance(msg_id, bool)
                                   or not isinstance(msg_id, str | int)):
            self.error("BAD_REQUEST", "id must be a string or an integer")
            return
        type_ = msg.get("type")
        if not isinstance(type_, str):
            self.error("BAD_REQUEST", "message needs a string 'type'", msg_id)
            return
        if type_ == "Ping":  # answered whatever else the message carries
            self.reply("Pong", None, msg_id)
            return
        handler = _HANDLERS.get(type_)
        if handler is None:
            self.error("UNKNOWN_TYPE", f"unknown message type {type_!r}", msg_id)
            return
        data = msg.get("data", {})
        if not isinstance(data, dict):
            self.error("BAD_REQUEST", "data must be an object", msg_id)
            return
        try:
            handler(self, data, msg_id)
        except (RequestError, StorageError) as e:
            self.refuse(e, msg_id)

    def refuse(self, e: BaseException, msg_id: Any) -> None:
        """Answer a refused request with the ``Error`` its exception stands for."""
        if isinstance(e, RequestError):
            self.error(e.code, e.message, msg_id)
        elif isinstance(e, StorageError):
            self.error("UNAVAILABLE", unavailable(e), msg_id)
        else:
            self.error("BAD_REQUEST", str(e), msg_id)

    # -- messages --------------------------------------------------------------------

    def on_subscribe(self, data: dict[str, Any], msg_id: Any) -> None:
        index = self.fanout.index
        addrs = wallet_addresses(data, self.limits.max_subscriptions)
        new = [a for a in addrs if not index.holds(self.slot, a)]
        if index.count_of(self.slot) + len(new) > self.limits.max_subscriptions:
            raise RequestError("TOO_MANY_SUBSCRIPTIONS",
                                f"at most {self.limits.max_subscriptions} addresses per "
                                "connection")
        since = data.get("since_seq")
        if since is not None and (type(since) is not int or since < 0):
            raise RequestError("BAD_REQUEST", "since_seq must be a non-negative integer")
        want_snapshot = data.get("snapshot", True)
        if not isinstance(want_snapshot, bool):
            raise RequestError("BAD_REQUEST", "snapshot must be true or false")
        # An address whose history this connection forgot (see ``_remember``)
        # might get again an event it had: a fresh snapshot instead.
        resync = since is not None and since < self.source.seq and (
            since < self.source.oldest_seq()
            or (since < self.forgotten_to and any(a not in self.seen for a in addrs)))
        src = self.source
        if since is not None and since > src.seq:
            # A wallet ahead of this port (an edge still reading its stream): its
            # Subscribe waits for the stream, lest it get again what it had.
            self._deferred(lambda done: src.reach(since, done), lambda _: self._subscribe(
                addrs, new, since, resync, want_snapshot or resync, msg_id), msg_id)
            return
        self._subscribe(addrs, new, since, resync, want_snapshot or resync, msg_id)

    def _deferred(self, begin: Callable[[Callable[[Any, BaseException | None], None]], None],
                  then: Callable[[Any], bool], msg_id: Any) -> bool:
        """``begin(done)`` asks the source; ``then(result)`` goes on (False: it asked
        again).  While the answer is awaited the session waits (``handle_text``).
        Returns whether all was answered at once."""
        answered = False
        finished = True
        waited = False

        def done(value: Any, err: BaseException | None) -> None:
            nonlocal answered, finished
            answered = True
            if self.closed:
                return
            if err is not None:
                self.refuse(err, msg_id)
                finished = True
            else:
                finished = then(value)
            if waited and finished:
                self._resume()

        begin(done)
        if answered:
            return finished
        waited = True
        self.waiting = True
        return False

    def _subscribe(self, addrs: list[str], new: list[str], since: int | None, resync: bool,
                   snapshot: bool, msg_id: Any) -> bool:
        if not snapshot:
            return self._subscribed(addrs, new, since, resync, None, msg_id)
        return self._deferred(
            lambda done: self.source.snapshots(addrs, None, done),
            lambda value: self._subscribed(addrs, new, since, resync, value, msg_id), msg_id)

    def _subscribed(self, addrs: list[str], new: list[str], since: int | None, resync: bool,
                    snapshot: tuple[int, dict[str, Any]] | None, msg_id: Any) -> bool:
        """Answer a Subscribe: ``Subscribed``, its replay, then live events; False
        when it had to start again (a new snapshot is on its way).

        ``snapshot`` is ``(seq, snapshots)`` taken at ``seq``, which the source has
        reached: the events after it (on an edge, those its stream brought while
        the masternode answered) are replayed, so nothing is doubled or missed.
        """
        src = self.source
        now = src.seq
        start = since if since is not None and not resync else (
            now if snapshot is None else snapshot[0])
        ok, replay = src.events_for(addrs, start)
        if not ok:
            # The kept window moved past ``start`` while the snapshot was on its way
            # (an edge only): start again with a fresh snapshot.
            return self._subscribe(addrs, new, since, since is not None, True, msg_id)
        out: dict[str, Any] = {"addresses": addrs,
                               "seq": now if snapshot is None else snapshot[0]}
        if snapshot is not None:
            out["snapshot"] = snapshot[1]
        if self.floor is None or start < self.floor:
            self.floor = start
        if resync:
            out["resync"] = True
        self.reply("Subscribed", out, msg_id)
        self._replay(replay, set(addrs))
        if start < now:
            self.seen_broadcasts.add(start, now)
        # Replayed and subscribed in the same call: no live event can fall between.
        self.fanout.index.subscribe(self.slot, new)
        # Only the addresses named are visited: the cost of a Subscribe follows its
        # own length, never the connection's history.
        oldest = src.oldest_seq()
        history = self.history
        for a in addrs:
            history.pop(a, None)
            seen = self.seen.get(a)
            if seen is None:
                seen = self.seen[a] = Seen()
            else:
                seen.forget_before(oldest)
            seen.add(start, math.inf)
        if new:
            log.info("📢 Client %s subscribed to %d addresses", self.client_id, len(new))
        return True

    def _replay(self, events: list[Event], wanted: set[str]) -> None:
        seen = self.seen
        frames: list[tuple[bytes, int]] = []
        for e in events:
            if e.addresses is None:
                if e.seq in self.seen_broadcasts:
                    continue
            elif not any(a in wanted for a in e.addresses) or any(
                    a in seen and e.seq in seen[a] for a in e.addresses):
                continue
            frames.append((_core.frame_text(e.payload), e.seq))
        if not frames:
            return
        fanout, slot = self.fanout, self.slot
        size = sum(len(f) for f, _ in frames)
        if self.overflow is not None and fanout.pending(slot) + size > fanout.limit // 2:
            # The replay is part of Subscribe's answer: a long one goes the way of a
            # large reply, not counted as lag.  The empty send records its last seq
            # as queued, for ``resume_from`` should the wallet lag later.
            self.overflow(b"".join(f for f, _ in frames))
            fanout.send(slot, b"", frames[-1][1])
            return
        for f, seq in frames:
            fanout.send(slot, f, seq)

    def on_unsubscribe(self, data: dict[str, Any], msg_id: Any) -> None:
        addrs = wallet_addresses(data, self.limits.max_subscriptions)
        self.fanout.index.unsubscribe(self.slot, addrs)
        now = self.source.seq
        for a in addrs:
            seen = self.seen.get(a)
            if seen is not None:
                seen.close(now)
                self._remember(a)
        self.reply("Unsubscribed", {"addresses": addrs}, msg_id)

    def _remember(self, address: str) -> None:
        """Keep an unsubscribed address's ranges, for a later resume of it.

        At most MAX_SUBSCRIPTIONS such histories are kept, the most recently
        unsubscribed: past that the oldest is forgotten, and ``forgotten_to`` notes
        the highest seq it covered (a resume from below it gets a snapshot).
        """
        history = self.history
        history.pop(address, None)
        history[address] = None  # the newest last
        while len(history) > self.limits.max_subscriptions:
            old = next(iter(history))
            del history[old]
            ranges = self.seen.pop(old).ranges
            if ranges:
                self.forgotten_to = max(self.forgotten_to, int(ranges[-1]))

    def on_hello(self, data: dict[str, Any], msg_id: Any) -> None:
        src = self.source
        self.reply("Hello", {"protocol": PROTOCOL_VERSION, "network": src.network,
                             "node": src.public_key, "address": src.address,
                             "height": src.height, "seq": src.seq,
                             "limits": self.limits.as_dict()}, msg_id)

    def on_get_utxos(self, data: dict[str, Any], msg_id: Any) -> None:
        addrs = wallet_addresses(data, self.limits.max_subscriptions)
        cursor = utxo_cursor(data, addrs)

        def utxos(value: tuple[int, dict[str, Any]]) -> None:
            self.reply("Utxos", {**value[1], "seq": value[0]}, msg_id)
        self.source.snapshots(addrs, cursor, self._answer(msg_id, utxos))

    def on_get_transaction(self, data: dict[str, Any], msg_id: Any) -> None:
        self.source.get_transaction(data.get("txid"), self._answer(
            msg_id, lambda v: self.reply("Transaction", v, msg_id)))

    def on_get_history(self, data: dict[str, Any], msg_id: Any) -> None:
        self.source.history(data.get("address"), data.get("limit"), data.get("before"),
                            self._answer(msg_id, lambda v: self.reply("History", v, msg_id)))

    def on_submit(self, data: dict[str, Any], msg_id: Any) -> None:
        if "tx" not in data:
            raise RequestError("BAD_REQUEST", "data.tx is required")
        cost, prepared = self.source.prepare_submit(data["tx"])
        if self.signatures_waiting + cost > SIGNATURE_BUDGET:
            raise RequestError("RATE_LIMITED", f"more than {SIGNATURE_BUDGET} signatures "
                                "waiting to be checked; wait for the answers first")
        self.signatures_waiting += cost
        reply = self._answer(
            msg_id, lambda txid: self.reply("TransactionAccepted", {"txid": txid}, msg_id))

        def done(txid: Any, err: BaseException | None) -> None:
            self.signatures_waiting -= cost
            reply(txid, err)

        self.source.submit(prepared, done)


_HANDLERS: dict[str, Callable[[WalletSession, dict[str, Any], Any], None]] = {
    "Subscribe": WalletSession.on_subscribe,
    "Unsubscribe": WalletSession.on_unsubscribe,
    "Hello": WalletSession.on_hello,
    "GetUtxos": WalletSession.on_get_utxos,
    "GetTransaction": WalletSession.on_get_transaction,
    "GetHistory": WalletSession.on_get_history,
    "SubmitTransaction": WalletSession.on_submit,
}
