"""The wallet WebSocket server over real sockets (SPEC 3)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import urllib.error
import urllib.request

import orjson
import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st  # the seed's client: websocket-client
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from timefast.transaction import build

from .helpers import (
    NodeProcess,
    NodeThread,
    client_frame,
    fund_coins,
    new_wallet,
    result,
    wait_for,
)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeThread(tmp_path_factory.mktemp("ws")).start()
    yield n
    n.stop()


def send(ws, obj):
    ws.send(orjson.dumps(obj).decode())


def recv_until(ws, type_, limit=50, timeout=10):
    """Messages up to and including the first of ``type_``."""
    got = []
    for _ in range(limit):
        msg = orjson.loads(ws.recv(timeout=timeout))
        got.append(msg)
        if msg["type"] == type_:
            return got
    raise AssertionError(f"no {type_} in {got}")


def _pay(node, payer_key, coin_txid, vout, to, amount, change_to):
    tx = build([(coin_txid, vout, payer_key)], [(to, amount), (change_to, 1000 - amount)],
               timestamp=int(time.time()))
    result(node.rpc_url, "sendrawtransaction", tx.to_json())
    return tx


def test_seed_clients_receive_a_real_transaction_and_block(node):
    ka, a = new_wallet()
    _, b = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 1000)
    result(node.rpc_url, "generate", 1)  # confirm the funding first: only our tx is left
    # The seed's Python example, verbatim in spirit: websocket-client.
    seed_ws = websocket.create_connection(node.ws_url)
    seed_ws.settimeout(10)
    seed_ws.send(json.dumps({"type": "Subscribe", "data": {"addresses": [a]}}))
    assert json.loads(seed_ws.recv())["type"] == "Subscribed"
    seed_ws.send(json.dumps({"type": "Ping"}))
    assert seed_ws.recv() == '{"type":"Pong"}'
    with connect(node.ws_url + "/ws/utxo-protocol") as ws, connect(node.ws_url) as other:
        send(ws, {"type": "Subscribe", "data": {"addresses": [b]}, "id": 7})
        sub = orjson.loads(ws.recv(timeout=10))
        assert sub["type"] == "Subscribed" and sub["id"] == 7
        assert sub["data"]["snapshot"] == {b: {"balance": 0, "utxos": []}}
        send(other, {"type": "Subscribe", "data": {"addresses": ["time1test"]}})
        other.recv(timeout=10)
        tx = _pay(node, ka, coin, 0, b, 600, a)
        result(node.rpc_url, "generate", 1)
        got = recv_until(ws, "NewBlock")
        types = [m["type"] for m in got]
        assert types == ["TransactionPending", "UtxoStateChange", "TransactionFinalized",
                         "TransactionConfirmed", "NewBlock"]
        change = got[1]["data"]
        assert change["state"] == "Unspent" and change["outpoint"] == {"txid": tx.txid,
                                                                       "vout": 0}
        assert change["transaction"]["txid"] == tx.txid
        # A client watching other addresses gets only the block.
        assert orjson.loads(other.recv(timeout=10))["type"] == "NewBlock"
        with pytest.raises(TimeoutError):
            other.recv(timeout=0.3)
    seed_types = []
    while True:
        m = json.loads(seed_ws.recv())
        seed_types.append((m["type"], m["data"].get("state")))
        if m["type"] == "NewBlock":
            break
    assert seed_types == [
        ("UtxoStateChange", "Locked"), ("TransactionPending", None),
        ("UtxoStateChange", "SpentPending"), ("UtxoStateChange", "SpentFinalized"),
        ("UtxoStateChange", "Unspent"), ("TransactionFinalized", None),
        ("UtxoStateChange", "Confirmed"), ("TransactionConfirmed", None), ("NewBlock", None)]
    seed_ws.close()


def test_both_sides_subscribed_get_each_event_once(node):
    ka, a = new_wallet()
    _, b = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 1000)
    with connect(node.ws_url) as ws:
        send(ws, {"type": "Subscribe", "data": {"addresses": [a, b], "snapshot": False}})
        assert "snapshot" not in orjson.loads(ws.recv(timeout=10))["data"]
        _pay(node, ka, coin, 0, b, 300, a)
        got = recv_until(ws, "TransactionFinalized")
        seqs = [m["data"]["seq"] for m in got]
        assert seqs == sorted(set(seqs))
        assert [m["type"] for m in got].count("TransactionPending") == 1
        assert len(got) == 7


async def _collect(url, addrs, since=None, until_seq=None, stop_after=None, timeout=20,
                   out=None):
    """Events (seq, payload) one connection gets; stops at ``until_seq`` or after n."""
    out = [] if out is None else out
    data = {"addresses": addrs, "snapshot": False}
    if since is not None:
        data["since_seq"] = since
    async with aconnect(url, max_queue=None) as ws:
        await ws.send(orjson.dumps({"type": "Subscribe", "data": data}).decode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = orjson.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            if msg["type"] == "Subscribed":
                continue
            out.append((msg["data"]["seq"], msg))
            if stop_after is not None and len(out) >= stop_after:
                return out
            if until_seq is not None and msg["data"]["seq"] >= until_seq:
                return out
    return out


def test_resume_by_seq_after_disconnect_misses_nothing(node):
    _, a = new_wallet()
    _, b = new_wallet()
    start_seq = result(node.rpc_url, "getinfo")["seq"]
    done = threading.Event()

    def burst():
        for i in range(200):
            result(node.rpc_url, "faucet", a if i % 2 else b, 1000 + i)
            if i % 50 == 49:
                result(node.rpc_url, "generate", 1)
        done.set()

    online_out = []

    async def scenario():
        online = asyncio.create_task(_collect(node.ws_url, [a, b], timeout=120,
                                              until_seq=10**12, out=online_out))
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        burster = loop.run_in_executor(None, burst)
        part1 = await _collect(node.ws_url, [a, b], since=start_seq, stop_after=150)
        await asyncio.sleep(0.2)  # offline while the burst goes on
        part2 = await _collect(node.ws_url, [a, b], since=part1[-1][0], stop_after=100)
        await burster
        end_seq = result(node.rpc_url, "getinfo")["seq"]
        part3 = await _collect(node.ws_url, [a, b], since=part2[-1][0], until_seq=end_seq)
        deadline = time.monotonic() + 30
        while (not online_out or online_out[-1][0] < end_seq) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        online.cancel()
        await asyncio.gather(online, return_exceptions=True)
        return part1 + part2 + part3, end_seq

    resumed, end_seq = asyncio.run(scenario())
    assert done.is_set()
    assert len(resumed) > 600
    assert [s for s, _ in resumed] == [s for s, _ in online_out]
    assert [m for _, m in resumed] == [m for _, m in online_out]
    assert len({s for s, _ in resumed}) == len(resumed)
    # A late wallet replaying from the same point sees the very same stream.
    replayed = asyncio.run(_collect(node.ws_url, [a, b], since=start_seq, until_seq=end_seq))
    assert replayed == online_out


def test_resync_when_resume_point_is_out_of_window(tmp_path):
    n = NodeThread(tmp_path, REPLAY_EVENTS=3).start()
    try:
        _, a = new_wallet()
        result(n.rpc_url, "faucet", a, 500)
        result(n.rpc_url, "faucet", a, 600)
        with connect(n.ws_url) as ws:
            send(ws, {"type": "Subscribe", "data": {"addresses": [a], "since_seq": 1,
                                                   "snapshot": False}})
            sub = orjson.loads(ws.recv(timeout=10))["data"]
            assert sub["resync"] is True
            assert sub["snapshot"][a]["balance"] == 1100
    finally:
        n.stop()


async def _raw_ws(host, port, path="/", headers=""):
    """A raw handshake; returns (reader, writer, status line)."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{headers}\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head.split(b"\r\n")[0].decode()


