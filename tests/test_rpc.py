"""The node RPC over real sockets (SPEC 5): HTTP POST, WebSocket, auth, time-cli."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from timefast import crypto
from timefast.ledger import FAUCET_KEY, GENESIS_SUPPLY
from timefast.transaction import build

from .helpers import NodeThread, Pty, new_wallet, result, rpc


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeThread(tmp_path_factory.mktemp("rpc")).start()
    yield n
    n.stop()


def test_every_method(node):
    url = node.rpc_url
    info = result(url, "getinfo")
    assert info["network"] == "regtest" and info["quorum"] == 1
    ka, a = new_wallet()
    _, b = new_wallet()
    txid = result(url, "faucet", a, 5_0000_0000)
    assert result(url, "getbalance", a) == 5_0000_0000
    [u] = result(url, "listunspent", a)
    assert u == {"txid": txid, "vout": 0, "address": a, "amount": 5_0000_0000,
                 "state": "Unspent"}
    tx = build([(txid, 0, ka)], [(b, 2_0000_0000), (a, 3_0000_0000)], timestamp=7)
    assert result(url, "sendrawtransaction", tx.to_json()) == tx.txid
    assert result(url, "gettransaction", tx.txid)["status"] == "finalized"
    assert result(url, "gettxout", txid, 0)["state"] == "SpentFinalized"
    assert result(url, "gettxout", "ab" * 32, 0) is None
    height = result(url, "getblockcount")
    [h] = result(url, "generate", 1)
    assert result(url, "getblockcount") == height + 1
    assert result(url, "getbestblockhash") == h
    blk = result(url, "getblock", height + 1)
    assert set(blk) == {"height", "hash", "prev_hash", "timestamp", "txids", "producer",
                        "round", "commit"}
    assert tx.txid in blk["txids"] and result(url, "getblock", h) == blk
    # One masternode: round 0, committed by its one precommit (SPEC 7.5).
    assert blk["round"] == 0 and [c["voter"] for c in blk["commit"]] == [info["masternode"]]
    got = result(url, "gettransaction", tx.txid)
    assert (got["status"], got["block_height"]) == ("confirmed", height + 1)
    assert result(url, "getbalance", b) == 2_0000_0000
    [mn] = result(url, "masternodelist")
    assert mn["self"] and mn["public_key"] == info["masternode"]
    assert len(result(url, "generate", 3)) == 3


def test_errors_are_clear(node):
    url = node.rpc_url
    ka, a = new_wallet()
    t = result(url, "faucet", a, 1000)
    tx1 = build([(t, 0, ka)], [(new_wallet()[1], 10)], timestamp=1)
    tx2 = build([(t, 0, ka)], [(new_wallet()[1], 20)], timestamp=1)
    result(url, "sendrawtransaction", tx1.to_json())
    err = rpc(url, "sendrawtransaction", tx2.to_json())["error"]
    assert "TX_CONFLICT" in err["message"] and err["data"]["code"] == "TX_CONFLICT"
    assert rpc(url, "nosuch")["error"]["code"] == -32601
    assert rpc(url, "getblock")["error"]["code"] == -32602
    assert rpc(url, "getblock", 10**6)["error"]["data"]["code"] == "NOT_FOUND"
    assert rpc(url, "getblock", "\u00b2")["error"]["data"]["code"] == "NOT_FOUND"
    assert result(url, "getblock", "0")["height"] == 0
    assert rpc(url, "generate", 0)["error"]["code"] == -32602
    assert rpc(url, "faucet", "nobody", 5)["error"]["data"]["code"] == "INVALID_ADDRESS"
    req = urllib.request.Request(url, data=b"{not json")
    with urllib.request.urlopen(req) as r:
        assert orjson.loads(r.read())["error"]["code"] == -32700
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "getblockcount"},
             {"jsonrpc": "2.0", "method": "getblockcount"}]
    with urllib.request.urlopen(urllib.request.Request(url, data=orjson.dumps(batch))) as r:
        replies = orjson.loads(r.read())
    assert [x["id"] for x in replies] == [1]



def test_getsnapshot_and_submittransaction_carry_the_seq_they_were_taken_at(node):
    """What edges ask for (SPEC 8): a snapshot with its seq, a submission with the
    seq of its acceptance."""
    url = node.rpc_url
    ka, a = new_wallet()
    txid = result(url, "faucet", a, 3000)
    got = result(url, "getsnapshot", [a, "time1test"])
    led = node.node.ledger
    assert got == node.call(lambda: {"seq": led.seq, "snapshot": {
        a: led.reads.snapshot(a), "time1test": led.reads.snapshot("time1test")}})
    assert got["snapshot"][a]["balance"] == 3000
    page = result(url, "getsnapshot", [a], f"{txid}:0")
    assert page["snapshot"][a]["utxos"] == []
    assert rpc(url, "getsnapshot", ["no good!"])["error"]["data"]["code"] == "INVALID_ADDRESS"
    assert rpc(url, "getsnapshot", [a, a + "x"], f"{txid}:0")["error"]["data"]["code"] \
        == "BAD_REQUEST"
    tx = build([(txid, 0, ka)], [(new_wallet()[1], 1000)], timestamp=3)
    before = result(url, "getinfo")["seq"]
    sent = result(url, "submittransaction", tx.to_json())
    assert sent["txid"] == tx.txid and sent["seq"] > before
    assert sent["seq"] == result(url, "getinfo")["seq"]
    assert result(url, "submittransaction", tx.to_json())["txid"] == tx.txid  # idempotent
    assert rpc(url, "submittransaction", {"txid": "x"})["error"]["data"]["code"] \
        == "TX_INVALID"

def test_out_of_range_numbers_are_clear_errors(node):
    """Numbers past SQLite's 64-bit integers: "no such thing", never "internal error"."""
    url = node.rpc_url
    assert rpc(url, "gettxout", "ab" * 32, 2**63)["result"] is None
    for ref in (2**63, 2**64 - 1, "99999999999999999999999"):
        assert rpc(url, "getblock", ref)["error"]["data"]["code"] == "NOT_FOUND", ref


