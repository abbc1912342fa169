"""The wallet clients (``timefast.client`` and ``clients/js``) against real nodes.

One suite, three clients: Python, the JS client under Node, and the same JS file in
headless Chromium.  Each runs as a child process that prints every event it delivers
as a JSON line (tests/clients/); the test kills and restarts nodes around it.
Node, its ``ws`` module (``npm ci --prefix clients/js``), playwright-core and
Debian's chromium come from ``.ci/run``; where one is missing the test says so and
skips.  Requests go to the client as JSON lines on its stdin (``Client.request``),
answered by a ``Reply`` line.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import orjson
import pytest
import websocket

from timefast.transaction import build

from .helpers import NodeProcess, fund_coins, new_wallet, result, wait_for

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = Path(__file__).parent / "clients"
JS = ROOT / "clients" / "js"
NODE_MODULES = Path(os.environ.get("TIMEFAST_NODE_MODULES", ROOT / ".ci" / "node_modules"))
KINDS = ["python", "node", "chromium"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_process(data_dir: Path) -> NodeProcess:
    """A node on fixed ports, so that a restart is found at the same URL.

    Its send buffer holds the whole burst's events: the check at the end reads them
    in one replay, which the node counts against that buffer.
    """
    return NodeProcess(data_dir, WS_ADDR=f"127.0.0.1:{_free_port()}",
                       RPC_ADDR=f"127.0.0.1:{_free_port()}", SEND_BUFFER_BYTES=64 << 20)


def _restart(node: NodeProcess) -> NodeProcess:
    fresh = NodeProcess(node.data_dir)
    fresh.env = node.env
    return fresh.start()


def _argv(kind: str, urls: list[str], addresses: list[str]) -> list[str]:
    args = [",".join(urls), ",".join(addresses)]
    if kind == "python":
        return [sys.executable, str(RUNNERS / "py_runner.py"), *args]
    nodejs = shutil.which("node")
    if nodejs is None:
        pytest.skip("node is not installed")
    if not (JS / "node_modules" / "ws").exists():
        pytest.skip("clients/js has no node_modules (npm ci --prefix clients/js)")
    if kind == "node":
        return [nodejs, str(RUNNERS / "node_runner.mjs"), *args]
    if not (NODE_MODULES / "playwright-core").exists():
        pytest.skip("playwright-core is not installed (npm ci --prefix .ci)")
    if (os.environ.get("CHROMIUM") or shutil.which("chromium")) is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return [nodejs, str(RUNNERS / "chromium_runner.cjs"), *args]


class Client:
    """A client process; ``lines`` are the events it delivered, in order."""

    def __init__(self, kind: str, urls: list[str], addresses: list[str]) -> None:
        env = {**os.environ, "PLAYWRIGHT_CORE": str(NODE_MODULES / "playwright-core"),
               "CHROMIUM": os.environ.get("CHROMIUM") or shutil.which("chromium") or ""}
        self.proc = subprocess.Popen(_argv(kind, urls, addresses), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: list[dict[str, Any]] = []
        self._seen = 0  # lines before this index were looked at by an earlier wait_for
        self._read_all = threading.Event()  # its stdout closed: every line is in
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.lines.append(orjson.loads(text))
        self._read_all.set()

    def wait_for(self, pred: Any, timeout: float = 90) -> dict[str, Any]:
        """The first line from now on for which ``pred`` holds (the lines up to it are
        passed over by the next call)."""

        def next_match() -> dict[str, Any] | None:
            new = len(self.lines)
            for n in range(self._seen, new):
                if pred(self.lines[n]):
                    self._seen = n + 1
                    return self.lines[n]
            self._seen = new
            assert not self._read_all.is_set(), "the client exited"
            return None
        try:
            return wait_for(next_match, timeout, "such an event")
        except TimeoutError:
            raise AssertionError(f"no such event in {timeout} s; last: {self.lines[-3:]}"
                                 ) from None

    def send(self, cmd: dict[str, Any]) -> None:
        """Ask the client for something (see tests/clients/py_runner.py)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(cmd).decode() + "\n")
        self.proc.stdin.flush()

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``cmd``'s answer: ``{"result": ...}`` or ``{"error": code}``."""
        self.send(cmd)
        return self.wait_for(lambda e: e["type"] == "Reply")

    def stop(self) -> None:
        # SIGTERM first: playwright closes its browser on it.
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _events_since(ws_url: str, addresses: list[str], since: int) -> tuple[int, list[tuple]]:
    """Every event after ``since`` a subscriber of ``addresses`` gets: the node's replay."""
    ws = websocket.create_connection(ws_url, timeout=30)
    try:
        ws.send(orjson.dumps({"type": "Subscribe", "data": {
            "addresses": addresses, "since_seq": since, "snapshot": False}}).decode())
        sub = orjson.loads(ws.recv())
        assert sub["type"] == "Subscribed" and "resync" not in sub["data"], sub
        last, out = sub["data"]["seq"], []
        while not out or out[-1][0] < last:
            msg = orjson.loads(ws.recv())
            if msg["data"]["seq"] > last:
                break
            out.append((msg["data"]["seq"], msg["type"]))
        return last, out
    finally:
        ws.close()