def _masked(payload: bytes, opcode=1) -> bytes:
    return client_frame(opcode, payload)


def test_lagged_message_and_readers_complete(tmp_path):
    # The slow wallet reads its bytes only once the others are done: the node must
    # not cut it (CLOSE_TIMEOUT) before then, or its Lagged frame is lost with it.
    n = NodeThread(tmp_path, SEND_BUFFER_BYTES=32768, CLOSE_TIMEOUT=300).start()
    try:
        _, a = new_wallet()
        host, port = n.node.ws_addresses[0]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        sock.sendall(_masked(orjson.dumps({"type": "Subscribe", "data": {"addresses": [a]}})))
        start = result(n.rpc_url, "getinfo")["seq"]

        got = [[] for _ in range(100)]

        async def scenario():
            tasks = [asyncio.create_task(_collect(n.ws_url, [a], since=start, timeout=120,
                                                  until_seq=10**12, out=got[i]))
                     for i in range(100)]
            await asyncio.sleep(0.5)
            await asyncio.get_running_loop().run_in_executor(None, lambda: [
                result(n.rpc_url, "faucet", a, 1000 + i) for i in range(200)])
            end = result(n.rpc_url, "getinfo")["seq"]
            expected = n.call(lambda: [e.seq for e in n.node.ledger.journal.recent if e.seq > start
                                       and (e.addresses is None or a in e.addresses)])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(len(g) < len(expected) for g in got):
                await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return end, expected

        end, expected = asyncio.run(scenario())
        assert len(expected) == 600
        for g in got:
            assert [s for s, _ in g] == expected
        # Memory stays bounded: no connection holds more than SEND_BUFFER_BYTES in the
        # core plus the transport's high-water mark.
        held = n.call(lambda: [(n.node.wallets.fanout.pending(slot),
                                c.transport.get_write_buffer_size())
                               for slot, c in n.node.wallets.conns.items()])
        assert all(p <= 32768 and t <= 256 * 1024 for p, t in held)
        # Now read what the slow one was sent: events, then Lagged, then close 1013.
        sock.settimeout(10)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        assert b'"type":"Lagged"' in data
        m = re.search(rb'\{"type":"Lagged","data":\{"resume_from":(\d+)\}\}', data)
        assert m is not None
        resume_from = int(m.group(1))
        assert start <= resume_from < end
        close = data[data.rindex(b"\x88"):]
        assert close[2:4] == (1013).to_bytes(2, "big")
        assert n.call(lambda: n.node.wallets.fanout.lag_closes) == 1
    finally:
        n.stop()