def test_hundred_concurrent_conflicting_spends(node):
    url = node.rpc_url
    ka, a = new_wallet()
    t = result(url, "faucet", a, 10_000)
    txs = [build([(t, 0, ka)], [(new_wallet()[1], 100 + i)], timestamp=i) for i in range(100)]
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda tx: rpc(url, "sendrawtransaction", tx.to_json()), txs))
    ok = [r for r in replies if "result" in r]
    conflicts = [r for r in replies if r.get("error", {}).get("data", {}).get("code")
                 == "TX_CONFLICT"]
    assert len(ok) == 1 and len(conflicts) == 99


def test_rpc_over_websocket(node):
    with connect(node.rpc_url.replace("http://", "ws://")) as ws:
        ws.send(orjson.dumps({"jsonrpc": "2.0", "id": "x", "method": "getblockcount"}).decode())
        reply = orjson.loads(ws.recv(timeout=10))
        assert reply["id"] == "x" and isinstance(reply["result"], int)


def test_rpc_websocket_reassembles_fragments_and_checks_utf8(node):
    url = node.rpc_url.replace("http://", "ws://")
    body = orjson.dumps({"jsonrpc": "2.0", "id": "y", "method": "getblockcount"})
    with connect(url) as ws:
        ws.send([body[:10].decode(), body[10:20].decode(), body[20:].decode()])
        reply = orjson.loads(ws.recv(timeout=10))
        assert reply["id"] == "y" and isinstance(reply["result"], int)
    for parts in ([b'{"jsonrpc":"2.0","id":"\xff"}'], [b'{"jsonrpc":"2.0","id":"\xe2', b'"}']):
        with connect(url) as ws:
            ws.send(parts if len(parts) > 1 else parts[0], text=True)
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd.code == 1007