def _send_all(node_box: list[NodeProcess], txs: list, sent: list[int],
              gates: dict[int, threading.Event]) -> None:
    """Submit ``txs`` in order through whichever node process is current, retrying
    each until it is acknowledged (resubmitting is idempotent).  Before payment ``n``
    it waits for ``gates[n]``, if there is one: the test sets it once it has killed
    the node, so that a kill always cuts the stream with payments still to come."""
    for n, tx in enumerate(txs):
        gate = gates.get(n)
        if gate is not None:
            gate.wait(120)
        while True:
            try:
                result(node_box[0].rpc_url, "sendrawtransaction", tx.to_json())
                break
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        sent[0] += 1


KILL_MARKS = (170, 340)  # payments sent when the node is killed
RUN_AHEAD = 20


@pytest.mark.parametrize("kind", KINDS)
def test_every_event_exactly_once_across_two_node_restarts(kind, tmp_path):
    box = [_node_process(tmp_path).start()]  # the node process of the moment
    node = box[0]
    client = None
    try:
        ka, a = new_wallet()
        _, b = new_wallet()
        coins = fund_coins(node.rpc_url, ka, a, 500, 100)
        txs = [build([(*coins[i], ka)], [(b, 600), (a, 400)], timestamp=i) for i in range(500)]
        client = Client(kind, [node.ws_url], [a, b])
        snap = client.wait_for(lambda e: e["type"] == "Snapshot")
        assert snap["balances"][a] == 500 * 1000
        client.wait_for(lambda e: e["type"] == "Connected")
        sent = [0]
        # The sender may run at most RUN_AHEAD payments past a mark before that mark's
        # kill: a test thread held up on a loaded machine once let it send all 500
        # before the second kill, and then no event was left to wait for.
        gates = {mark + RUN_AHEAD: threading.Event() for mark in KILL_MARKS}
        sender = threading.Thread(target=_send_all, args=(box, txs, sent, gates),
                                  daemon=True)
        sender.start()
        for mark in KILL_MARKS:
            while sent[0] < mark:
                assert sender.is_alive(), "the sender stopped"
                time.sleep(0.01)
            box[0].kill()
            gates[mark + RUN_AHEAD].set()
            box[0] = _restart(box[0])
            # Back in sync before the next kill, so that each kill cuts a live link.
            client.wait_for(lambda e: e["type"] == "Connected")
        sender.join(120)
        assert sent[0] == 500
        last, expected = _events_since(box[0].ws_url, [a, b], snap["seq"])
        client.wait_for(lambda e: e.get("seq", -1) >= last and e["type"] != "Connected")
        got = [(e["seq"], e["type"]) for e in client.lines
               if e["type"] not in ("Snapshot", "Connected", "Disconnected")]
        assert got == expected  # each event once, in order, none missing
        assert len([t for _, t in got if t == "TransactionFinalized"]) == 500
        assert sum(1 for e in client.lines if e["type"] == "Disconnected") == 2
        assert not any(e["type"] == "Resynced" for e in client.lines)
        assert client.lines[-1]["balances"] == {
            a: result(box[0].rpc_url, "getbalance", a), b: result(box[0].rpc_url, "getbalance", b)}
    finally:
        if client is not None:
            client.stop()
        box[0].kill()