def test_every_bad_input_gets_its_answer_and_the_server_stays_up(node):
    ka, a = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 1000)
    tx1 = build([(coin, 0, ka)], [(new_wallet()[1], 10)], timestamp=1)
    tx2 = build([(coin, 0, ka)], [(new_wallet()[1], 20)], timestamp=1)
    with connect(node.ws_url) as ws:
        def ask(raw, code):
            ws.send(raw if isinstance(raw, str) else orjson.dumps(raw).decode())
            msg = orjson.loads(ws.recv(timeout=10))
            assert msg["type"] == "Error", msg
            assert msg["data"]["code"] == code, msg
            return msg

        ask("{nope", "BAD_JSON")
        ask("[1,2]", "BAD_REQUEST")
        ask({"data": {}}, "BAD_REQUEST")
        assert ask({"type": "Dance", "id": "d1"}, "UNKNOWN_TYPE")["id"] == "d1"
        ask({"type": "Subscribe", "data": {"addresses": ["bad address"]}}, "INVALID_ADDRESS")
        ask({"type": "Subscribe", "data": {"addresses": []}}, "BAD_REQUEST")
        ask({"type": "Subscribe", "data": {"addresses": [f"a{i}" for i in range(10_001)]}},
            "TOO_MANY_SUBSCRIPTIONS")
        ask({"type": "Subscribe", "data": {"addresses": ["a"], "since_seq": -1}},
            "BAD_REQUEST")
        ask({"type": "SubmitTransaction", "data": {"tx": {"txid": "zz"}}}, "TX_INVALID")
        send(ws, {"type": "SubmitTransaction", "data": {"tx": tx1.to_json()}, "id": 1})
        accepted = [m for m in recv_until(ws, "TransactionAccepted") if
                    m["type"] == "TransactionAccepted"]
        assert accepted[0]["data"]["txid"] == tx1.txid and accepted[0]["id"] == 1
        send(ws, {"type": "SubmitTransaction", "data": {"tx": tx1.to_json()}, "id": 2})
        assert orjson.loads(ws.recv(timeout=10))["data"]["txid"] == tx1.txid  # idempotent
        ask({"type": "SubmitTransaction", "data": {"tx": tx2.to_json()}}, "TX_CONFLICT")
        ask({"type": "GetTransaction", "data": {"txid": "ab" * 32}}, "NOT_FOUND")
        send(ws, {"type": "GetTransaction", "data": {"txid": tx1.txid}})
        assert orjson.loads(ws.recv(timeout=10))["data"]["status"] == "finalized"
        send(ws, {"type": "GetUtxos", "data": {"addresses": [a]}})
        assert orjson.loads(ws.recv(timeout=10))["data"][a]["balance"] == 0
        send(ws, {"type": "Unsubscribe", "data": {"addresses": ["x"]}, "id": 3})
        assert orjson.loads(ws.recv(timeout=10)) == {"type": "Unsubscribed", "id": 3,
                                                     "data": {"addresses": ["x"]}}
        send(ws, {"type": "Hello"})
        hello = orjson.loads(ws.recv(timeout=10))["data"]
        assert hello["protocol"] == "1.0" and hello["network"] == "regtest"
        ws.send(b"\x00binary")
        assert orjson.loads(ws.recv(timeout=10))["data"]["code"] == "BAD_REQUEST"
        # Past the rate limit: RATE_LIMITED, and the connection stays.
        burst = hello["limits"]["wallet_burst"]  # WALLET_BURST, as Hello reports it
        for _ in range(burst * 2):
            ws.send('{"type":"Ping"}')
        codes = set()
        for _ in range(burst * 2):
            codes.add(orjson.loads(ws.recv(timeout=10))["type"])
        assert codes == {"Pong", "Error"}
    # Still serving.
    with connect(node.ws_url) as ws:
        send(ws, {"type": "Ping"})
        assert ws.recv(timeout=10) == '{"type":"Pong"}'