def test_basic_auth(tmp_path):
    n = NodeThread(tmp_path, RPC_USER="alice", RPC_PASSWORD="s3cret-pässwörd").start()
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            rpc(n.rpc_url, "getblockcount")
        assert e.value.code == 401
        for wrong in ("alice:wrong", "alice:s3cret-passwörd", "älice:s3cret-pässwörd"):
            bad = "Basic " + base64.b64encode(wrong.encode()).decode()
            with pytest.raises(urllib.error.HTTPError) as e:
                rpc(n.rpc_url, "getblockcount", auth=bad)
            assert e.value.code == 401, wrong
        # Not UTF-8 at all: refused like any wrong password, not a dropped connection.
        bad = "Basic " + base64.b64encode(b"alice:\xff\xfe").decode()
        with pytest.raises(urllib.error.HTTPError) as e:
            rpc(n.rpc_url, "getblockcount", auth=bad)
        assert e.value.code == 401
        good = "Basic " + base64.b64encode("alice:s3cret-pässwörd".encode()).decode()
        assert rpc(n.rpc_url, "getblockcount", auth=good)["result"] == 0
        out = cli(n, "getblockcount", env={"RPC_USER": "alice",
                                           "RPC_PASSWORD": "s3cret-pässwörd"})
        assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr
    finally:
        n.stop()


def cli(node, *args, env=None):
    e = {**os.environ, "RPC_ADDR": node.rpc_url.removeprefix("http://").rstrip("/"),
         **(env or {})}
    return subprocess.run([sys.executable, "-m", "timefast.cli", *args], env=e,
                          capture_output=True, text=True, timeout=60)


