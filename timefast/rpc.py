"""The node's JSON-RPC 2.0 (SPEC 5) over HTTP POST and WebSocket on RPC_ADDR.

``RpcDispatcher`` maps methods to the ledger and has no I/O; ``RpcConnection`` is an
HTTP/1.1 server on h11 (keep-alive, optional basic auth, no browsers) that hands a
WebSocket upgrade to websockets' sans-I/O ``ServerProtocol``; ``RpcService`` listens
and bounds the connections (``RpcLimits``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import h11
import orjson
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from timefast import PROTOCOL_VERSION, __version__
from timefast.commits import GroupCommit
from timefast.crypto import address_of
from timefast.errors import RequestError
from timefast.fragments import MessageAssembler, MessageError, drain
from timefast.ledger import Ledger, LedgerError, StorageError, unavailable
from timefast.session import utxo_cursor, wallet_addresses
from timefast.settings import SettingsError, host_port

if TYPE_CHECKING:
    from timefast.p2p.rounds import RoundDriver
    from timefast.p2p.switch import Switch

log = logging.getLogger("timefast.rpc")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL = (
    -32700, -32600, -32601, -32602, -32603)
# Application errors keep SPEC 3.4's code names in ``error.data.code``.
LEDGER_CODES = {"TX_INVALID": -26, "TX_CONFLICT": -27, "NOT_FOUND": -5,
                "INVALID_ADDRESS": -8, "BAD_REQUEST": INVALID_PARAMS, "UNAVAILABLE": -32001}
MAX_BODY = 4 << 20
MAX_GENERATE = 1000
# Addresses one getsnapshot may name: MAX_SUBSCRIPTIONS's default (an edge asks for
# what one wallet subscribes to).
MAX_SNAPSHOT_ADDRESSES = 10_000


class RpcError(Exception):
    """A JSON-RPC error object."""

    def __init__(self, code: int, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name

    def as_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.name:
            err["data"] = {"code": self.name}
        return err


def _params(params: Any, names: tuple[str, ...], required: int) -> list[Any]:
    if params is None:
        params = []
    if isinstance(params, dict):
        unknown = set(params) - set(names)
        if unknown:
            raise RpcError(INVALID_PARAMS, f"unknown parameter(s): {', '.join(sorted(unknown))}")
        values = [params.get(n) for n in names]
        missing = [n for n, v in list(zip(names, values, strict=True))[:required] if v is None]
    elif isinstance(params, list):
        if len(params) > len(names):
            raise RpcError(INVALID_PARAMS, f"at most {len(names)} parameter(s): "
                           f"{', '.join(names)}")
        values = list(params) + [None] * (len(names) - len(params))
        missing = list(names[len(params):required])
    else:
        raise RpcError(INVALID_REQUEST, "params must be an array or an object")
    if missing:
        raise RpcError(INVALID_PARAMS, f"missing parameter(s): {', '.join(missing)}")
    return values


class RpcDispatcher:
    """JSON-RPC methods of SPEC 5 over a ledger; ``extra_info`` adds to ``getinfo``."""

    def __init__(self, ledger: Ledger, make_block: Callable[[], dict[str, Any]] | None = None,
                 extra_info: Callable[[], dict[str, Any]] | None = None,
                 peers: Switch | None = None, rounds: RoundDriver | None = None) -> None:
        self.ledger = ledger
        self.peers = peers
        self.rounds = rounds
        self.make_block = make_block or ledger.blocks.make_block
        self.extra_info = extra_info
        self.methods: dict[str, tuple[tuple[str, ...], int, Callable[..., Any]]] = {
            "getinfo": ((), 0, self.getinfo),
            "getblockcount": ((), 0, lambda: ledger.height),
            "getbestblockhash": ((), 0, lambda: ledger.tip),
            "getblock": (("height_or_hash",), 1, ledger.reads.get_block),
            "sendrawtransaction": (("tx",), 1, ledger.submit),
            "gettransaction": (("txid",), 1, ledger.reads.get_transaction),
            "gettxout": (("txid", "vout"), 2, self.gettxout),
            "listunspent": (("address",), 1, self.listunspent),
            "getbalance": (("address",), 1, self.getbalance),
            "getaddresshistory": (("address", "limit", "before"), 1, ledger.reads.history),
            "masternodelist": ((), 0, self.masternodelist),
            "submitvote": (("vote",), 1, ledger.votes.submit_vote),
            "getpeerinfo": ((), 0, self.getpeerinfo),
            "addnode": (("address",), 1, self.addnode),
            # For edges (docs/EDGES.md): answers that carry the seq they were taken at.
            "getsnapshot": (("addresses", "after"), 1, self.getsnapshot),
            "submittransaction": (("tx",), 1, self.submittransaction),
        }
        if ledger.network == "regtest":
            self.methods["generate"] = (("n",), 0, self.generate)
            self.methods["faucet"] = (("address", "amount"), 2, ledger.faucet.pay)

    def getinfo(self) -> dict[str, Any]:
        led = self.ledger
        info = {"version": f"timefast/{__version__}", "protocol": PROTOCOL_VERSION,
                "network": led.network,
                "height": led.height, "best_block_hash": led.tip, "seq": led.seq,
                "masternode": led.public_key, "address": led.address,
                "masternodes": len(led.masternodes), "quorum": led.quorum,
                "peers": 0 if self.peers is None else len(self.peers.by_key),
                "consensus": (self.rounds.info() if self.rounds is not None else
                              {"height": led.height + 1, "round": 0, "step": "NewHeight"}),
                **led.reads.counts()}
        if self.extra_info is not None:
            info.update(self.extra_info())
        return info

    def gettxout(self, txid: Any, vout: Any) -> dict[str, Any] | None:
        if not isinstance(txid, str) or type(vout) is not int:
            raise RpcError(INVALID_PARAMS, "gettxout takes a txid string and a vout integer")
        return self.ledger.reads.get_txout(txid, vout)

    def _address(self, address: Any) -> str:
        if not isinstance(address, str):
            raise RpcError(INVALID_PARAMS, "address must be a string")
        return address

    def listunspent(self, address: Any) -> list[dict[str, Any]]:
        return self.ledger.reads.list_unspent(self._address(address))

    def getbalance(self, address: Any) -> int:
        return self.ledger.reads.balance(self._address(address))

    def masternodelist(self) -> list[dict[str, Any]]:
        led = self.ledger
        return [{"public_key": k, "address": address_of(k, led.network),
                 "self": k == led.public_key,
                 "connected": k == led.public_key or (self.peers is not None
                                                     and self.peers.connected(k)),
                 **led.votes.masternode_info(k)} for k in led.masternodes]

    def getpeerinfo(self) -> list[dict[str, Any]]:
        return [] if self.peers is None else self.peers.peer_info()

    def addnode(self, address: Any) -> dict[str, Any]:
        if not isinstance(address, str):
            raise RpcError(INVALID_PARAMS, "address must be a host:port string")
        try:
            address = host_port(address)
        except SettingsError as e:
            raise RpcError(INVALID_PARAMS, f"address: {e}") from None
        if self.peers is None:
            raise RpcError(INVALID_PARAMS, "this node has no peer network (set P2P_ADDR, "
                           "PEERS or MASTERNODES)")
        return {"address": address, "added": self.peers.add_node(address)}

    def getsnapshot(self, addresses: Any, after: Any = None) -> dict[str, Any]:
        """``{seq, snapshot: {address: snapshot}}``, taken at ``seq`` (one step of
        the loop, nothing committed between); ``after`` pages one address's UTXOs
        as ``GetUtxos`` does."""
        addrs = wallet_addresses({"addresses": addresses}, MAX_SNAPSHOT_ADDRESSES)
        cursor = utxo_cursor({"after": after}, addrs)
        led = self.ledger
        return {"seq": led.seq, "snapshot": {a: led.reads.snapshot(a, cursor) for a in addrs}}

    def submittransaction(self, tx: Any) -> dict[str, Any]:
        """``{txid, seq}``: ``seq`` is the last event of the node once the
        transaction is accepted (an edge answers its wallet once it has passed it)."""
        txid = self.ledger.submit(tx)
        return {"txid": txid, "seq": self.ledger.seq}

    def generate(self, n: Any = None) -> list[str]:
        n = self._generate_count(n)
        return [self.make_block()["hash"] for _ in range(n)]

    @staticmethod
    def _generate_count(n: Any) -> int:
        n = 1 if n is None else n
        if type(n) is not int or not 1 <= n <= MAX_GENERATE:
            raise RpcError(INVALID_PARAMS, f"n must be an integer from 1 to {MAX_GENERATE}")
        return int(n)

    def deferred(self, body: bytes) -> asyncio.Future[bytes] | None:
        """The answer of a request that waits for the network (``generate`` of a
        network of masternodes: the blocks the rounds commit), or None for any other
        request (answered by ``handle_bytes``)."""
        if self.rounds is None or b'"generate"' not in body:
            return None
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(req, dict) or req.get("method") != "generate":
            return None
        rid = req.get("id")
        loop = asyncio.get_running_loop()
        out: asyncio.Future[bytes] = loop.create_future()
        try:
            (n,) = _params(req.get("params"), ("n",), 0)
            k = self._generate_count(n)
        except RpcError as e:
            out.set_result(orjson.dumps(_error(rid, e)))
            return out
        fut = self.rounds.generate(k)
        # FINALITY_TIMEOUT x k without the blocks: fail (SPEC 7.5).
        limit = max(10.0, self.ledger.finality_timeout * k)

        def finished(f: asyncio.Future[list[str]]) -> None:
            if out.done():
                return
            if f.cancelled():
                e = RpcError(INTERNAL, "generate was cancelled")
            elif f.exception() is not None:
                exc = f.exception()
                e = (RpcError(INVALID_PARAMS, exc.message, exc.code)
                     if isinstance(exc, LedgerError) else RpcError(INTERNAL, str(exc)))
            else:
                out.set_result(orjson.dumps({"jsonrpc": "2.0", "id": rid,
                                             "result": f.result()}))
                return
            out.set_result(orjson.dumps(_error(rid, e)))

        def late() -> None:
            if not out.done():
                if self.rounds is not None:
                    self.rounds.generate_cancel()
                out.set_result(orjson.dumps(_error(rid, RpcError(
                    INTERNAL, f"the network did not commit {k} block(s) in {limit:g} s"))))
        fut.add_done_callback(finished)
        loop.call_later(limit, late)
        return out

    def call(self, method: str, params: Any) -> Any:
        """Run one method; raises ``RpcError``."""
        entry = self.methods.get(method)
        if entry is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")
        names, required, fn = entry
        args = _params(params, names, required)
        while args and args[-1] is None and len(args) > required:
            args.pop()
        try:
            return fn(*args)
        except RequestError as e:
            raise RpcError(LEDGER_CODES.get(e.code, INVALID_PARAMS), e.message, e.code) from None
        except StorageError as e:
            raise RpcError(LEDGER_CODES["UNAVAILABLE"], unavailable(e), "UNAVAILABLE") from None

    def handle(self, request: Any) -> dict[str, Any] | list[Any] | None:
        """One JSON-RPC request object or batch; None when nothing is to be answered."""
        if isinstance(request, list):
            if not request:
                return _error(None, RpcError(INVALID_REQUEST, "empty batch"))
            out = [r for r in (self._one(x) for x in request) if r is not None]
            return out or None
        return self._one(request)

    def _one(self, req: Any) -> dict[str, Any] | None:
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return _error(None, RpcError(INVALID_REQUEST, "a request is an object with a "
                                         "string 'method'"))
        rid = req.get("id")
        try:
            result = self.call(req["method"], req.get("params"))
        except RpcError as e:
            return None if "id" not in req else _error(rid, e)
        except Exception:  # a bug must not take the RPC down
            log.exception("RPC method %s failed", req["method"])
            return None if "id" not in req else _error(rid, RpcError(INTERNAL, "internal error"))
        if "id" not in req:
            return None
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    def handle_bytes(self, body: bytes) -> bytes | None:
        """JSON text in, JSON text out (None for notifications only)."""
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return orjson.dumps(_error(None, RpcError(PARSE_ERROR, "parse error: invalid JSON")))
        reply = self.handle(request)
        return None if reply is None else orjson.dumps(reply)


def _error(rid: Any, e: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": e.as_dict()}


@dataclass(frozen=True, slots=True)
class RpcLimits:
    """What one RPC client may hold of the node (SPEC 5); docs/OPERATIONS.md has the why.

    ``output_bytes`` is the unread output at which the node stops reading a
    connection (asyncio's write-buffer high-water mark); it reads again once the
    client has taken three quarters of it.
    """

    max_connections: int = 64
    request_timeout: float = 10.0  # from a request's first byte to its last
    idle_timeout: float = 30.0  # no request, or no output taken, for this long: close
    max_body: int = MAX_BODY
    max_head: int = 16384  # request line and headers
    output_bytes: int = 1 << 20
    # WebSocket requests being answered at once; past it the node stops reading.
    max_in_flight: int = 16
    allowed_hosts: frozenset[str] = frozenset()


# A WebSocket connection's input is handed to its protocol this many bytes at a
# time, so that reading can stop between two requests of one large read.
WS_FEED = 4096


def host_allowed(value: str, allowed: frozenset[str]) -> bool:
    """Whether a ``Host`` header names this node: an IP literal, localhost, or a listed name.

    A browser tricked by DNS rebinding sends the attacker's name, never one of these.
    """
    host = value.strip()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else ""
    else:
        name, sep, port = host.rpartition(":")
        if sep and port.isascii() and port.isdigit():
            host = name
    host = host.lower().rstrip(".")
    if host == "localhost" or host in allowed:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _raw_response(status: int, reason: str, body: bytes, extra: str = "") -> bytes:
    """A whole response that closes the connection, for when h11 can no longer write one."""
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


class RpcConnection(asyncio.Protocol):
    """HTTP/1.1 JSON-RPC with keep-alive, or JSON-RPC over WebSocket after an upgrade.

    HTTP is parsed by h11. With a ``GroupCommit``, each request runs in the next
    batch and its reply is written after that batch's commit; one HTTP request is in
    flight per connection and WebSocket replies keep the order of their requests.

    Reading stops while a request is in flight (HTTP), while ``max_in_flight``
    WebSocket requests are, or while the client leaves more than ``output_bytes``
    unread; what it sent meanwhile waits in the kernel, and TCP slows the client.
    """

    def __init__(self, service: RpcService) -> None:
        self.service = service
        self.dispatcher = service.dispatcher
        self.auth = service.auth
        self.commits = service.commits
        self.limits = service.limits
        self.http: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ws: ServerProtocol | None = None
        self.ws_input = bytearray()  # received, not yet handed to ``ws``
        self.busy = False  # an HTTP request is being answered
        self.in_flight = 0  # requests handed to the dispatcher, not yet answered
        self.processing = False  # inside _process or _feed_ws: callbacks must not re-enter
        self.write_paused = False
        self.read_paused = False
        self.timer: asyncio.TimerHandle | None = None

    # -- transport callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self.limits.output_bytes)
        svc = self.service
        if len(svc.connections) >= self.limits.max_connections:
            self.transport.write(_raw_response(503, "Service Unavailable", orjson.dumps(
                {"error": "capacity", "message": f"the RPC serves at most "
                 f"{self.limits.max_connections} connections"})))
            self.transport.close()
            return
        svc.connections.add(self)
        self._arm(self.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()
        # Output nobody takes is held only so long.
        self._arm(self.limits.idle_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._disarm_if_busy()
        self._continue()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws_input += data
            self._feed_ws()
            return
        assert self.http is not None
        if self.request is None and not self.busy and self.http.their_state is h11.IDLE:
            # The first bytes of a request: the whole of it must follow in time.
            self._arm(self.limits.request_timeout)
        self.http.receive_data(data)
        self._process()

    # -- flow control -------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.timer = asyncio.get_running_loop().call_later(delay, self._timeout)

    def _disarm_if_busy(self) -> None:
        """Work in flight is the node's delay, not the client's: no timeout meanwhile."""
        if self.timer is not None and self.in_flight and not self.write_paused:
            self.timer.cancel()
            self.timer = None

    def _timeout(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.ws is not None:
            stop = self.write_paused or self.in_flight >= self.limits.max_in_flight or bool(
                self.ws_input)
        else:
            stop = self.write_paused or self.busy
        if stop != self.read_paused:
            self.read_paused = stop
            if stop:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _continue(self) -> None:
        """Take up buffered input again after a reply or a drained write buffer."""
        if self.processing:
            return
        if self.ws is not None:
            self._feed_ws()
        else:
            self._process()

    # -- HTTP ---------------------------------------------------------------------------

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if self.auth is None:
            return True
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = base64.b64decode(token, validate=True).partition(b":")
        except binascii.Error:
            return False
        # Bytes, so that any credentials compare (compare_digest refuses non-ASCII
        # str); both compared, so the time taken says nothing about which was wrong.
        ok_user = hmac.compare_digest(user, self.auth[0].encode())
        ok_password = hmac.compare_digest(password, self.auth[1].encode())
        return ok_user and ok_password

    def _refusal(self, request: h11.Request) -> tuple[int, str, bytes, str] | None:
        """Why a request is refused before anything runs, or None."""
        headers = dict(request.headers)
        if b"origin" in headers:
            # Browsers send Origin; operators' tools do not. The RPC is not for pages.
            return 403, "Forbidden", b'{"error":"origin","message":"the RPC refuses ' \
                b'requests from web pages (Origin)"}', ""
        host = headers.get(b"host")
        if host is not None and not host_allowed(host.decode("latin-1"),
                                                 self.limits.allowed_hosts):
            return 403, "Forbidden", b'{"error":"host","message":"unknown Host; list it in ' \
                b'RPC_ALLOWED_HOSTS"}', ""
        if not self._authorized(headers):
            return 401, "Unauthorized", b'{"error":"unauthorized"}', \
                'WWW-Authenticate: Basic realm="timefast"\r\n'
        upgrade = headers.get(b"upgrade", b"").lower() == b"websocket"
        if request.method == b"GET" and upgrade:
            return None
        if request.method != b"POST":
            return 405, "Method Not Allowed", b'{"error":"POST JSON-RPC to /"}', \
                "Allow: POST\r\n"
        length = headers.get(b"content-length")
        if length is not None and int(length) > self.limits.max_body:
            return 413, "Payload Too Large", b'{"error":"body too large"}', ""
        return None

    def _refuse(self, status: int, reason: str, body: bytes, extra: str = "") -> None:
        if self.transport is not None:
            self.transport.write(_raw_response(status, reason, body, extra))
            self.transport.close()
        self.http = None

    def _process(self) -> None:
        """Read requests from h11's buffer while none is in flight."""
        self.processing = True
        try:
            while (self.http is not None and self.transport is not None
                   and not self.transport.is_closing() and not self.busy
                   and not self.write_paused):
                try:
                    event = self.http.next_event()
                except h11.RemoteProtocolError as e:
                    status = e.error_status_hint
                    self._refuse(status, HTTPStatus(status).phrase, orjson.dumps(
                        {"error": "bad request", "message": str(e)}))
                    return
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Request):
                    refusal = self._refusal(event)
                    if refusal is not None:
                        self._refuse(*refusal)
                        return
                    self.request, self.body = event, bytearray()
                    if self.http.they_are_waiting_for_100_continue:  # curl, bodies > 1 KB
                        self.transport.write(self.http.send(
                            h11.InformationalResponse(status_code=100, headers=[])) or b"")
                elif isinstance(event, h11.Data):
                    self.body += event.data
                    if len(self.body) > self.limits.max_body:  # chunked: no length ahead
                        self._refuse(413, "Payload Too Large", b'{"error":"body too large"}')
                        return
                elif event is h11.PAUSED:  # a WebSocket upgrade, whole
                    self._upgrade()
                    return
                elif isinstance(event, h11.EndOfMessage):
                    if self.request is not None and self.request.method == b"POST":
                        self._dispatch(bytes(self.body))
                elif isinstance(event, h11.ConnectionClosed):  # every request answered
                    self.transport.close()
                    return
        finally:
            self.processing = False
        self._update_reading()

    def _dispatch(self, body: bytes) -> None:
        self.busy = True
        self.request, self.body = None, bytearray()

        def reply(out: bytes | None) -> None:
            self.busy = False
            if self.transport is None or self.http is None:
                return
            payload = out or b""
            try:
                data = self.http.send(h11.Response(status_code=200, reason=b"OK", headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode())]))
                data += self.http.send(h11.Data(data=payload)) or b""
                data += self.http.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError:
                self.transport.close()
                return
            assert data is not None
            self.transport.write(data)
            if self.http.our_state is h11.MUST_CLOSE:
                self.transport.close()
                return
            self.http.start_next_cycle()
            if not self.write_paused:
                self._arm(self.limits.idle_timeout)
            self._continue()
            self._update_reading()

        self._dispatch_body(body, reply)
        self._update_reading()

    def _upgrade(self) -> None:
        """Hand the connection to websockets: the request as it came, then what followed."""
        assert self.http is not None and self.request is not None
        req = self.request
        head = b"GET " + req.target + b" HTTP/1.1\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in req.headers.raw_items()) + b"\r\n"
        rest = self.http.trailing_data[0]
        self.http = self.request = None
        self.ws = ServerProtocol(max_size=self.limits.max_body)
        self.ws_input += head + rest
        self._arm(self.limits.idle_timeout)
        self._feed_ws()

    def _dispatch_body(self, body: bytes, reply: Callable[[bytes | None], None]) -> None:
        """Answer one JSON-RPC body, in the next group commit when there is one."""
        self.in_flight += 1
        self._disarm_if_busy()

        def answered(out: bytes | None) -> None:
            self.in_flight -= 1
            reply(out)
            if self.ws is not None:
                if not self.in_flight and not self.write_paused:
                    self._arm(self.limits.idle_timeout)
                self._continue()

        waiting = self.dispatcher.deferred(body)
        if waiting is not None:
            waiting.add_done_callback(lambda f: answered(f.result()))
            return
        if self.commits is None:
            answered(self.dispatcher.handle_bytes(body))
            return

        def done(value: Any, err: BaseException | None) -> None:
            if err is not None:
                value = orjson.dumps(_error(None, RpcError(
                    LEDGER_CODES["UNAVAILABLE"], unavailable(err), "UNAVAILABLE")))
            answered(value)

        self.commits.submit(lambda: self.dispatcher.handle_bytes(body), done)

    # -- WebSocket ----------------------------------------------------------------------

    def _feed_ws(self) -> None:
        """Hand buffered input to websockets a slice at a time, while the client keeps up."""
        self.processing = True
        try:
            while (self.ws_input and self.transport is not None and not self.write_paused
                   and self.in_flight < self.limits.max_in_flight):
                chunk = bytes(self.ws_input[:WS_FEED])
                del self.ws_input[:WS_FEED]
                if not self.in_flight:
                    self._arm(self.limits.idle_timeout)
                self._ws_data(chunk)
        finally:
            self.processing = False
        self._update_reading()

    def _ws_data(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                ws.send_response(ws.accept(event))
            elif isinstance(event, Frame):
                self._ws_frame(ws, event)
        self._ws_flush()

    # The WebSocket's messages, reassembled from their frames (made at the first).
    _ws_messages: MessageAssembler | None = None

    def _ws_frame(self, ws: ServerProtocol, frame: Frame) -> None:
        messages = self._ws_messages
        if messages is None:
            messages = self._ws_messages = MessageAssembler(MAX_BODY)
        try:
            message = messages.feed(frame)
        except MessageError as e:
            ws.fail(e.code, e.reason)
            return
        if message is not None and message[0] is Opcode.TEXT:
            self._dispatch_body(message[1], self._ws_reply)

    def _ws_reply(self, out: bytes | None) -> None:
        if self.ws is not None and out is not None and self.ws.state is State.OPEN:
            self.ws.send_text(out)
            self._ws_flush()

    def _ws_flush(self) -> None:
        ws, transport = self.ws, self.transport
        if ws is None or transport is None:
            return
        if drain(ws, transport.write):
            transport.close()
        if ws.close_expected() or ws.state is State.CLOSED:
            transport.close()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            return None
        if self.http is not None:
            # A client may send its requests and then shut its side (printf | nc):
            # answer them, then close (h11 reports ConnectionClosed after the last).
            self.http.receive_data(b"")
            self._process()
            return True
        return None


class RpcService:
    """The RPC's listening socket and its connections."""

    def __init__(self, dispatcher: RpcDispatcher, auth: tuple[str, str] | None = None,
                 commits: GroupCommit | None = None, limits: RpcLimits | None = None) -> None:
        self.dispatcher = dispatcher
        self.auth = auth
        self.commits = commits
        self.limits = limits or RpcLimits()
        self.connections: set[RpcConnection] = set()
        self.server: asyncio.AbstractServer | None = None

    async def listen(self, host: str, port: int) -> list[tuple[str, int]]:
        """Start serving on ``host:port``; returns the bound addresses."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: RpcConnection(self), host, port,
                                               reuse_address=True)
        return [sock.getsockname()[:2] for sock in cast(asyncio.Server, self.server).sockets]

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
