"""``time-masternode edge`` (timefast/edge.py): wallets served from the masternode's
JetStream stream get what they get from the masternode itself (SPEC 8), through a
real nats-server, and lose nothing when the masternode, NATS or an edge is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from websockets.sync.client import ClientConnection, connect

from timefast.settings import load
from timefast.transaction import build

from .helpers import EdgeProcess, NatsServer, NodeProcess, new_wallet, result, rpc, wait_for


def send(ws: ClientConnection, type_: str, data: dict[str, Any] | None = None,
         msg_id: Any = None) -> None:
    msg: dict[str, Any] = {"type": type_}
    if data is not None:
        msg["data"] = data
    if msg_id is not None:
        msg["id"] = msg_id
    ws.send(orjson.dumps(msg).decode())


def recv_until(ws: ClientConnection, seq: int = -1, reply: Any = None,
               timeout: float = 20) -> list[str]:
    """Messages until one with ``data.seq`` at least ``seq`` and the reply with id
    ``reply`` (when given) have come."""
    out: list[str] = []
    deadline = time.time() + timeout
    have_seq, have_reply = seq < 0, reply is None
    while not (have_seq and have_reply):
        m = str(ws.recv(timeout=max(0.1, deadline - time.time())))
        out.append(m)
        msg = orjson.loads(m)
        data = msg.get("data")
        if isinstance(data, dict) and isinstance(data.get("seq"), int) \
                and data["seq"] >= seq and msg["type"] not in ("Subscribed", "Utxos", "Hello"):
            have_seq = True
        if reply is not None and msg.get("id") == reply:
            have_reply = True
    return out


def host_port(url: str) -> str:
    return url.split("//", 1)[1].rstrip("/")


class Cluster:
    """NATS, a masternode publishing to it, and edges reading from it."""

    def __init__(self, tmp: Path, **node: Any) -> None:
        self.tmp = tmp
        self.node_settings = node
        self.bus = NatsServer(tmp / "nats").start()
        self.node = NodeProcess(tmp / "mn", EVENT_BUS=self.bus.url, **node).start()
        self.edges: list[EdgeProcess] = []

    def edge(self, **settings: Any) -> EdgeProcess:
        e = EdgeProcess(self.tmp / f"edge{len(self.edges)}", self.bus.url,
                        self.node.rpc_url, **settings).start()
        self.edges.append(e)
        return e

    def restart_node(self) -> None:
        """kill -9 the masternode and start it again on the same ports."""
        rpc, ws = self.node.rpc_url, self.node.ws_url
        self.node.kill()
        self.node = NodeProcess(self.tmp / "mn", EVENT_BUS=self.bus.url,
                                RPC_ADDR=host_port(rpc), WS_ADDR=host_port(ws),
                                **self.node_settings).start()

    def seq(self) -> int:
        return int(result(self.node.rpc_url, "getinfo")["seq"])

    def close(self) -> None:
        for e in self.edges:
            e.kill()
        self.node.kill()
        self.bus.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def edge_at(edge: EdgeProcess, seq: int) -> Callable[[], bool]:
    def reached() -> bool:
        with connect(edge.ws_url) as ws:
            send(ws, "Hello")
            return bool(orjson.loads(ws.recv(timeout=5))["data"]["seq"] >= seq)
    return reached


def test_a_wallet_on_an_edge_gets_exactly_what_it_gets_on_the_masternode(cluster):
    node = cluster.node
    ka, a = new_wallet()
    _kb, b = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 10_000)
    split = build([(coin, 0, ka)], [(a, 1000)] * 10, timestamp=1)
    result(node.rpc_url, "sendrawtransaction", split.to_json())
    edge = cluster.edge()
    wait_for(edge_at(edge, cluster.seq()), what="the edge")
    with connect(node.ws_url) as on_node, connect(edge.ws_url) as on_edge:
        for ws in (on_node, on_edge):
            send(ws, "Subscribe", {"addresses": [a, b]}, 1)
        subscribed = [orjson.loads(ws.recv(timeout=10)) for ws in (on_node, on_edge)]
        assert subscribed[0] == subscribed[1]  # the same snapshot, at the same seq
        # Payments each way (one submitted on the edge, one on the masternode), a
        # rejected double spend, a block.
        pay1 = build([(split.txid, 0, ka)], [(b, 600), (a, 400)], timestamp=2)
        pay2 = build([(split.txid, 1, ka)], [(b, 900)], timestamp=3)
        send(on_edge, "SubmitTransaction", {"tx": pay1.to_json()}, "p1")
        send(on_node, "SubmitTransaction", {"tx": pay2.to_json()}, "p2")
        got_edge = recv_until(on_edge, reply="p1")
        got_node = recv_until(on_node, reply="p2")
        twice = build([(split.txid, 0, ka)], [(b, 1000)], timestamp=4)
        assert rpc(node.rpc_url, "sendrawtransaction", twice.to_json())["error"]["data"] \
            == {"code": "TX_CONFLICT"}
        result(node.rpc_url, "generate", 1)
        last = cluster.seq()  # the block's NewBlock, to every wallet
        got_edge += recv_until(on_edge, last)
        got_node += recv_until(on_node, last)

    def events(msgs: list[str]) -> list[str]:
        return [m for m in msgs if '"id"' not in m[:40]]
    assert events(got_edge) == events(got_node)
    assert len(events(got_edge)) > 10
    types = [orjson.loads(m)["type"] for m in events(got_edge)]
    assert "TransactionFinalized" in types and "NewBlock" in types
    # The submission's reply comes after its TransactionPending, as on the masternode.
    for msgs, name, tx in ((got_edge, "p1", pay1), (got_node, "p2", pay2)):
        order = [orjson.loads(m) for m in msgs]
        accepted = next(i for i, m in enumerate(order) if m.get("id") == name)
        assert order[accepted] == {"type": "TransactionAccepted", "id": name,
                                   "data": {"txid": tx.txid}}
        pending = next(i for i, m in enumerate(order) if m["type"] == "TransactionPending"
                       and m["data"]["tx"]["txid"] == tx.txid)
        assert pending < accepted


def test_requests_forwarded_to_the_masternode_answer_as_it_does(cluster):
    node = cluster.node
    _ka, a = new_wallet()
    txid = result(node.rpc_url, "faucet", a, 5000)
    edge = cluster.edge()
    wait_for(edge_at(edge, cluster.seq()), what="the edge")
    requests: list[tuple[str, dict[str, Any] | None]] = [
        ("Hello", None),
        ("GetUtxos", {"addresses": [a]}),
        ("GetUtxos", {"addresses": [a, "time1test"], "after": f"{txid}:0"}),
        ("GetTransaction", {"txid": txid}),
        ("GetTransaction", {"txid": "00" * 32}),
        ("GetHistory", {"address": a, "limit": 5}),
        ("GetHistory", {"address": "not valid!"}),
        ("SubmitTransaction", {"tx": {"txid": "nonsense"}}),
        ("Subscribe", {"addresses": [a], "since_seq": 0, "snapshot": False}),
        ("Unsubscribe", {"addresses": [a]}),
        ("Ping", None),
    ]
    seq = cluster.seq()
    answers = []
    for url in (node.ws_url, edge.ws_url):
        with connect(url) as ws:
            out = []
            for i, (type_, data) in enumerate(requests):
                send(ws, type_, data, i)
                out.append(recv_until(ws, seq if type_ == "Subscribe" else -1, reply=i))
            answers.append(out)
    for (type_, _), on_node, on_edge in zip(requests, *answers, strict=True):
        assert on_edge == on_node, type_
        assert on_node, type_


def test_since_seq_is_replayed_from_the_stream_and_resync_beyond_it(tmp_path):
    c = Cluster(tmp_path, REPLAY_EVENTS=40)
    try:
        _, a = new_wallet()
        for i in range(4):
            result(c.node.rpc_url, "faucet", a, 10 + i)
        edge = c.edge(REPLAY_EVENTS=40)
        wait_for(edge_at(edge, c.seq()), what="the edge")
        for old in (False, True):  # in the window, then (after more events) beyond it
            since = 1 if old else c.seq() - 15
            answers = []
            for url in (c.node.ws_url, edge.ws_url):
                with connect(url) as ws:
                    send(ws, "Subscribe", {"addresses": [a], "since_seq": since,
                                           "snapshot": False}, 1)
                    # A faucet's last event names its payee: the replay ends at seq.
                    answers.append(recv_until(ws, -1 if old else c.seq(), reply=1))
            assert answers[0] == answers[1]
            assert len(answers[0]) == 1 if old else len(answers[0]) > 5
            for i in range(10):
                result(c.node.rpc_url, "faucet", a, 100 + i)
            wait_for(edge_at(edge, c.seq()), what="the edge")
        assert orjson.loads(answers[1][0])["data"]["resync"] is True
    finally:
        c.close()


class Wallet:
    """A wallet that resumes by seq wherever ``url()`` points, keeping every event."""

    def __init__(self, url: Callable[[], str], addresses: list[str]) -> None:
        self.url = url
        self.addresses = addresses
        self.events: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def last(self) -> int:
        return int(self.events[-1]["data"]["seq"]) if self.events else 0

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with connect(self.url(), open_timeout=2) as ws:
                    send(ws, "Subscribe", {"addresses": self.addresses,
                                           "since_seq": self.last, "snapshot": False})
                    while not self.stop.is_set():
                        try:
                            msg = orjson.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        if msg["type"] not in ("Subscribed", "Error", "Lagged"):
                            self.events.append(msg)
            except Exception:
                time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def burst(c: Cluster, address: str, n: int, progress: list[int]) -> threading.Thread:
    """``n`` faucet payments to ``address`` (a block every 20), retrying through a
    masternode restart."""
    def run() -> None:
        i = 0
        while i < n:
            try:
                result(c.node.rpc_url, "faucet", address, 1 + i)
                if i % 20 == 19:
                    result(c.node.rpc_url, "generate", 1)
            except (OSError, AssertionError):
                time.sleep(0.2)
                continue
            i += 1
            progress[0] = i
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def check_every_event_once(c: Cluster, wallets: list[Wallet], address: str) -> None:
    seq = c.seq()
    for w in wallets:
        wait_for(lambda w=w: w.last >= seq, 30, "a wallet to catch up")
        w.close()
    with connect(c.node.ws_url) as ws:  # what the masternode itself replays
        send(ws, "Subscribe", {"addresses": [address], "since_seq": 0, "snapshot": False})
        expected = [orjson.loads(m) for m in recv_until(ws, seq)[1:]]
    assert expected[-1]["data"]["seq"] == seq
    for w in wallets:
        assert [e["data"]["seq"] for e in w.events] == [e["data"]["seq"] for e in expected]
        assert w.events == expected


def _mid_burst(c: Cluster, kill: Callable[[], None], wallets: list[Wallet], a: str) -> None:
    progress = [0]
    t = burst(c, a, 120, progress)
    wait_for(lambda: progress[0] >= 40, what="the burst")
    kill()
    t.join(60)
    assert progress[0] == 120
    check_every_event_once(c, wallets, a)


def test_kill_9_of_the_masternode_mid_burst_loses_no_event(cluster):
    _, a = new_wallet()
    edge = cluster.edge()
    wallets = [Wallet(lambda: edge.ws_url, [a]), Wallet(lambda: cluster.node.ws_url, [a])]
    time.sleep(0.5)
    _mid_burst(cluster, cluster.restart_node, wallets, a)


def test_kill_9_of_nats_mid_burst_loses_no_event(cluster):
    _, a = new_wallet()
    edge = cluster.edge()
    wallets = [Wallet(lambda: edge.ws_url, [a]), Wallet(lambda: cluster.node.ws_url, [a])]
    time.sleep(0.5)

    def kill() -> None:
        cluster.bus.kill()
        time.sleep(1.0)
        cluster.bus.start()
    _mid_burst(cluster, kill, wallets, a)


def test_kill_9_of_an_edge_mid_burst_its_wallets_resume_on_another(cluster):
    _, a = new_wallet()
    edges = [cluster.edge(), cluster.edge()]
    current = [edges[0]]
    wallets = [Wallet(lambda: current[0].ws_url, [a]), Wallet(lambda: edges[1].ws_url, [a])]
    time.sleep(0.5)

    def kill() -> None:
        edges[0].kill()
        # Its wallets come back on a new edge process, resuming from the stream.
        current[0] = cluster.edge()
    _mid_burst(cluster, kill, wallets, a)


def test_the_compose_file_wires_nats_a_masternode_and_three_edges():
    compose = yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy"
                              / "compose.edges.yml").read_text())
    services = compose["services"]
    assert "-js" in services["nats"]["command"]

    def env(name: str) -> dict[str, str]:
        return dict(e.split("=", 1) for e in services[name]["environment"])
    node = env("masternode")
    node_settings = load([], node)
    assert node_settings.event_bus == ("nats://nats:4222",)
    edges = [n for n, s in services.items() if s.get("command") == ["time-masternode",
                                                                      "edge"]]
    assert len(edges) == 3
    host_ports = set()
    for name in edges:
        s = load([], env(name))
        assert s.event_bus == node_settings.event_bus
        assert s.node_rpc is not None
        rpc = urllib.parse.urlsplit(s.node_rpc)
        # The edge reaches the masternode's RPC, which answers to that name.
        assert rpc.hostname == "masternode" and rpc.port == node_settings.rpc_addr[1]
        assert rpc.hostname in node_settings.rpc_allowed_hosts
        assert node_settings.rpc_addr[0] == "0.0.0.0"
        (port,) = services[name]["ports"]
        assert port.rpartition(":")[2] == str(s.ws_addr[1])
        host_ports.add(port.partition(":")[0])
    assert len(host_ports) == 3


def test_edges_share_one_port(cluster):
    first = cluster.edge()
    second = cluster.edge(WS_ADDR=host_port(first.ws_url))  # SO_REUSEPORT
    assert second.ws_url == first.ws_url
    first.kill()
    # The port is still served, by the other edge.
    with connect(second.ws_url) as ws:
        send(ws, "Ping")
        assert ws.recv(timeout=5) == '{"type":"Pong"}'



def test_an_edge_without_its_settings_says_what_it_needs():
    out = subprocess.run([sys.executable, "-m", "timefast", "edge"], capture_output=True,
                         text=True, timeout=60,
                         env={k: v for k, v in os.environ.items()
                              if k not in ("EVENT_BUS", "NODE_RPC")})
    assert out.returncode == 2
    assert "EVENT_BUS" in out.stderr and "NODE_RPC" in out.stderr