def http(url: str, raw: bytes, *, timeout: float = 20) -> bytes:
    """Send ``raw`` to the RPC's socket; everything it answers until it closes."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def post(url: str, body: bytes, headers: str = "", host: str | None = None) -> bytes:
    if host is None:
        host = url.removeprefix("http://").rstrip("/")
    return http(url, (f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                      f"Connection: close\r\n{headers}\r\n").encode() + body)


GENERATE = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": [1]})


def test_rpc_refuses_what_a_browser_could_send(tmp_path):
    """A page the operator visits (Origin) or DNS rebinding (a foreign Host) runs nothing;
    curl's and time-cli's requests (no Origin, an IP or localhost Host) do."""
    n = NodeThread(tmp_path, RPC_ALLOWED_HOSTS="node.example").start()
    try:
        url = n.rpc_url
        height = result(url, "getblockcount")
        for headers in ("Origin: https://evil.example\r\nContent-Type: text/plain\r\n",
                        "Origin: null\r\n"):
            assert post(url, GENERATE, headers).startswith(b"HTTP/1.1 403 "), headers
        for host in ("evil.example", "evil.example:8766", "localhost.evil.example"):
            assert post(url, GENERATE, host=host).startswith(b"HTTP/1.1 403 "), host
        with pytest.raises(InvalidStatus) as e:
            connect(url.replace("http://", "ws://"), origin="https://evil.example")
        assert e.value.response.status_code == 403
        assert result(url, "getblockcount") == height  # nothing ran
        port = url.rstrip("/").rsplit(":", 1)[1]
        for host in (f"localhost:{port}", "LOCALHOST", f"127.0.0.1:{port}", "[::1]:8766",
                     f"node.example:{port}"):
            reply = post(url, GENERATE, host=host)
            assert reply.startswith(b"HTTP/1.1 200 "), (host, reply)
        assert result(url, "getblockcount") == height + 5
    finally:
        n.stop()


def test_http_parsing_is_strict(node):
    """One Content-Length of digits only; a chunked body is read as a body."""
    url = node.rpc_url
    host = url.removeprefix("http://").rstrip("/")
    body = orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": "getblockcount"})
    head = f"POST / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    for lengths in ([f"{len(body) // 10}_{len(body) % 10}"], [str(len(body)), "1"],
                    ["1", str(len(body))], [f"+{len(body)}"], [f"{len(body)}.0"]):
        raw = head + "".join(f"Content-Length: {x}\r\n" for x in lengths) + "\r\n"
        reply = http(url, raw.encode() + body)
        assert reply.startswith(b"HTTP/1.1 400 "), (lengths, reply)
    chunked = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + (
        f"{len(body[:9]):x}\r\n".encode() + body[:9] + b"\r\n"
        + f"{len(body[9:]):x}\r\n".encode() + body[9:] + b"\r\n0\r\n\r\n")
    reply = http(url, chunked)
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert orjson.loads(reply.split(b"\r\n\r\n", 1)[1])["id"] == 7
    # Two keep-alive requests back to back are two answers, in order.
    one = (f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
           ).encode() + body
    s = socket.create_connection(("127.0.0.1", int(host.split(":")[1])), timeout=20)
    with s:
        s.sendall(one + one.replace(b'"id":7', b'"id":8'))
        got = b""
        while got.count(b'"id":') < 2:
            got += s.recv(65536)
    assert got.index(b'"id":7') < got.index(b'"id":8')
    # A client that shuts its side once its request is sent (printf ... | nc) is answered.
    with socket.create_connection(("127.0.0.1", int(host.split(":")[1])), timeout=20) as s:
        s.sendall(one)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200 ") and b'"id":7' in got, got


def _rpc_output(node) -> list[tuple[int, bool]]:
    """(unread output bytes, reading?) of each open RPC connection, seen from the loop."""
    from timefast.rpc import RpcConnection

    def look():
        # type(), not isinstance(): a weakref proxy to a dead object (left by a client
        # library of an earlier test) raises ReferenceError on isinstance.
        conns = [o for o in gc.get_objects() if type(o) is RpcConnection]
        return [(c.transport.get_write_buffer_size(), c.transport.is_reading())
                for c in conns if c.transport is not None and not c.transport.is_closing()]
    return node.call(look)


@pytest.mark.parametrize("mode", ["http", "websocket"])
def test_unread_output_stops_reading(tmp_path, mode):
    """A client that pipelines big requests and never reads holds a bounded amount of the
    node's memory: once its unread output passes the bound, the node stops reading it."""
    n = NodeThread(tmp_path).start()
    try:
        _, a = new_wallet()
        n.call(lambda: [n.node.ledger.faucet.pay(a, 1000 + i) for i in range(300)])
        reply = len(orjson.dumps(result(n.rpc_url, "listunspent", a)))
        assert reply > 30_000
        host, port = n.rpc_url.removeprefix("http://").rstrip("/").split(":")
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "listunspent",
                             "params": [a]})
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        if mode == "http":
            one = (f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                   "\r\n").encode() + body
            s.sendall(one * 600)  # 600 replies: 18 MB and more
        else:
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            frame = bytes([0x81, 0x80 | 126]) + len(body).to_bytes(2, "big") + bytes(4) + body
            s.sendall(frame * 600)
        # Wait until the node has stopped reading because the output is not taken (or
        # until it has buffered far more than its bound), then watch a while longer.
        worst, deadline, settled = 0, time.monotonic() + 60, 0
        while time.monotonic() < deadline and settled < 20:
            states = _rpc_output(n)
            worst = max([worst, *(size for size, _ in states)])
            if worst > 8 << 20:
                break
            if states and all(size >= 1 << 20 and not reading for size, reading in states):
                settled += 1
            time.sleep(0.05)
        # The node's bound (1 MiB) plus the replies already being made when it was passed.
        assert worst <= 8 << 20, worst
        assert settled == 20, states
        s.close()
    finally:
        n.stop()


def _service(node, limits):
    """A second RPC listener on the node's loop, with ``limits``; returns its URL."""
    from timefast.rpc import RpcDispatcher, RpcService

    async def start():
        svc = RpcService(RpcDispatcher(node.node.ledger), limits=limits)
        host, port = (await svc.listen("127.0.0.1", 0))[0]
        return svc, f"http://{host}:{port}/"
    return asyncio.run_coroutine_threadsafe(start(), node.loop).result(30)