def test_oversize_message_closes_1009(tmp_path):
    n = NodeThread(tmp_path, MAX_MESSAGE_BYTES=1000).start()
    try:
        with connect(n.ws_url) as ws:
            ws.send("x" * 2000)
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd.code == 1009
    finally:
        n.stop()


def test_fragmented_message_is_whole_and_bad_utf8_closes_1007(node):
    with connect(node.ws_url) as ws:
        ws.send(['{"type":', '"Ping",', '"id":3}'])
        assert orjson.loads(ws.recv(timeout=10)) == {"type": "Pong", "id": 3}
    with connect(node.ws_url) as ws:
        ws.send(b'{"type":"Ping","x":"\xc0\xaf"}', text=True)
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
        assert e.value.rcvd.code == 1007


def test_fragments_past_max_message_bytes_close_1009(tmp_path):
    n = NodeThread(tmp_path, MAX_MESSAGE_BYTES=1000).start()
    try:
        with connect(n.ws_url) as ws:
            ws.send(["x" * 600, "x" * 600])
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd.code == 1009
    finally:
        n.stop()


def test_capacity_origin_and_http(tmp_path):
    n = NodeThread(tmp_path, MAX_CONNECTIONS=2, MAX_CONNECTIONS_PER_IP=0,
                   ALLOWED_ORIGINS="https://wallet.example").start()
    try:
        with pytest.raises(InvalidStatus) as e:
            connect(n.ws_url, origin="https://evil.example")
        assert e.value.response.status_code == 403
        h = {"origin": "https://wallet.example"}
        with connect(n.ws_url, **h), connect(n.ws_url, **h):
            with pytest.raises(InvalidStatus) as e:
                connect(n.ws_url, **h)
            assert e.value.response.status_code == 503
            body = orjson.loads(e.value.response.body)
            assert body["error"] == "capacity" and body["message"]
            health = orjson.loads(urllib.request.urlopen(n.http_url + "/health").read())
            assert health == {"status": "ok", "height": 0, "connections": 2}
        metrics = urllib.request.urlopen(n.http_url + "/metrics").read().decode()
        for name in ("timefast_connections", "timefast_subscriptions",
                     "timefast_events_total", "timefast_frames_sent_total",
                     "timefast_bytes_sent_total", "timefast_slow_client_closes_total",
                     'timefast_transactions_total{outcome="finalized"}',
                     "timefast_fanout_latency_seconds_bucket", "timefast_send_buffer_bytes"):
            assert name in metrics
        with pytest.raises(urllib.error.HTTPError) as he:
            urllib.request.urlopen(n.http_url + "/nothing")
        assert he.value.code == 404
    finally:
        n.stop()


@pytest.mark.parametrize("allow", ["1", "0"])
def test_allow_no_origin_decides_for_native_wallets(tmp_path, allow):
    """With ALLOWED_ORIGINS set, a wallet that sends no Origin (not a browser) is let in
    unless ALLOW_NO_ORIGIN=0; a listed Origin always is, another never."""
    n = NodeThread(tmp_path, ALLOWED_ORIGINS="https://wallet.example",
                   ALLOW_NO_ORIGIN=allow).start()
    try:
        with connect(n.ws_url, origin="https://wallet.example") as ws:
            ws.send('{"type":"Ping"}')
            assert ws.recv(timeout=10) == '{"type":"Pong"}'
        with pytest.raises(InvalidStatus) as e:
            connect(n.ws_url, origin="https://evil.example")
        assert e.value.response.status_code == 403
        if allow == "1":
            with connect(n.ws_url) as ws:
                ws.send('{"type":"Ping"}')
                assert ws.recv(timeout=10) == '{"type":"Pong"}'
        else:
            with pytest.raises(InvalidStatus) as e:
                connect(n.ws_url)
            assert e.value.response.status_code == 403
    finally:
        n.stop()


def test_per_ip_cap(tmp_path):
    n = NodeThread(tmp_path, MAX_CONNECTIONS_PER_IP=1).start()
    try:
        with connect(n.ws_url):
            with pytest.raises(InvalidStatus) as e:
                connect(n.ws_url)
            assert e.value.response.status_code == 503
    finally:
        n.stop()


