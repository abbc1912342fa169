"""An asyncio wallet client for the timefast wallet protocol (SPEC 3).

It does what every wallet otherwise writes by hand: reconnect with backoff, resume by
``since_seq`` so that nothing is missed, never deliver an event twice, keep the
wallet's UTXOs consistent with the stream (a snapshot "as of seq", then every event
after it), and fail over across several masternode URLs.  ``seq`` is per node, so on
another node the client rebuilds the state from a snapshot there and says so with a
``Resynced`` event instead of silently skipping::

    async with WalletClient(["ws://a:8765", "ws://b:8765"], [address]) as c:
        async for event in c:
            if isinstance(event, UtxoStateChange):
                print(event.outpoint, event.state, c.balance(address))

Requests (``submit``, ``utxos``, ``transaction``, ``history``) wait for a connection
and are sent again on the next one if the link drops before the reply: all of them are
idempotent (SPEC 3.4).  The JavaScript client in ``clients/js`` behaves the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

__all__ = [
    "ClientError",
    "Connected",
    "Disconnected",
    "Event",
    "History",
    "HistoryEntry",
    "NewBlock",
    "Other",
    "Resynced",
    "Snapshot",
    "TransactionConfirmed",
    "TransactionFinalized",
    "TransactionPending",
    "TransactionRejected",
    "Utxo",
    "UtxoStateChange",
    "WalletClient",
]

log = logging.getLogger("timefast.client")


class ClientError(Exception):
    """An ``Error`` reply from the node; ``code`` is one of SPEC 3.4's codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Dropped(Exception):
    """The connection ended before a reply: the request is sent again."""


# -- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UtxoStateChange:
    """A UTXO of a subscribed address changed state (SPEC 3.2).

    ``transaction`` is the whole transaction, or ``{"txid", "size"}`` for one whose
    JSON passes 4 KiB (fetch it with ``WalletClient.transaction``), or None.
    """

    seq: int
    txid: str
    vout: int
    address: str
    amount: int
    state: str
    prev_state: str | None
    spending_txid: str | None
    votes: int
    quorum: int
    block_height: int | None
    transaction: dict[str, Any] | None

    @property
    def outpoint(self) -> tuple[str, int]:
        return self.txid, self.vout

    @property
    def transaction_abbreviated(self) -> bool:
        """True when ``transaction`` holds only ``txid`` and ``size``."""
        return self.transaction is not None and "inputs" not in self.transaction


@dataclass(frozen=True, slots=True)
class TransactionPending:
    seq: int
    tx: dict[str, Any]

    @property
    def txid(self) -> str:
        return str(self.tx.get("txid", ""))


@dataclass(frozen=True, slots=True)
class TransactionFinalized:
    seq: int
    txid: str
    block_height: int | None
    votes: int
    quorum: int


@dataclass(frozen=True, slots=True)
class TransactionConfirmed:
    seq: int
    txid: str
    block_height: int
    block_hash: str


@dataclass(frozen=True, slots=True)
class TransactionRejected:
    seq: int
    txid: str
    reason: str


@dataclass(frozen=True, slots=True)
class NewBlock:
    seq: int
    height: int
    hash: str
    prev_hash: str
    timestamp: int
    tx_count: int


@dataclass(frozen=True, slots=True)
class Other:
    """A pushed message this client version does not know (forward compatibility)."""

    type: str
    data: dict[str, Any]

    @property
    def seq(self) -> int | None:
        seq = self.data.get("seq")
        return seq if isinstance(seq, int) else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The first sync: the state of every address as of ``seq`` on ``node``."""

    url: str
    node: str
    seq: int
    balances: dict[str, int]


@dataclass(frozen=True, slots=True)
class Resynced:
    """The state was rebuilt from a fresh snapshot as of ``seq``, not resumed.

    ``reason``: ``"another node"`` (failover: seq is per node), ``"replay window
    passed"`` (the node no longer had every event since ours), ``"lagged in the
    replay"`` (the node closed us with ``Lagged`` while replaying them) or ``"node went
    back"`` (the node's seq is behind ours, e.g. restored from a backup).  Events between the
    last one delivered and the snapshot were not delivered: the state is right, the
    history may have a gap.
    """

    url: str
    node: str
    seq: int
    reason: str
    balances: dict[str, int]


@dataclass(frozen=True, slots=True)
class Connected:
    """In sync with the node at ``url`` (after ``Snapshot``/``Resynced`` if any)."""

    url: str
    node: str
    height: int
    seq: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The link to ``url`` ended; the client is reconnecting (or failing over)."""

    url: str
    reason: str