def test_idle_slow_and_surplus_connections_are_closed(node):
    from timefast.rpc import RpcLimits

    svc, url = _service(node, RpcLimits(max_connections=3, request_timeout=0.5,
                                        idle_timeout=5.0))
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    try:
        idle = socket.create_connection((host, int(port)), timeout=20)
        slow = socket.create_connection((host, int(port)), timeout=20)
        slow.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        kept = socket.create_connection((host, int(port)), timeout=20)
        # A fourth is over the cap: refused with 503, not held.
        assert http(url, b"").startswith(b"HTTP/1.1 503 ")
        for s in (idle, slow, kept):
            with s:
                assert s.recv(100) == b""  # closed by the node, not by the 20 s timeout
        assert result(url, "getblockcount") >= 0  # room again
    finally:
        node.call(svc.close)


def test_time_cli_keys_send_and_methods(node):
    out = cli(node, "keygen")
    assert out.returncode == 0, out.stderr
    k = orjson.loads(out.stdout)
    assert k["private_key"].startswith("MN") and len(k["private_key"]) == 66
    assert cli(node, "address", k["private_key"]).stdout.strip() == k["address"]
    assert cli(node, "address", k["public_key"]).stdout.strip() == k["address"]
    _, b = new_wallet()
    assert cli(node, "faucet", k["address"], "--amount", "12.5").returncode == 0
    assert result(node.rpc_url, "getbalance", k["address"]) == 12_5000_0000
    sent = cli(node, "send", "--key", k["private_key"], "--to", b, "--amount", "2.25")
    assert sent.returncode == 0, sent.stderr
    txid = sent.stdout.strip()
    tx = result(node.rpc_url, "gettransaction", txid)["tx"]
    # What time-cli built follows the vectors' scheme: the node verified it, and
    # rebuilding it from its own fields gives the same txid.
    again = build([(i["previous_output"]["txid"], i["previous_output"]["vout"],
                     crypto.parse_private_key(k["private_key"])) for i in tx["inputs"]],
                  [(o["address"], o["amount"]) for o in tx["outputs"]], tx["timestamp"])
    assert again.txid == txid
    assert result(node.rpc_url, "getbalance", b) == 2_2500_0000
    assert cli(node, "getbalance", b).stdout.strip() == "225000000"
    assert orjson.loads(cli(node, "generate", "1").stdout)[0]
    bad = cli(node, "send", "--key", k["private_key"], "--to", b, "--amount", "1000")
    assert bad.returncode == 1 and "needed" in bad.stderr
    assert cli(node, "nosuchmethod").returncode == 1


def test_time_cli_global_options_before_the_method(tmp_path):
    """The forms --help shows: options with their values, then the method."""
    n = NodeThread(tmp_path, RPC_USER="alice", RPC_PASSWORD="s3cret").start()
    try:
        addr = n.rpc_url.removeprefix("http://").rstrip("/")
        env = {"RPC_ADDR": "127.0.0.1:1"}  # wrong: the flags must win
        for args in (["--rpc-addr", addr, "--rpc-user", "alice", "--rpc-password", "s3cret"],
                     [f"--rpc-addr={addr}", "--rpc-user=alice", "--rpc-password=s3cret"]):
            out = cli(n, *args, "getblockcount", env=env)
            assert out.returncode == 0 and out.stdout.strip() == "0", (args, out.stderr)
            out = cli(n, *args, "getblock", "0", env=env)
            assert orjson.loads(out.stdout)["height"] == 0, (args, out.stderr)
        wrong = cli(n, "--rpc-addr", addr, "--rpc-user", "alice", "--rpc-password", "no",
                    "getblockcount")
        assert wrong.returncode == 1 and "401" in wrong.stderr
        out = cli(n, "--network", "mainnet", "keygen")
        assert orjson.loads(out.stdout)["address"].startswith("TIME1"), out.stderr
    finally:
        n.stop()


