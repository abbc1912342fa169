"""The node's JSON-RPC 2.0 (SPEC 5) over HTTP POST and WebSocket on RPC_ADDR.

``RpcDispatcher`` maps methods to the ledger and has no I/O; ``RpcConnection`` is a
small HTTP/1.1 server (keep-alive, optional basic auth) that hands a WebSocket
upgrade to websockets' sans-I/O ``ServerProtocol``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Callable
from typing import Any, cast

import orjson
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from timefast.commits import GroupCommit
from timefast.fragments import MessageAssembler, MessageError
from timefast.ledger import Ledger, LedgerError
from timefast.storage import StorageError, unavailable

log = logging.getLogger("timefast.rpc")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL = (
    -32700, -32600, -32601, -32602, -32603)
# Application errors keep SPEC 3.4's code names in ``error.data.code``.
LEDGER_CODES = {"TX_INVALID": -26, "TX_CONFLICT": -27, "NOT_FOUND": -5,
                "INVALID_ADDRESS": -8, "BAD_REQUEST": INVALID_PARAMS, "UNAVAILABLE": -32001}
MAX_BODY = 4 << 20
MAX_GENERATE = 1000


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
                 extra_info: Callable[[], dict[str, Any]] | None = None) -> None:
        self.ledger = ledger
        self.make_block = make_block or ledger.make_block
        self.extra_info = extra_info
        self.methods: dict[str, tuple[tuple[str, ...], int, Callable[..., Any]]] = {
            "getinfo": ((), 0, self.getinfo),
            "getblockcount": ((), 0, lambda: ledger.height),
            "getbestblockhash": ((), 0, lambda: ledger.tip),
            "getblock": (("height_or_hash",), 1, ledger.get_block),
            "sendrawtransaction": (("tx",), 1, ledger.submit),
            "gettransaction": (("txid",), 1, ledger.get_transaction),
            "gettxout": (("txid", "vout"), 2, self.gettxout),
            "listunspent": (("address",), 1, self.listunspent),
            "getbalance": (("address",), 1, self.getbalance),
            "masternodelist": ((), 0, self.masternodelist),
            "submitvote": (("vote",), 1, ledger.submit_vote),
        }
        if ledger.network == "regtest":
            self.methods["generate"] = (("n",), 0, self.generate)
            self.methods["faucet"] = (("address", "amount"), 2, ledger.faucet)

    def getinfo(self) -> dict[str, Any]:
        led = self.ledger
        info = {"version": "timefast/0.1.0", "protocol": "1.0", "network": led.network,
                "height": led.height, "best_block_hash": led.tip, "seq": led.seq,
                "masternode": led.public_key, "address": led.address,
                "masternodes": len(led.masternodes), "quorum": led.quorum,
                "pending": len(led.pending), "unconfirmed": len(led.unconfirmed)}
        if self.extra_info is not None:
            info.update(self.extra_info())
        return info

    def gettxout(self, txid: Any, vout: Any) -> dict[str, Any] | None:
        if not isinstance(txid, str) or type(vout) is not int:
            raise RpcError(INVALID_PARAMS, "gettxout takes a txid string and a vout integer")
        return self.ledger.get_txout(txid, vout)

    def _address(self, address: Any) -> str:
        if not isinstance(address, str):
            raise RpcError(INVALID_PARAMS, "address must be a string")
        return address

    def listunspent(self, address: Any) -> list[dict[str, Any]]:
        return self.ledger.list_unspent(self._address(address))

    def getbalance(self, address: Any) -> int:
        return self.ledger.balance(self._address(address))

    def masternodelist(self) -> list[dict[str, Any]]:
        from timefast.crypto import address_of
        return [{"public_key": k, "address": address_of(k, self.ledger.network),
                 "self": k == self.ledger.public_key} for k in self.ledger.masternodes]

    def generate(self, n: Any = None) -> list[str]:
        n = 1 if n is None else n
        if type(n) is not int or not 1 <= n <= MAX_GENERATE:
            raise RpcError(INVALID_PARAMS, f"n must be an integer from 1 to {MAX_GENERATE}")
        return [self.make_block()["hash"] for _ in range(n)]

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
        except LedgerError as e:
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


class RpcConnection(asyncio.Protocol):
    """HTTP/1.1 JSON-RPC with keep-alive, or JSON-RPC over WebSocket after an upgrade.

    With a ``GroupCommit``, each request runs in the next batch and its reply is
    written after that batch's commit; one HTTP request is in flight per connection
    and WebSocket replies keep the order of their requests.
    """

    def __init__(self, dispatcher: RpcDispatcher, auth: tuple[str, str] | None,
                 commits: GroupCommit | None = None) -> None:
        self.dispatcher = dispatcher
        self.auth = auth
        self.commits = commits
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ws: ServerProtocol | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.auth is None:
            return True
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.auth[0]) and hmac.compare_digest(
            password, self.auth[1])

    def _send(self, status: str, body: bytes, close: bool = False,
              extra: str = "") -> None:
        if self.transport is None:
            return
        head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}"
                f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n")
        self.transport.write(head.encode() + body)
        if close:
            self.transport.close()

    def _run(self, body: bytes, reply: Callable[[bytes | None], None]) -> None:
        """Answer one JSON-RPC body, in the next group commit when there is one."""
        if self.commits is None:
            reply(self.dispatcher.handle_bytes(body))
            return

        def done(value: Any, err: BaseException | None) -> None:
            if err is not None:
                value = orjson.dumps(_error(None, RpcError(
                    LEDGER_CODES["UNAVAILABLE"], unavailable(err), "UNAVAILABLE")))
            reply(value)

        self.commits.submit(lambda: self.dispatcher.handle_bytes(body), done)

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self._ws_data(data)
            return
        self.buf += data
        self._process()

    def _process(self) -> None:
        while self.transport is not None and not self.transport.is_closing() and not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self._send("431 Request Header Fields Too Large", b'{"error":"headers"}',
                               close=True)
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            parts = head[0].split(" ")
            if len(parts) != 3:
                self._send("400 Bad Request", b'{"error":"bad request line"}', close=True)
                return
            method = parts[0]
            headers: dict[str, str] = {}
            for line in head[1:]:
                k, sep, v = line.partition(":")
                if sep:
                    headers[k.strip().lower()] = v.strip()
            if not self._authorized(headers):
                self._send("401 Unauthorized", b'{"error":"unauthorized"}', close=True,
                           extra='WWW-Authenticate: Basic realm="timefast"\r\n')
                return
            if method == "GET" and headers.get("upgrade", "").lower() == "websocket":
                raw = bytes(self.buf)
                self.buf.clear()
                self.ws = ServerProtocol(max_size=MAX_BODY)
                self._ws_data(raw)
                return
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._send("413 Payload Too Large", b'{"error":"body too large"}', close=True)
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            close = headers.get("connection", "").lower() == "close"
            if method != "POST":
                self._send("405 Method Not Allowed", b'{"error":"POST JSON-RPC to /"}',
                           close=True, extra="Allow: POST\r\n")
                return
            self.busy = True

            def reply(out: bytes | None, close: bool = close) -> None:
                self.busy = False
                self._send("200 OK", out or b"", close=close)
                self._process()

            self._run(body, reply)

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
            self._run(message[1], self._ws_reply)

    def _ws_reply(self, out: bytes | None) -> None:
        if self.ws is not None and out is not None and self.ws.state is State.OPEN:
            self.ws.send_text(out)
            self._ws_flush()

    def _ws_flush(self) -> None:
        ws, transport = self.ws, self.transport
        if ws is None or transport is None:
            return
        for chunk in ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                transport.close()
        if ws.close_expected() or ws.state is State.CLOSED:
            transport.close()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
        return None


async def serve_rpc(dispatcher: RpcDispatcher, host: str, port: int,
                    auth: tuple[str, str] | None = None,
                    commits: GroupCommit | None = None) -> asyncio.AbstractServer:
    """Start the RPC server on ``host:port``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: RpcConnection(dispatcher, auth, commits), host,
                                    port, reuse_address=True)