Event = (UtxoStateChange | TransactionPending | TransactionFinalized | TransactionConfirmed
         | TransactionRejected | NewBlock | Other | Snapshot | Resynced | Connected
         | Disconnected)


@dataclass(slots=True)
class Utxo:
    """One UTXO of the wallet's state; ``as_of`` is the seq it is known at."""

    txid: str
    vout: int
    amount: int
    state: str
    spending_txid: str | None = None
    votes: int = 0
    block_height: int | None = None
    as_of: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One transaction of an address's history (``GetHistory``).

    ``received``/``sent``: what it paid to and took from the address (integer units);
    ``status``: ``pending``, ``finalized``, ``confirmed`` or ``rejected``;
    ``timestamp``: the block's, or when the node accepted it while unconfirmed.
    """

    txid: str
    status: str
    block_height: int | None
    timestamp: int
    received: int
    sent: int


@dataclass(frozen=True, slots=True)
class History:
    """One page of an address's history, newest first; ``next`` is the ``before`` of
    the following page (None on the last one)."""

    address: str
    balance: int
    tx_count: int
    txs: list[HistoryEntry]
    next: int | None


def _history(d: dict[str, Any]) -> History:
    return History(d["address"], d["balance"], d["tx_count"],
                   [HistoryEntry(t["txid"], t["status"], t.get("block_height"),
                                 t["timestamp"], t["received"], t["sent"])
                    for t in d["txs"]],
                   d.get("next"))


def _event(type_: str, d: dict[str, Any]) -> Event:
    # Fields a node may add later are ignored (SPEC 3: unknown fields are ignored).
    if type_ == "UtxoStateChange":
        op = d["outpoint"]
        return UtxoStateChange(d["seq"], op["txid"], op["vout"], d["address"], d["amount"],
                               d["state"], d.get("prev_state"), d.get("spending_txid"),
                               d.get("votes", 0), d.get("quorum", 0), d.get("block_height"),
                               d.get("transaction"))
    if type_ == "TransactionPending":
        return TransactionPending(d["seq"], d["tx"])
    if type_ == "TransactionFinalized":
        return TransactionFinalized(d["seq"], d["txid"], d.get("block_height"),
                                    d.get("votes", 0), d.get("quorum", 0))
    if type_ == "TransactionConfirmed":
        return TransactionConfirmed(d["seq"], d["txid"], d["block_height"], d["block_hash"])
    if type_ == "TransactionRejected":
        return TransactionRejected(d["seq"], d["txid"], d.get("reason", ""))
    if type_ == "NewBlock":
        return NewBlock(d["seq"], d["height"], d["hash"], d["prev_hash"], d["timestamp"],
                        d.get("tx_count", 0))
    return Other(type_, d)


def _history_request(address: str, limit: int, before: int | None) -> dict[str, Any]:
    data: dict[str, Any] = {"address": address, "limit": limit}
    if before is not None:
        data["before"] = before
    return data


# -- the client ------------------------------------------------------------------------


class WalletClient:
    """A wallet's live view of ``addresses`` on one or more masternodes (``urls``).

    Use as ``async with`` (connects, and waits for the first sync) and iterate it for
    events.  ``since_seq`` and ``node`` resume a view saved earlier (from ``seq`` and
    ``node``); without them the first sync is a ``Snapshot``.  Events are queued
    without bound until the application reads them: nothing is dropped.
    """

    def __init__(self, urls: str | Sequence[str], addresses: Iterable[str], *,
                 since_seq: int | None = None, node: str | None = None,
                 backoff_initial: float = 0.1, backoff_max: float = 5.0,
                 open_timeout: float = 10.0, request_timeout: float = 30.0,
                 ping_interval: float = 15.0) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one URL is needed")
        self.addresses = list(dict.fromkeys(addresses))
        #: The node (Hello.node) whose seq space ``seq`` belongs to.
        self.node = node
        #: The last seq delivered (or taken from a snapshot).
        self.seq = since_seq
        #: address -> {(txid, vout): Utxo}, as of ``seq``.
        self.state: dict[str, dict[tuple[str, int], Utxo]] = {}
        #: Index in ``urls`` of the node in use (or being tried).
        self.index = 0
        self.url: str | None = None
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.ping_interval = ping_interval
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> WalletClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start connecting (once) and wait until the client is in sync."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_forever())
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        waiter = asyncio.ensure_future(self._ready.wait())
        assert self._task is not None
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            self._task.result()  # the loop ended: raise why
            raise ConnectionError("client closed")

    async def close(self) -> None:
        """Stop for good; iteration ends after the events already queued."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task  # its error, if any, was the iteration's to raise
        self._events.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._task is None:
            await self.start()
        assert self._task is not None
        ev = await self._events.get()
        if ev is None:
            self._events.put_nowait(None)
            if self._task.done() and not self._task.cancelled() and self._task.exception():
                raise ConnectionError("the client stopped") from self._task.exception()
            raise StopAsyncIteration
        return ev

    # -- wallet state --------------------------------------------------------------

    def balance(self, address: str) -> int:
        """Sum of the address's Unspent UTXOs, as of ``seq``."""
        return sum(u.amount for u in self.state.get(address, {}).values()
                   if u.state == "Unspent")

    def balances(self) -> dict[str, int]:
        return {a: self.balance(a) for a in self.addresses}

    # -- requests ------------------------------------------------------------------

    async def submit(self, tx: dict[str, Any] | str | bytes) -> str:
        """Submit a signed transaction (SPEC 4.1 JSON); returns its txid.

        Raises ``ClientError`` (``TX_INVALID``, ``TX_CONFLICT``, ...) when refused.
        """
        body = orjson.loads(tx) if isinstance(tx, str | bytes) else tx
        return str((await self._retrying("SubmitTransaction", {"tx": body}))["txid"])

    async def utxos(self, addresses: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{address: {balance, utxos}}`` with every page fetched (``more`` followed)."""
        addrs = list(addresses)
        while True:
            reply = await self._retrying("GetUtxos", {"addresses": addrs})
            try:
                for a in addrs:
                    await self._page_on(a, reply.get(a), None)
            except _Dropped:
                continue
            return {a: reply[a] for a in addrs if a in reply}

    async def transaction(self, txid: str) -> dict[str, Any]:
        """``{txid, status, votes, quorum, block_height, tx}``; ``ClientError`` NOT_FOUND."""
        return dict(await self._retrying("GetTransaction", {"txid": txid}))

    async def history(self, address: str, limit: int = 50,
                      before: int | None = None) -> History:
        """One page of ``address``'s history, newest first: at most ``limit`` (1 to
        1,000) transactions below ``before`` (the ``next`` of the page before).

        Raises ``ClientError`` (``INVALID_ADDRESS``, ``BAD_REQUEST``) when refused.
        """
        reply, _ = await self._retrying_at("GetHistory", _history_request(address, limit, before))
        return _history(reply)

    async def history_all(self, address: str, page_size: int = 200) -> AsyncIterator[HistoryEntry]:
        """Every transaction of ``address``'s history, newest first, page by page
        (``next`` followed), each once.

        A page lost with the link is asked again.  A cursor means something only to
        the node that gave it (its own storage order): after a failover the walk
        starts again from the top on the new node and skips what it already gave.
        """
        given: set[str] = set()
        before: int | None = None
        node: str | None = None
        while True:
            reply, at = await self._retrying_at(
                "GetHistory", _history_request(address, page_size, before))
            if before is not None and at != node:
                before, node = None, at  # another node: its own order, from the top
                continue
            node = at
            page = _history(reply)
            for tx in page.txs:
                if tx.txid not in given:
                    given.add(tx.txid)
                    yield tx
            if page.next is None:
                return
            before = page.next

    async def _retrying(self, type_: str, data: dict[str, Any]) -> Any:
        return (await self._retrying_at(type_, data))[0]

    async def _retrying_at(self, type_: str, data: dict[str, Any]) -> tuple[Any, str | None]:
        """The reply, and the node (``Hello.node``) that gave it."""
        while True:
            if self._closed:
                raise ConnectionError("client closed")
            await self.start()
            # In sync: ``node`` is the node of the connection the request goes out on.
            node = self.node
            try:
                return await self._request(type_, data), node
            except _Dropped:
                continue

    async def _request(self, type_: str, data: dict[str, Any] | None = None) -> Any:
        ws = self._ws
        if ws is None:
            raise _Dropped("not connected")
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[msg_id] = fut
        msg: dict[str, Any] = {"type": type_, "id": msg_id}
        if data is not None:
            msg["data"] = data
        try:
            await ws.send(orjson.dumps(msg).decode())
            return await asyncio.wait_for(fut, self.request_timeout)
        except (WebSocketException, OSError) as e:
            raise _Dropped(str(e)) from e
        except TimeoutError:
            await ws.close(4000, "request timeout")
            raise _Dropped(f"no reply to {type_} in {self.request_timeout} s") from None
        finally:
            self._requests.pop(msg_id, None)

    # -- state and delivery --------------------------------------------------------

    def _emit(self, ev: Event) -> None:
        self._events.put_nowait(ev)

    def _deliver(self, type_: str, data: dict[str, Any]) -> None:
        ev = _event(type_, data)
        seq = data.get("seq")
        if isinstance(seq, int):
            if self.seq is not None and seq <= self.seq:
                return  # had it already
            if isinstance(ev, UtxoStateChange):
                self._track_coin(ev)
            self.seq = seq
        self._emit(ev)

    def _track_coin(self, ev: UtxoStateChange) -> None:
        utxos = self.state.setdefault(ev.address, {})
        known = utxos.get(ev.outpoint)
        if known is not None and known.as_of >= ev.seq:
            return  # a later page of the snapshot already has it
        if ev.state == "Confirmed":  # spent in a block: history, not holdings
            utxos.pop(ev.outpoint, None)
            return
        utxos[ev.outpoint] = Utxo(ev.txid, ev.vout, ev.amount, ev.state, ev.spending_txid,
                                  ev.votes, ev.block_height, ev.seq)

    def _load(self, address: str, entry: dict[str, Any] | None, as_of: int) -> None:
        utxos = self.state.setdefault(address, {})
        for u in (entry or {}).get("utxos", []):
            op = (u["txid"], u["vout"])
            known = utxos.get(op)
            if known is None or known.as_of <= as_of:
                utxos[op] = Utxo(u["txid"], u["vout"], u["amount"], u["state"],
                                 u.get("spending_txid"), u.get("votes", 0),
                                 u.get("block_height"), as_of)

    async def _page_on(self, address: str, entry: dict[str, Any] | None,
                       as_of: int | None) -> None:
        """Follow ``more``: GetUtxos ``after`` the last UTXO listed, until all are had.

        ``as_of`` None gathers the pages into ``entry``; else they go into the state.
        """
        page = entry
        while page and page.get("more") and page.get("utxos"):
            last = page["utxos"][-1]
            reply = await self._request("GetUtxos", {"addresses": [address],
                                                     "after": f"{last['txid']}:{last['vout']}"})
            page = reply.get(address)
            if page is None:
                break
            if as_of is None:
                assert entry is not None
                entry["utxos"] += page.get("utxos", [])
            else:
                self._load(address, page, reply.get("seq", as_of))
        if as_of is None and entry is not None:
            entry.pop("more", None)

    # -- the connection loop -------------------------------------------------------

    async def _run_forever(self) -> None:
        try:
            await self._connections()
        finally:
            self._events.put_nowait(None)  # ends the iteration (with the error if any)

    async def _connections(self) -> None:
        delay = self.backoff_initial
        failures = 0
        while not self._closed:
            url = self.urls[self.index]
            synced = False
            reason = "closed"
            try:
                async with connect(url, open_timeout=self.open_timeout,
                                   ping_interval=self.ping_interval,
                                   ping_timeout=self.ping_interval,
                                   max_size=None) as ws:
                    self._ws = ws
                    reader = asyncio.ensure_future(self._read(ws))
                    try:
                        await self._sync(ws, url, reader)
                        synced = True
                        await reader
                    finally:
                        reader.cancel()
                        with contextlib.suppress(BaseException):
                            await reader
                    reason = f"closed {ws.close_code}" if ws.close_code else "closed"
            except (WebSocketException, OSError, TimeoutError, _Dropped) as e:
                self.last_error = e
                reason = str(e) or type(e).__name__
            finally:
                self._ws = None
                self._ready.clear()
                self._drop_requests()
            if self._closed:
                break
            if not synced and self._lagged:
                # The replay since our seq was more than the node would queue: take a
                # snapshot next time rather than ask for the same replay forever.
                self._snapshot_next = True
            if synced:
                self._emit(Disconnected(url, self._lagged or reason))
                delay, failures = self.backoff_initial, 0
            else:
                failures += 1
            # The node in use is gone: try the next one; wait once every URL failed.
            self.index = (self.index + 1) % len(self.urls)
            if not synced and failures % len(self.urls) == 0:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    async def _read(self, ws: ClientConnection) -> None:
        """Route replies to their requests; hold pushed events while syncing."""
        self._lagged = None
        try:
            await self._route(ws)
        finally:
            self._drop_requests()

    def _drop_requests(self) -> None:
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(_Dropped("connection lost"))

    async def _route(self, ws: ClientConnection) -> None:
        async for text in ws:
            try:
                self._route_one(orjson.loads(text))
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
                # Not what SPEC 3 says a node sends: say so, keep the link.
                log.warning("ignoring a malformed message from %s: %.200r", self.url, text)

    def _route_one(self, msg: dict[str, Any]) -> None:
        msg_id = msg.get("id")
        fut = self._requests.get(msg_id) if msg_id is not None else None
        if fut is not None:
            if fut.done():
                return
            if msg.get("type") == "Error":
                d = msg.get("data", {})
                fut.set_exception(ClientError(d.get("code", ""), d.get("message", "")))
            else:
                fut.set_result(msg.get("data"))
            return
        type_ = str(msg["type"])
        if type_ == "Lagged":
            self._lagged = f"lagged (resume from {msg['data']['resume_from']})"
        elif type_ not in ("Error", "Pong"):
            if self._buffer is not None:
                # Parsed now, so that a malformed event is found here, not later.
                _event(type_, msg.get("data", {}))
                self._buffer.append(msg)
            else:
                self._deliver(type_, msg.get("data", {}))

    _buffer: list[dict[str, Any]] | None = None
    _lagged: str | None = None
    _snapshot_next = False

    async def _sync(self, ws: ClientConnection, url: str, reader: asyncio.Future[None]) -> None:
        """Hello, then resume (same node) or snapshot (first time, or another node)."""
        self._buffer = []
        try:
            hello = await self._request("Hello")
            same = (self.node is not None and hello["node"] == self.node
                    and self.seq is not None and hello["seq"] >= self.seq
                    and not self._snapshot_next)
            had_state = self.node is not None
            sub: dict[str, Any] | None = None
            if self.addresses:
                data: dict[str, Any] = {"addresses": self.addresses}
                if same:
                    data.update(since_seq=self.seq, snapshot=False)
                # Replies and replayed events come in order: once the Ping is answered,
                # every replayed event is in the buffer.
                sub, _ = await asyncio.gather(self._request("Subscribe", data),
                                              self._request("Ping"))
            if not same or (sub is not None and sub.get("resync")):
                why = ("another node" if hello["node"] != self.node
                       else "node went back" if self.seq is not None and hello["seq"] < self.seq
                       else "lagged in the replay" if self._snapshot_next
                       else "replay window passed")
                at = sub["seq"] if sub is not None else hello["seq"]
                self.state = {}
                for a in self.addresses:
                    entry = (sub or {}).get("snapshot", {}).get(a)
                    self._load(a, entry, at)
                    await self._page_on(a, entry, at)
                self.seq = at
                if had_state:
                    self._emit(Resynced(url, hello["node"], at, why, self.balances()))
                else:
                    self._emit(Snapshot(url, hello["node"], at, self.balances()))
            self.node = hello["node"]
            self.url = url
            self._snapshot_next = False
            self._emit(Connected(url, hello["node"], hello["height"], hello["seq"]))
            buffered = sorted(self._buffer, key=lambda m: m.get("data", {}).get("seq", 0))
        finally:
            self._buffer = None
        for msg in buffered:
            self._deliver(msg["type"], msg.get("data", {}))
        if reader.done():
            reader.result()
        self._ready.set()