def test_heartbeat_drops_silent_peer_and_keeps_live_one(tmp_path):
    n = NodeThread(tmp_path, HEARTBEAT_INTERVAL=0.2).start()
    try:
        host, port = n.node.ws_addresses[0]

        async def scenario():
            reader, writer, status = await _raw_ws(host, port)
            assert "101" in status
            async with aconnect(n.ws_url) as live:
                # The raw peer never answers pings: closed within a few intervals.
                data = await asyncio.wait_for(reader.read(), 5)
                assert b"\x89" in data  # it was pinged
                await live.send('{"type":"Ping"}')
                assert await asyncio.wait_for(live.recv(), 5) == '{"type":"Pong"}'
            writer.close()
        asyncio.run(scenario())
    finally:
        n.stop()


def test_handshake_timeout_closes_silent_socket(tmp_path):
    n = NodeThread(tmp_path, OPEN_TIMEOUT=0.3).start()
    try:
        host, port = n.node.ws_addresses[0]
        s = socket.create_connection((host, port))
        s.settimeout(5)
        assert s.recv(100) == b""
        s.close()
    finally:
        n.stop()


def test_tls(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    n = NodeThread(tmp_path / "d", TLS_CERT=cert, TLS_KEY=key).start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        url = n.ws_url.replace("ws://", "wss://")
        with connect(url, ssl=ctx) as ws:
            send(ws, {"type": "Ping"})
            assert ws.recv(timeout=10) == '{"type":"Pong"}'
            result(n.rpc_url, "generate", 1)
            assert orjson.loads(ws.recv(timeout=10))["type"] == "NewBlock"
    finally:
        n.stop()


def test_tls_handshake_obeys_the_open_timeout(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    n = NodeThread(tmp_path / "d", TLS_CERT=cert, TLS_KEY=key, OPEN_TIMEOUT=0.3).start()
    try:
        host, port = n.node.ws_addresses[0]
        s = socket.create_connection((host, port))
        s.settimeout(5)  # asyncio's own TLS handshake timeout was 60 s
        with contextlib.suppress(ConnectionResetError):  # closed either way
            assert s.recv(100) == b""
        s.close()
    finally:
        n.stop()


def test_unfinished_handshakes_count_against_the_caps(tmp_path, monkeypatch):
    # TCP connections that never sent a handshake counted against no limit: 1,100 of
    # them from one address used up the node's file descriptors.
    from timefast import server
    monkeypatch.setattr(server, "REFUSED_WAITING", 10)
    n = NodeThread(tmp_path, MAX_CONNECTIONS_PER_IP=5).start()
    socks = []
    try:
        host, port = n.node.ws_addresses[0]
        for _ in range(5):  # counted: the address's cap is reached
            socks.append(socket.create_connection((host, port)))
        with pytest.raises(InvalidStatus) as e:
            connect(n.ws_url)
        assert e.value.response.status_code == 503
        for _ in range(40):  # 10 more may wait for their 503; the rest are cut
            socks.append(socket.create_connection((host, port)))
        held = n.call(lambda: len(n.node.wallets.conns))
        assert held <= 5 + 10
        cut = 0
        for s in socks[5:]:
            s.settimeout(2)
            try:
                cut += s.recv(1) == b""
            except ConnectionResetError:
                cut += 1
            except TimeoutError:  # waiting for its 503
                pass
        assert cut >= 30
        for s in socks:
            s.close()
        # Up to 10 s for the cut connections to be gone; the Ping says whether
        # capacity is back.
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not n.call(lambda: len(n.node.wallets.conns)), 10,
                     "the connections gone")
        with connect(n.ws_url) as ws:  # capacity is back once they are gone
            send(ws, {"type": "Ping"})
            assert ws.recv(timeout=10) == '{"type":"Pong"}'
    finally:
        for s in socks:
            s.close()
        n.stop()


def test_sigterm_closes_wallets_with_1001_and_exits_0(tmp_path):
    node = NodeProcess(tmp_path).start()
    try:
        with connect(node.ws_url) as ws:
            send(ws, {"type": "Ping"})
            ws.recv(timeout=10)
            rc_holder = []
            t = threading.Thread(target=lambda: rc_holder.append(node.terminate()))
            t.start()
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd.code == 1001
            t.join(30)
        assert rc_holder == [0]
        log = "".join(node.log)
        assert "📱 New WebSocket connection from: 127.0.0.1:" in log
    finally:
        node.kill()


def test_replies_of_a_batch_that_announces_nothing_leave_at_once(tmp_path):
    # Resubmissions of known transactions are answered by a batch that commits no
    # event; eight or more in one turn are checked ahead on the checker thread and
    # run a turn later.  Their replies must leave then, not at the next heartbeat.
    n = NodeThread(tmp_path, HEARTBEAT_INTERVAL=120).start()
    try:
        key, a = new_wallet()
        txs = []
        for _ in range(8):
            coin = result(n.rpc_url, "faucet", a, 1000)
            tx = build([(coin, 0, key)], [(new_wallet()[1], 900)], timestamp=1)
            result(n.rpc_url, "sendrawtransaction", tx.to_json())
            txs.append(tx)
        with connect(n.ws_url) as ws:
            # One write, so that the node reads all of them in one loop turn.
            ws.socket.sendall(b"".join(
                _masked(orjson.dumps({"type": "SubmitTransaction", "id": i,
                                      "data": {"tx": tx.to_json()}}))
                for i, tx in enumerate(txs)))
            got = [orjson.loads(ws.recv(timeout=10)) for _ in txs]
        assert sorted(m["id"] for m in got) == list(range(8))
        assert {m["type"] for m in got} == {"TransactionAccepted"}
    finally:
        n.stop()


def test_large_replies_are_paged_and_never_count_as_lag(tmp_path):
    # 1,200 coins make a page of 1,000 (about 190 KB), three times SEND_BUFFER_BYTES:
    # before paging and the reply path, Subscribe and GetUtxos were Lagged, 1013.
    n = NodeThread(tmp_path, SEND_BUFFER_BYTES=65536).start()
    try:
        key, a = new_wallet()
        coins = fund_coins(n.rpc_url, key, a, 1200, 300)
        result(n.rpc_url, "generate", 1)  # the spent faucet coins leave the snapshot
        _, empty = new_wallet()
        with connect(n.ws_url, max_size=None) as ws:
            send(ws, {"type": "Subscribe", "data": {"addresses": [a, empty]}})
            sub = orjson.loads(ws.recv(timeout=30))
            assert sub["type"] == "Subscribed"
            snap = sub["data"]["snapshot"]
            assert snap[empty] == {"balance": 0, "utxos": []}
            assert snap[a]["more"] is True and snap[a]["utxo_count"] == 1200
            assert snap[a]["balance"] == 1200 * 1000 and len(snap[a]["utxos"]) == 1000
            # Two addresses' pages in one reply: about 380 KB, still no lag.
            send(ws, {"type": "GetUtxos", "data": {"addresses": [a, a + "x", empty]}})
            both = orjson.loads(ws.recv(timeout=30))
            assert both["type"] == "Utxos" and both["data"]["seq"] >= sub["data"]["seq"]
            assert both["data"][a]["utxos"] == snap[a]["utxos"]
            last = snap[a]["utxos"][-1]
            send(ws, {"type": "GetUtxos", "id": 2, "data": {
                "addresses": [a], "after": f"{last['txid']}:{last['vout']}"}})
            rest = orjson.loads(ws.recv(timeout=30))
            assert rest["id"] == 2 and "more" not in rest["data"][a]
            assert len(rest["data"][a]["utxos"]) == 200
            send(ws, {"type": "Ping"})
            assert ws.recv(timeout=10) == '{"type":"Pong"}'
        listed = snap[a]["utxos"] + rest["data"][a]["utxos"]
        keys = [(-u["amount"], u["txid"], u["vout"]) for u in listed]
        assert keys == sorted(keys)
        assert sorted((u["txid"], u["vout"]) for u in listed) == sorted(coins)
        assert n.call(lambda: n.node.wallets.fanout.lag_closes) == 0
    finally:
        n.stop()


def test_lagged_before_any_event_resumes_from_a_valid_seq(tmp_path):
    # One payment's events (over 2 KB) land in one turn: the wallet lags before any
    # event reached it.  resume_from was -1, which Subscribe refuses.
    n = NodeThread(tmp_path, SEND_BUFFER_BYTES=2048).start()
    try:
        key, payer = new_wallet()
        _, a = new_wallet()
        coin = result(n.rpc_url, "faucet", payer, 5000)
        split = build([(coin, 0, key)], [(a, 1000)] * 5, timestamp=1)
        with connect(n.ws_url) as ws:
            send(ws, {"type": "Subscribe", "data": {"addresses": [a]}})
            start = orjson.loads(ws.recv(timeout=10))["data"]["seq"]
            txid = result(n.rpc_url, "sendrawtransaction", split.to_json())
            lagged = orjson.loads(ws.recv(timeout=10))
            assert lagged["type"] == "Lagged"
            resume_from = lagged["data"]["resume_from"]
            assert resume_from == start
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd.code == 1013
        # Subscribe takes it (it refused -1 with BAD_REQUEST), and the replay, part of
        # its answer, is not lag either: the wallet gets what it missed.
        with connect(n.ws_url) as ws:
            send(ws, {"type": "Subscribe", "data": {"addresses": [a], "since_seq": resume_from,
                                                    "snapshot": False}})
            assert orjson.loads(ws.recv(timeout=10))["type"] == "Subscribed"
            got = recv_until(ws, "TransactionFinalized")
            assert got[-1]["data"]["txid"] == txid
            assert sum(m["type"] == "UtxoStateChange" for m in got) == 5
    finally:
        n.stop()


# -- any sequence of wallet messages: bounded memory, no exception ------------------

MAX_MSG, MAX_SUBS, SEND_BUF = 4096, 20, 16384
# What one connection may hold, whatever it sends: its largest message being
# assembled and parsed (and its copies while parsed), its queued output, its
# subscriptions and their history, and fixed costs (session, parser, assembler).
CONNECTION_BOUND = 8 * MAX_MSG + SEND_BUF + 2 * MAX_SUBS * 1024 + 64 * 1024  # 152 KiB


class _Transport:
    """A transport whose peer reads everything at once."""

    def __init__(self) -> None:
        self.closed = False
        self.reading = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return client_frame(opcode, payload, fin, mask=b"\x01\x02\x03\x04")


_addr = st.sampled_from(["a1", "a2", "b_3", "time1test"] + [f"x{i}" for i in range(30)])
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                     | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(
                         st.text(max_size=5), c, max_size=3), max_leaves=8)