@pytest.mark.parametrize("kind", KINDS)
def test_failover_to_another_node_resyncs_to_its_balance(kind, tmp_path):
    first = _node_process(tmp_path / "a").start()
    second = _node_process(tmp_path / "b").start()
    client = None
    try:
        ka, a = new_wallet()
        result(first.rpc_url, "faucet", a, 1000)
        coin = result(second.rpc_url, "faucet", a, 2500)
        client = Client(kind, [first.ws_url, second.ws_url], [a])
        snap = client.wait_for(lambda e: e["type"] == "Snapshot")
        assert snap["url"].rstrip("/") == first.ws_url and snap["balances"] == {a: 1000}
        first.kill()
        resynced = client.wait_for(lambda e: e["type"] == "Resynced")
        assert resynced["url"].rstrip("/") == second.ws_url
        assert resynced["reason"] == "another node"
        assert resynced["balances"] == {a: result(second.rpc_url, "getbalance", a)} == {a: 2500}
        # And it follows the new node live from there.
        tx = build([(coin, 0, ka)], [(new_wallet()[1], 700), (a, 1800)], timestamp=3)
        result(second.rpc_url, "sendrawtransaction", tx.to_json())
        fin = client.wait_for(lambda e: e["type"] == "TransactionFinalized")
        assert fin["txid"] == tx.txid
        assert fin["balances"] == {a: result(second.rpc_url, "getbalance", a)} == {a: 1800}
    finally:
        if client is not None:
            client.stop()
        first.kill()
        second.kill()


def _entries(txs: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(t["txid"], t["received"], t["sent"]) for t in txs]


