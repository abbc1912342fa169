"""EVENT_BUS: committed events to NATS JetStream (timefast/bus.py), with a real
nats-server (SPEC 8)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from websockets.sync.client import connect

from timefast import crypto
from timefast.bus import decode, encode, stream_name, subject
from timefast.journal import Event
from timefast.ledger import Ledger
from timefast.storage import Store

from .helpers import NatsServer, NodeProcess, NodeThread, new_wallet, result, wait_for


def read_stream(url: str, network: str, public_key: str) -> list[tuple[int, Event]]:
    """Every message the masternode's stream holds: ``(stream seq, event)``."""
    import nats

    async def main() -> list[tuple[int, Event]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            name = stream_name(network, public_key)
            info = await js.stream_info(name)
            out = []
            for s in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg(name, s)
                out.append((s, decode(int(m.headers["Nats-Msg-Id"]), m.data)))
            return out
        finally:
            await nc.close()
    return asyncio.run(main())


def events_of(rpc_url: str, ws_url: str, address: str) -> list[bytes]:
    """What the masternode replays to a wallet of ``address`` resuming from 0."""
    with connect(ws_url) as ws:
        ws.send(orjson.dumps({"type": "Subscribe", "data": {
            "addresses": [address], "since_seq": 0, "snapshot": False}}).decode())
        first = orjson.loads(ws.recv(timeout=10))
        assert first["type"] == "Subscribed"
        now = first["data"]["seq"]
        out: list[bytes] = []
        while now and (not out or orjson.loads(out[-1])["data"]["seq"] < now):
            try:
                out.append(ws.recv(timeout=2).encode())
            except TimeoutError:
                break
        return out


def test_the_message_body_carries_type_addresses_and_payload():
    e = Event(7, "TransactionPending", ("TIME0a", "TIME0b"), b'{"type":"x","data":{"seq":7}}')
    back = decode(7, encode(e))
    assert (back.seq, back.type, back.addresses, back.payload) == (
        7, "TransactionPending", ("TIME0a", "TIME0b"), e.payload)
    block = decode(9, encode(Event(9, "NewBlock", None, b'{"a":"\\n"}')))
    assert block.addresses is None and block.payload == b'{"a":"\\n"}'
    assert decode(3, encode(Event(3, "TransactionRejected", (), b"{}"))).addresses == ()
    key = "ab" * 32
    assert stream_name("regtest", key) == "TIMEFAST_REGTEST_ABABABABABABABAB"
    assert subject("testnet", key) == "timefast.testnet.abababababababab.events"


def test_without_event_bus_nothing_of_nats_is_imported(tmp_path):
    code = f"""
import sys
from pathlib import Path
from tests.helpers import NodeThread, result, new_wallet
n = NodeThread(Path({str(tmp_path)!r})).start()
result(n.rpc_url, "faucet", new_wallet()[1], 5)
n.stop()
print(sorted(m for m in sys.modules if m == "nats" or m.startswith("nats.")
             or m == "timefast.bus" or m == "timefast.edge"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_events_the_stream_has_not_stored_are_never_pruned(tmp_path):
    led = Ledger(Store(tmp_path / "db"), "regtest", crypto.new_key(), replay_events=10)
    led.work.keep_stored_after(5)  # the bus stored events 1..5 only
    for _ in range(1100):  # past 1,024 events: the ledger prunes
        led.blocks.make_block()
    kept = led.reads.stored_events(0, 5000)
    assert [e.seq for e in kept] == list(range(6, led.seq + 1))
    led.work.keep_stored_after(1050)  # the bus caught up: the rest may go
    for _ in range(1100):
        led.blocks.make_block()
    kept = led.reads.stored_events(0, 5000)
    assert kept[0].seq == 1051 and kept[-1].seq == led.seq


def test_every_committed_event_is_published_once_in_seq_order(tmp_path):
    bus = NatsServer(tmp_path / "nats").start()
    n = NodeThread(tmp_path / "mn", EVENT_BUS=bus.url).start()
    try:
        _, a = new_wallet()
        for i in range(20):
            result(n.rpc_url, "faucet", a, 100 + i)
            if i % 7 == 0:
                result(n.rpc_url, "generate", 1)
        led = n.node.ledger
        assert led is not None
        seq = led.seq
        wait_for(lambda: n.call(lambda: n.node.bus.acked) == seq, what="the stream")
        stream = read_stream(bus.url, led.network, led.public_key)
        assert [e.seq for _, e in stream] == list(range(1, seq + 1))
        stored = n.call(lambda: led.reads.stored_events(0, 10_000))
        assert [(e.type, e.addresses, e.payload) for _, e in stream] == [
            (e.type, e.addresses, e.payload) for e in stored]
        info = result(n.rpc_url, "getinfo")["event_bus"]
        assert info == {"stream": stream_name(led.network, led.public_key),
                        "connected": True, "published_seq": seq}
    finally:
        n.stop()
        bus.stop()


def test_nats_down_the_masternode_serves_its_wallets_and_the_stream_catches_up(tmp_path):
    bus = NatsServer(tmp_path / "nats").start()
    n = NodeThread(tmp_path / "mn", EVENT_BUS=bus.url).start()
    try:
        led = n.node.ledger
        assert led is not None
        _, a = new_wallet()
        result(n.rpc_url, "faucet", a, 1)
        bus.kill()
        with connect(n.ws_url) as ws:
            ws.send(orjson.dumps({"type": "Subscribe", "data": {"addresses": [a]}}).decode())
            assert orjson.loads(ws.recv(timeout=10))["type"] == "Subscribed"
            result(n.rpc_url, "faucet", a, 2)
            got = [orjson.loads(ws.recv(timeout=10))["type"] for _ in range(3)]
            assert "TransactionPending" in got  # served with NATS down
        for _ in range(30):
            result(n.rpc_url, "faucet", a, 3)
        result(n.rpc_url, "generate", 1)
        seq = led.seq
        bus.start()  # same port, same store
        wait_for(lambda: n.call(lambda: n.node.bus.acked) == seq, 30, "the catch-up")
        stream = read_stream(bus.url, led.network, led.public_key)
        assert [e.seq for _, e in stream] == list(range(1, seq + 1))
    finally:
        n.stop()
        bus.stop()


def test_kill_9_of_the_masternode_mid_burst_the_publisher_resumes(tmp_path):
    bus = NatsServer(tmp_path / "nats").start()
    node = NodeProcess(tmp_path / "mn", EVENT_BUS=bus.url).start()
    try:
        _, a = new_wallet()
        done = threading.Event()

        def burst() -> None:
            for i in range(300):
                try:
                    result(node.rpc_url, "faucet", a, 1 + i)
                except OSError:
                    break
            done.set()

        t = threading.Thread(target=burst, daemon=True)
        t.start()
        time.sleep(1.0)
        node.kill()
        t.join(10)
        rpc, ws = node.rpc_url, node.ws_url
        node = NodeProcess(tmp_path / "mn", EVENT_BUS=bus.url,
                           RPC_ADDR=rpc.split("//")[1].rstrip("/"),
                           WS_ADDR=ws.split("//")[1]).start()
        for i in range(5):
            result(node.rpc_url, "faucet", a, 1000 + i)
        info = result(node.rpc_url, "getinfo")
        seq = info["seq"]
        wait_for(lambda: result(node.rpc_url, "getinfo")["event_bus"]["published_seq"] == seq,
                 what="the stream")
        stream = read_stream(bus.url, "regtest", info["masternode"])
        # Every event once, none skipped: a republish after the kill was dropped.
        assert [e.seq for _, e in stream] == list(range(1, seq + 1))
        replay = events_of(node.rpc_url, node.ws_url, a)
        mine = [e.payload for _, e in stream if (e.addresses and a in e.addresses)
                or e.addresses is None]
        assert mine == replay
    finally:
        node.kill()
        bus.stop()


@pytest.mark.parametrize("keep", [50])
def test_the_stream_keeps_at_least_replay_events(tmp_path, keep):
    bus = NatsServer(tmp_path / "nats").start()
    n = NodeThread(tmp_path / "mn", EVENT_BUS=bus.url, REPLAY_EVENTS=keep).start()
    try:
        led = n.node.ledger
        assert led is not None
        result(n.rpc_url, "generate", 3 * keep)
        seq = led.seq
        wait_for(lambda: n.call(lambda: n.node.bus.acked) == seq, what="the stream")
        stream = read_stream(bus.url, led.network, led.public_key)
        assert [e.seq for _, e in stream] == list(range(seq - keep + 1, seq + 1))
    finally:
        n.stop()
        bus.stop()


def test_nats_absent_at_start_the_stream_fills_when_it_comes(tmp_path):
    bus = NatsServer(tmp_path / "nats")
    with socket.socket() as s:  # a port nothing listens on yet
        s.bind(("127.0.0.1", 0))
        bus.port = s.getsockname()[1]
    n = NodeThread(tmp_path / "mn", EVENT_BUS=bus.url).start()
    try:
        led = n.node.ledger
        assert led is not None
        _, a = new_wallet()
        for i in range(5):
            result(n.rpc_url, "faucet", a, 1 + i)
        assert result(n.rpc_url, "getinfo")["event_bus"]["connected"] is False
        seq = led.seq
        bus.start()
        wait_for(lambda: n.call(lambda: n.node.bus.acked) == seq, 30, "the stream")
        stream = read_stream(bus.url, led.network, led.public_key)
        assert [e.seq for _, e in stream] == list(range(1, seq + 1))
    finally:
        n.stop()
        bus.stop()
