"""Baseline: the same wallet protocol on plain websockets + uvloop + orjson.

The design the node is measured against: a dict index address -> connections and
``websockets.broadcast`` for every event.  It has no ledger: ``generate`` makes a
NewBlock and ``faucet`` makes the three events a payment sends to its receiver's
subscribers, with the node's message shapes and sizes.

    python bench/baseline_websockets.py WS_PORT RPC_PORT
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time

import orjson
import uvloop
from websockets.asyncio.server import broadcast, serve

subs: dict[str, set] = {}
conns: set = set()
state = {"height": 0, "seq": 0}


def _seq() -> int:
    state["seq"] += 1
    return state["seq"]


async def wallet(ws) -> None:
    conns.add(ws)
    mine: set[str] = set()
    try:
        async for raw in ws:
            msg = orjson.loads(raw)
            if msg.get("type") == "Subscribe":
                addrs = msg["data"]["addresses"]
                for a in addrs:
                    subs.setdefault(a, set()).add(ws)
                    mine.add(a)
                await ws.send(orjson.dumps({"type": "Subscribed", "data": {
                    "addresses": addrs, "seq": state["seq"]}}).decode())
            elif msg.get("type") == "Ping":
                await ws.send('{"type":"Pong"}')
    finally:
        conns.discard(ws)
        for a in mine:
            subs.get(a, set()).discard(ws)


def generate() -> str:
    state["height"] += 1
    h = hashlib.sha3_256(str(state["height"]).encode()).hexdigest()
    broadcast(conns, orjson.dumps({"type": "NewBlock", "data": {
        "height": state["height"], "hash": h, "prev_hash": h, "timestamp": int(time.time()),
        "tx_count": 0, "seq": _seq()}}).decode())
    return h


def faucet(address: str, amount: int) -> str:
    txid = hashlib.sha3_256(f"{address}{amount}{time.time()}".encode()).hexdigest()
    tx = {"txid": txid, "version": 1, "inputs": [{"previous_output": {"txid": txid, "vout": 0},
          "public_key": txid, "signature": txid * 2, "sequence": 4294967295}],
          "outputs": [{"amount": amount, "address": address},
                      {"amount": 10**15, "address": address}],
          "lock_time": 0, "timestamp": int(time.time())}
    targets = subs.get(address, set())
    broadcast(targets, orjson.dumps({"type": "TransactionPending",
                                     "data": {"tx": tx, "seq": _seq()}}).decode())
    broadcast(targets, orjson.dumps({"type": "UtxoStateChange", "data": {
        "outpoint": {"txid": txid, "vout": 0}, "address": address, "amount": amount,
        "state": "Unspent", "prev_state": None, "spending_txid": None, "votes": 1,
        "quorum": 1, "block_height": None, "transaction": tx, "seq": _seq()}}).decode())
    broadcast(targets, orjson.dumps({"type": "TransactionFinalized", "data": {
        "txid": txid, "block_height": None, "votes": 1, "quorum": 1,
        "seq": _seq()}}).decode())
    return txid


class Rpc(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(rest) < length:
                return
            body, self.buf = rest[:length], rest[length:]
            req = orjson.loads(body)
            method, params = req["method"], req.get("params", [])
            if method == "generate":
                result = [generate() for _ in range(params[0] if params else 1)]
            elif method == "faucet":
                result = faucet(*params)
            else:
                result = state["height"]
            out = orjson.dumps({"jsonrpc": "2.0", "id": req.get("id"), "result": result})
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(out), out))


async def main(ws_port: int, rpc_port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(Rpc, "127.0.0.1", rpc_port)
    async with serve(wallet, "127.0.0.1", ws_port, compression=None, ping_interval=None,
                     max_queue=None, backlog=4096):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