def test_time_cli_into_a_closed_pipe_has_no_traceback(node):
    e = {**os.environ, "RPC_ADDR": node.rpc_url.removeprefix("http://").rstrip("/")}
    p = subprocess.Popen([sys.executable, "-m", "timefast.cli", "getinfo"], env=e,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # as `| head -0` does, before time-cli writes
    err = p.stderr.read().decode()
    p.wait(60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_time_cli_watch_shows_a_transaction_move_on_a_terminal(node):
    ka, a = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 1000)
    result(node.rpc_url, "generate", 1)
    # time-cli watch on a real terminal
    term = Pty([sys.executable, "-m", "timefast.cli", "watch", a, "--ws-url", node.ws_url,
                "--max-events", "9"], {**os.environ, "TERM": "xterm"})
    term.wait_for("watching " + a)
    tx = build([(coin, 0, ka)], [(new_wallet()[1], 600), (a, 400)], timestamp=3)
    result(node.rpc_url, "sendrawtransaction", tx.to_json())
    result(node.rpc_url, "generate", 1)
    term.wait_for("block ")
    os.waitpid(term.pid, 0)
    text = term.screen.decode(errors="replace")
    assert "\x1b[" in text  # colour on a terminal
    plain = __import__("re").sub(r"\x1b\[[0-9;]*m", "", text)
    locked = plain.index("-> Locked")
    final = plain.index("-> SpentFinalized")
    confirmed = plain.index("-> Confirmed")
    assert locked < final < confirmed


def test_time_cli_status(node):
    out = cli(node, "status", "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    for word in ("height", "connections", "subscriptions", "events/s"):
        assert word in out.stdout


def test_address_history_over_rpc_and_time_cli(node):
    _, a = new_wallet()
    paid = [result(node.rpc_url, "faucet", a, 100 + i) for i in range(3)]
    h = result(node.rpc_url, "getaddresshistory", a, 2)
    assert [t["txid"] for t in h["txs"]] == paid[:0:-1] and h["tx_count"] == 3
    rest = result(node.rpc_url, "getaddresshistory", a, 2, h["next"])
    assert [t["txid"] for t in rest["txs"]] == paid[:1] and rest["next"] is None
    assert [t["received"] for t in result(node.rpc_url, "getaddresshistory", a)["txs"]] == [
        102, 101, 100]
    out = cli(node, "history", a, "--limit", "1")
    assert out.returncode == 0, out.stderr
    assert [t["txid"] for t in orjson.loads(out.stdout)["txs"]] == [paid[2]]
    err = rpc(node.rpc_url, "getaddresshistory", a, 5000)
    assert "limit" in err["error"]["message"]


def test_fees_go_to_the_producer_and_the_supply_stays_whole(tmp_path):
    node = NodeThread(tmp_path).start()
    try:
        url = node.rpc_url
        producer = result(url, "getinfo")["address"]
        faucet = crypto.address_of(crypto.public_key_hex(FAUCET_KEY), "regtest")
        wallets = [new_wallet() for _ in range(5)]
        for _, addr in wallets:
            result(url, "faucet", addr, 1_0000_0000)
        fees = 0
        for n in range(100):
            key, addr = wallets[n % 5]
            coin = max((u for u in result(url, "listunspent", addr) if u["state"] == "Unspent"),
                       key=lambda u: u["amount"])
            fee = 10 + n
            tx = build([(coin["txid"], coin["vout"], key)],
                       [(wallets[(n + 1) % 5][1], 1000), (addr, coin["amount"] - 1000 - fee)],
                       timestamp=n)
            assert result(url, "sendrawtransaction", tx.to_json()) == tx.txid
            fees += fee
            if n % 25 == 24:
                [h] = result(url, "generate", 1)
                block = result(url, "getblock", h)
                # The block's coinbase comes first and pays its fees to the producer.
                coinbase = result(url, "gettransaction", block["txids"][0])
                assert coinbase["tx"]["inputs"] == [] and coinbase["status"] == "confirmed"
                assert coinbase["tx"]["outputs"][0]["address"] == producer
        assert result(url, "getbalance", producer) == fees
        owners = [faucet, producer, *(addr for _, addr in wallets)]
        assert sum(result(url, "getbalance", a) for a in owners) == GENESIS_SUPPLY
    finally:
        node.stop()