@pytest.mark.parametrize("kind", KINDS)
def test_history_pages_payments_in_and_out_and_is_asked_again_after_a_restart(kind, tmp_path):
    box = [_node_process(tmp_path).start()]
    client = None
    try:
        ka, a = new_wallet()
        _, b = new_wallet()
        coin = result(box[0].rpc_url, "faucet", a, 10_000)  # in
        spent = [(coin, 0, 10_000)]
        txids = [coin]

        def pay(i: int) -> None:  # out: 100 to b, the change back to a
            txid, vout, amount = spent[-1]
            tx = build([(txid, vout, ka)], [(b, 100), (a, amount - 100)], timestamp=i)
            result(box[0].rpc_url, "sendrawtransaction", tx.to_json())
            spent.append((tx.txid, 1, amount - 100))
            txids.append(tx.txid)

        for i in range(6):
            pay(i)
        client = Client(kind, [box[0].ws_url], [a])
        client.wait_for(lambda e: e["type"] == "Connected")
        every = result(box[0].rpc_url, "getaddresshistory", a, 1000)
        assert every["tx_count"] == 7 and every["next"] is None
        assert [t["txid"] for t in every["txs"]] == txids[::-1]

        first = client.request({"op": "history", "address": a, "limit": 3})["result"]
        assert first["address"] == a and first["tx_count"] == 7
        assert first["balance"] == 10_000 - 600 and first["next"] is not None
        assert _entries(first["txs"]) == _entries(every["txs"][:3])
        assert first["txs"][0]["status"] in ("pending", "finalized", "confirmed")
        # New payments while the wallet pages: they go on top, never inside the pages
        # still to come, so following next loses and repeats nothing.
        pay(6)
        pay(7)
        got, cursor = first["txs"], first["next"]
        while cursor is not None:
            page = client.request({"op": "history", "address": a, "limit": 3,
                                   "before": cursor})["result"]
            got, cursor = got + page["txs"], page["next"]
        assert _entries(got) == _entries(every["txs"])
        assert _entries(got)[-2:] == [(txids[1], 9_900, 10_000), (coin, 10_000, 0)]

        # The whole history, two a page, asked while the node is down: sent again
        # once it is back.
        box[0].kill()
        client.wait_for(lambda e: e["type"] == "Disconnected")
        client.send({"op": "history_all", "address": a, "page_size": 2})
        box[0] = _restart(box[0])
        walked = client.wait_for(lambda e: e["type"] == "Reply")["result"]
        now = result(box[0].rpc_url, "getaddresshistory", a, 1000)
        assert now["tx_count"] == 9 and [t["txid"] for t in now["txs"]] == txids[::-1]
        assert _entries(walked) == _entries(now["txs"])

        # A refusal is the client's usual error, with the node's code.
        assert client.request({"op": "history", "address": "not an address!"}) \
            == {"type": "Reply", "op": "history", "error": "INVALID_ADDRESS"}
        assert client.request({"op": "history", "address": a, "limit": 1001})["error"] \
            == "BAD_REQUEST"
        assert client.request({"op": "history_all", "address": "-"})["error"] \
            == "INVALID_ADDRESS"
        # An address the node has never seen has an empty history, not an error.
        assert client.request({"op": "history", "address": b + "x"})["result"]["txs"] == []
    finally:
        if client is not None:
            client.stop()
        box[0].kill()


# -- the Python client against a scripted node: what a real one does rarely ------------