_wallet = st.one_of(
    st.just({"type": "Ping"}), st.just({"type": "Hello"}),
    st.builds(lambda a, s, snap: {"type": "Subscribe", "data": {
        "addresses": a, **({} if s is None else {"since_seq": s}), "snapshot": snap}},
        st.lists(_addr, min_size=1, max_size=25), st.none() | st.integers(-1, 50),
        st.booleans()),
    st.builds(lambda a: {"type": "Unsubscribe", "data": {"addresses": a}},
              st.lists(_addr, min_size=1, max_size=25)),
    st.builds(lambda a, after: {"type": "GetUtxos", "data": {"addresses": a, "after": after}},
              st.lists(_addr, min_size=1, max_size=3), st.none() | st.text(max_size=70)),
    st.builds(lambda t: {"type": "GetTransaction", "data": {"txid": t}}, _json),
    st.builds(lambda t: {"type": "SubmitTransaction", "data": {"tx": t}}, _json),
    st.dictionaries(st.text(max_size=6), _json, max_size=4),
)
_payload = st.one_of(_wallet.map(orjson.dumps), st.binary(max_size=64),
                     st.integers(0, MAX_MSG + 64).map(lambda n: b"x" * n))


@st.composite
def _frames(draw) -> bytes:
    payload = draw(_payload)
    kind = draw(st.sampled_from(["text", "fragments", "binary", "control", "garbage"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=16))
    if kind == "control":
        return _client_frame(draw(st.sampled_from([0x9, 0xA])), payload[:125])
    if kind != "fragments":
        return _client_frame(0x2 if kind == "binary" else 0x1, payload)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    parts = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    out = b""
    for i, part in enumerate(parts):
        out += _client_frame(0x1 if i == 0 else 0x0, part, fin=i == len(parts) - 1)
        if i < len(parts) - 1 and draw(st.booleans()):
            out += _client_frame(0x9, b"p")
    return out


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    from timefast.crypto import new_key
    from timefast.ledger import Ledger
    from timefast.server import WalletServer
    from timefast.session import Limits
    from timefast.storage import Store
    loop = asyncio.new_event_loop()
    led = Ledger(Store(tmp_path_factory.mktemp("bare") / "b.db"), "regtest", new_key())
    srv = WalletServer(led, Limits(MAX_SUBS, MAX_MSG, SEND_BUF), heartbeat_interval=0,
                       loop=loop)
    yield srv, loop
    srv.commits.close()
    loop.close()


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=st.lists(_frames(), max_size=12), cuts=st.lists(st.integers(1, 300),
                                                            max_size=6))