class ScriptedNode:
    """A WebSocket server answering as a node would, from ``script(conn_no, msg)``:
    it returns the messages to send back (replies and pushed events alike)."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.connections = 0
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.url = ""

    async def __aenter__(self) -> ScriptedNode:
        from websockets.asyncio.server import serve

        async def handler(ws: Any) -> None:
            self.connections += 1
            n = self.connections
            async for text in ws:
                msg = orjson.loads(text)
                self.received.append((n, msg))
                for out in self.script(n, msg):
                    if out == "CLOSE":
                        await ws.close()
                        return
                    await ws.send(orjson.dumps(out).decode())

        self._server = await serve(handler, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"ws://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


def _reply(msg: dict[str, Any], type_: str, data: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "data": data}
    if "id" in msg:
        out["id"] = msg["id"]
    return out


def _hello(msg: dict[str, Any], seq: int, node: str = "aa" * 32) -> dict[str, Any]:
    return _reply(msg, "Hello", {"protocol": "1.0", "network": "regtest", "node": node,
                                 "height": 0, "seq": seq, "limits": {}})


def _utxo(txid: str, amount: int, vout: int = 0, state: str = "Unspent") -> dict[str, Any]:
    return {"txid": txid, "vout": vout, "amount": amount, "state": state,
            "spending_txid": None, "votes": 0, "block_height": None}


def _change(seq: int, txid: str, amount: int, state: str, prev: str | None,
            transaction: Any = None) -> dict[str, Any]:
    return {"type": "UtxoStateChange", "data": {
        "outpoint": {"txid": txid, "vout": 0}, "address": "addr", "amount": amount,
        "state": state, "prev_state": prev, "spending_txid": None, "votes": 0, "quorum": 1,
        "block_height": None, "transaction": transaction, "seq": seq}}


async def _take(c: Any, n: int) -> list[Any]:
    from timefast.client import Connected, Disconnected

    out: list[Any] = []
    async with asyncio_timeout(20):
        async for ev in c:
            if not isinstance(ev, Connected | Disconnected):
                out.append(ev)
            if len(out) == n:
                return out
    return out


def asyncio_timeout(seconds: float) -> Any:
    import asyncio
    return asyncio.timeout(seconds)


def test_python_client_pages_snapshots_and_takes_abbreviated_transactions():
    import asyncio

    from timefast.client import Snapshot, UtxoStateChange, WalletClient

    page1 = [_utxo("c" * 64, 500), _utxo("b" * 64, 300)]
    page2 = [_utxo("a" * 64, 200)]

    def script(n: int, msg: dict[str, Any]) -> list[Any]:
        if msg["type"] == "Hello":
            return [_hello(msg, 10)]
        if msg["type"] == "Subscribe":
            return [_reply(msg, "Subscribed", {"addresses": ["addr"], "seq": 10, "snapshot": {
                "addr": {"balance": 1000, "utxos": page1, "more": True, "utxo_count": 3}}})]
        if msg["type"] == "GetUtxos":
            if msg["data"].get("after") == f"{'b' * 64}:0":
                return [_reply(msg, "Utxos", {"addr": {"balance": 1000, "utxos": page2},
                                              "seq": 11})]
            return [_reply(msg, "Utxos", {"addr": {"balance": 1000, "utxos": page1,
                                                   "more": True, "utxo_count": 3}, "seq": 11})]
        if msg["type"] == "Ping":
            # A big transaction comes abbreviated (SPEC 3.2: over 4 KiB).
            return [_reply(msg, "Pong", None),
                    _change(11, "d" * 64, 50, "Unspent", None, {"txid": "d" * 64, "size": 9000})]
        return []

    async def main() -> None:
        async with ScriptedNode(script) as node, WalletClient(node.url, ["addr"]) as c:
            snap, change = await _take(c, 2)
            assert isinstance(snap, Snapshot) and snap.balances == {"addr": 1000}
            assert isinstance(change, UtxoStateChange) and change.transaction_abbreviated
            assert c.balance("addr") == 1050 and c.seq == 11
            assert [u["txid"][0] for u in (await c.utxos(["addr"]))["addr"]["utxos"]] == \
                ["c", "b", "a"]

    asyncio.run(main())


def test_python_client_drops_a_repeated_event_and_snapshots_after_lagging_in_a_replay():
    import asyncio

    from timefast.client import Resynced, Snapshot, UtxoStateChange, WalletClient

    def script(n: int, msg: dict[str, Any]) -> list[Any]:
        t = msg["type"]
        if t == "Hello":
            return [_hello(msg, 30)]
        if n == 1 and t == "Subscribe":
            return [_reply(msg, "Subscribed", {"addresses": ["addr"], "seq": 20,
                                               "snapshot": {"addr": {"balance": 0, "utxos": []}}})]
        if n == 1 and t == "Ping":
            # seq 21 twice (no node should, the client must not care), then a close.
            return [_reply(msg, "Pong", None), _change(21, "e" * 64, 70, "Unspent", None),
                    _change(21, "e" * 64, 70, "Unspent", None), "CLOSE"]
        if n == 2 and t == "Subscribe":
            # The resume from 21 replays more than the node queues: Lagged, closed.
            return [{"type": "Lagged", "data": {"resume_from": 21}}, "CLOSE"]
        if t == "Subscribe":
            return [_reply(msg, "Subscribed", {"addresses": ["addr"], "seq": 40, "snapshot": {
                "addr": {"balance": 90, "utxos": [_utxo("f" * 64, 90)]}}})]
        if t == "Ping":
            return [_reply(msg, "Pong", None), _change(41, "f" * 64, 90, "Locked", "Unspent")]
        return []

    async def main() -> None:
        async with ScriptedNode(script) as node, WalletClient(node.url, ["addr"]) as c:
            evs = await _take(c, 4)
            assert [type(e) for e in evs] == [Snapshot, UtxoStateChange, Resynced,
                                              UtxoStateChange]
            assert [e.seq for e in evs] == [20, 21, 40, 41]
            assert evs[2].reason == "lagged in the replay" and evs[2].balances == {"addr": 90}
            subs = [m["data"] for _, m in node.received if m["type"] == "Subscribe"]
            assert subs[1] == {"addresses": ["addr"], "since_seq": 21, "snapshot": False}
            assert "since_seq" not in subs[2]
            assert c.balance("addr") == 0  # its one coin is Locked

    asyncio.run(main())


def test_js_client_suite_under_nodes_test_runner():
    """clients/js/test (node --test): the JS client against a scripted node."""
    nodejs = shutil.which("node")
    if nodejs is None:
        pytest.skip("node is not installed")
    if not (JS / "node_modules" / "ws").exists():
        pytest.skip("clients/js has no node_modules (npm ci --prefix clients/js)")
    run = subprocess.run([nodejs, "--test", "test/"], cwd=JS, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_python_client_ends_with_the_error_of_a_refused_subscribe():
    import asyncio

    from timefast.client import ClientError, WalletClient

    def script(n: int, msg: dict[str, Any]) -> list[Any]:
        if msg["type"] == "Hello":
            return [_hello(msg, 1)]
        if msg["type"] == "Subscribe":
            return [_reply(msg, "Error", {"code": "INVALID_ADDRESS", "message": "bad"})]
        return [_reply(msg, "Pong", None)] if msg["type"] == "Ping" else []

    async def main() -> None:
        async with ScriptedNode(script) as node:
            c = WalletClient(node.url, ["bad-address"])
            with pytest.raises(ClientError) as e:
                await c.start()
            assert e.value.code == "INVALID_ADDRESS"
            with pytest.raises(ConnectionError):
                await c.__anext__()
            await c.close()
            assert node.connections == 1

    asyncio.run(main())


def test_python_client_history_walk_starts_again_on_another_node_and_gives_each_once():
    """Node A's cursor means nothing to node B (its own storage order): after the
    failover the walk starts again from B's top and skips what A already gave."""
    import asyncio

    from timefast.client import WalletClient

    def page(msg: dict[str, Any], txids: list[str], next_: int | None) -> dict[str, Any]:
        return _reply(msg, "History", {"address": "addr", "balance": 15, "tx_count": 3,
                                       "next": next_, "txs": [{"txid": t, "status": "finalized",
                                                "block_height": None, "timestamp": 1,
                                                "received": 5, "sent": 0} for t in txids]})

    def node_a(n: int, msg: dict[str, Any]) -> list[Any]:
        if msg["type"] == "Hello":
            return [_hello(msg, 1)]
        if msg["type"] == "GetHistory" and "before" not in msg["data"]:
            return [page(msg, ["t3", "t2"], 5)]
        return ["CLOSE"]  # gone before the second page

    def node_b(n: int, msg: dict[str, Any]) -> list[Any]:
        if msg["type"] == "Hello":
            return [_hello(msg, 1, node="bb" * 32)]
        if msg["type"] != "GetHistory":
            return []
        before = msg["data"].get("before")
        if before == 5:
            return [page(msg, ["t9"], None)]  # A's cursor, read in B's order
        return [page(msg, ["t2", "t3"], 7)] if before is None else [page(msg, ["t1"], None)]

    async def main() -> None:
        async with ScriptedNode(node_a) as a, ScriptedNode(node_b) as b, \
                WalletClient([a.url, b.url], [], backoff_initial=0.02) as c:
            got = [tx.txid async for tx in c.history_all("addr", page_size=2)]
            assert got == ["t3", "t2", "t1"]
            assert [m["data"] for _, m in b.received if m["type"] == "GetHistory"] == [
                {"address": "addr", "limit": 2, "before": 5}, {"address": "addr", "limit": 2},
                {"address": "addr", "limit": 2, "before": 7}]
            first = await c.history("addr", 2)
            assert first.next == 7 and first.txs[0].txid == "t2" and first.tx_count == 3

    asyncio.run(main())