def test_any_message_sequence_keeps_a_connection_bounded_and_never_raises(
        bare_server, frames, cuts):
    from timefast.server import WalletConnection
    from timefast.session import SIGNATURE_BUDGET
    srv, loop = bare_server
    stream = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n") + b"".join(frames)
    chunks, at = [], 0
    for c in cuts:
        chunks.append(stream[at:at + c])
        at += c
    chunks.append(stream[at:])
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    conn = WalletConnection(srv)
    conn.connection_made(_Transport())
    for chunk in chunks:
        conn.data_received(chunk)
        loop.run_until_complete(asyncio.sleep(0))  # the flush and group commit
        s, ws = conn.session, conn.ws
        if ws is not None:
            assert len(ws.reader.buffer) <= MAX_MSG + 14
        assert conn.assembler.buffered <= MAX_MSG
        assert srv.fanout.pending(conn.slot) <= SEND_BUF
        if s is not None:
            assert srv.fanout.index.count_of(conn.slot) <= MAX_SUBS
            assert len(s.seen) <= 2 * MAX_SUBS and len(s.history) <= MAX_SUBS
            assert 0 <= s.signatures_waiting <= SIGNATURE_BUDGET
    # The most Python memory held at any moment (garbage not yet collected
    # included), plus the connection's output buffer in C memory.
    peak = tracemalloc.get_traced_memory()[1] - base
    conn.connection_lost(None)
    tracemalloc.stop()
    assert peak + SEND_BUF < CONNECTION_BOUND, peak


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=st.lists(_frames(), max_size=10), cuts=st.lists(st.integers(1, 300),
                                                            max_size=8))
def test_the_node_reads_every_message_as_websockets_does_however_the_stream_is_cut(
        bare_server, monkeypatch, frames, cuts):
    """The wallet port cuts frames itself (a text message in one frame skips
    websockets' parser): the messages the session gets, and the close code of a
    connection failed for a bad frame, are those websockets' own parser gives."""
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    from timefast.fragments import MessageAssembler, MessageError
    from timefast.server import WalletConnection
    from timefast.session import WalletSession
    srv, loop = bare_server
    got: list[bytes] = []
    monkeypatch.setattr(WalletSession, "handle_text", lambda self, text: got.append(text))
    stream = _UPGRADE + b"".join(frames)
    chunks, at = [], 0
    for c in cuts:
        chunks.append(stream[at:at + c])
        at += c
    chunks.append(stream[at:])
    conn = WalletConnection(srv)
    conn.connection_made(_Transport())
    for chunk in chunks:
        conn.data_received(chunk)
        loop.run_until_complete(asyncio.sleep(0))
    # The reference: websockets reads the request, answers it, then the frames one
    # drawn item at a time, so that of two faults the first in the stream closes.
    ref, asm, want = ServerProtocol(max_size=MAX_MSG), MessageAssembler(MAX_MSG), []
    for chunk in (_UPGRADE, *frames):
        ref.receive_data(chunk)
        for event in ref.events_received():
            if isinstance(event, Request):
                ref.send_response(ref.accept(event))
            elif isinstance(event, Frame):
                try:
                    message = asm.feed(event)
                except MessageError as e:
                    ref.fail(e.code, e.reason)
                    continue
                if message is not None and message[0] is Opcode.TEXT:
                    want.append(message[1])
    assert got == want
    sent = conn.ws.close_sent if conn.ws is not None else None
    assert (sent and sent.code) == (ref.close_sent and ref.close_sent.code)
    assert len(conn.inbuf) <= MAX_MSG + 14
    conn.connection_lost(None)


def test_wallet_sockets_get_the_fixed_send_buffer(node):
    """Each accepted wallet socket has SOCKET_SEND_BUFFER (the kernel doubles it),
    not an autotuned one, though it is set once on the listening socket."""
    from timefast import server
    with connect(node.ws_url) as ws:
        send(ws, {"type": "Ping"})
        assert orjson.loads(ws.recv(timeout=10))["type"] == "Pong"
        local = ws.socket.getsockname()
        conns = [c for c in list(node.node.wallets.conns.values())
                 if c.transport is not None
                 and c.transport.get_extra_info("peername")[:2] == local[:2]]
        assert len(conns) == 1
        sock = conns[0].transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == \
            2 * server.SOCKET_SEND_BUFFER


_UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUpgrade: websocket\r\n"
            b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")


def test_plain_upgrade_answers_the_rfc_example_and_leaves_the_rest_to_websockets():
    from timefast.server import plain_upgrade
    response = plain_upgrade(_UPGRADE)
    assert response is not None and response.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response  # RFC 6455
    assert plain_upgrade(_UPGRADE.replace(b"GET / ", b"GET /ws/utxo-protocol ")) is not None
    for other in (
        _UPGRADE.replace(b"Host:", b"Origin: https://x\r\nHost:"),  # an origin to decide on
        _UPGRADE.replace(b"Version: 13", b"Version: 8"),
        _UPGRADE.replace(b"GET / ", b"GET /health "),
        _UPGRADE.replace(b"GET / ", b"GET /?a=1 "),
        _UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"),
        _UPGRADE.replace(b"Host:", b"Sec-WebSocket-Protocol: x\r\nHost:"),
        _UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        _UPGRADE.replace(b"Host: 127.0.0.1:1", b"Upgrade: websocket"),  # twice
        _UPGRADE[:-2],  # incomplete
        _UPGRADE + b"\x81\x80abcd",  # a frame in the same read
    ):
        assert plain_upgrade(other) is None, other
