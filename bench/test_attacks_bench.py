"""The wallet-port attacks of docs/RELIABILITY.md ("Attacks"), measured on 127.0.0.1.

Each test starts a node process, attacks it with a bounded amount of work, and
records what it cost the node (RSS, CPU seconds, file descriptors) and what an honest
wallet saw meanwhile.  Run ``pytest bench/test_attacks_bench.py -s``; figures go to
the terminal and to bench/results/attacks.json.  To measure older code, put its
tree first on PYTHONPATH: the node processes run whatever ``timefast`` that finds.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bench.report import record_tagged
from tests.helpers import NodeProcess, fund_coins, new_wallet, result
from timefast.transaction import Transaction, TxInput, TxOutput, build

RESULTS_PATH = os.path.join(os.path.dirname(__file__), "results", "attacks.json")


def _record(name: str, value: object) -> None:
    print(f"\n{name}: {value}", flush=True)
    record_tagged(RESULTS_PATH, name, value)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _start(tmp_path, **settings) -> NodeProcess:
    return NodeProcess(tmp_path, **settings).start()


def test_wide_transactions(tmp_path):
    """Three payments of 1,300 outputs each (about 100 KB: MAX_TX_BYTES), then a restart."""
    n = _start(tmp_path)
    try:
        pid = n.proc.pid
        before = rss_mb(pid)
        key, a = new_wallet()
        for _ in range(3):
            coin = result(n.rpc_url, "faucet", a, 1300 * 1000)
            wide = build([(coin, 0, key)], [(a, 1000)] * 1300, timestamp=1)
            result(n.rpc_url, "sendrawtransaction", wide.to_json())
        time.sleep(1)
        after = rss_mb(pid)
        n.terminate()
        n = _start(tmp_path)
        restarted = rss_mb(n.proc.pid)
        _record("wide_tx", {"rss_start_mb": round(before, 1), "rss_after_3_mb": round(after, 1),
                            "rss_after_restart_mb": round(restarted, 1)})
    finally:
        n.kill()


def _junk_tx(inputs: int) -> dict:
    """A transaction of made-up inputs with well-formed, wrong signatures."""
    ins = tuple(TxInput(secrets.token_hex(32), 0, secrets.token_hex(32),
                        secrets.token_hex(64)) for _ in range(inputs))
    outs = (TxOutput(1000, new_wallet()[1]),)
    tx = Transaction("", 1, ins, outs, 0, 1)
    return Transaction(tx.compute_txid(), 1, ins, outs, 0, 1).to_json()


def test_signatures_before_cheap_checks(tmp_path):
    """300 transactions of 283 made-up inputs from a wallet with no coins, and a real
    payment from another wallet half a second into them."""
    n = _start(tmp_path)
    try:
        pid = n.proc.pid
        key, a = new_wallet()
        coin = result(n.rpc_url, "faucet", a, 1000)
        pay = build([(coin, 0, key)], [(new_wallet()[1], 1000)], timestamp=1)
        junk = [orjson.dumps({"type": "SubmitTransaction", "data": {"tx": _junk_tx(283)}})
                for _ in range(300)]
        rss0, cpu0 = rss_mb(pid), cpu_s(pid)
        with connect(n.ws_url, max_size=None) as bad, connect(n.ws_url) as good:
            sender = threading.Thread(target=lambda: [bad.send(m.decode()) for m in junk])
            sender.start()
            time.sleep(0.5)  # the junk is flowing: now a real payment
            t0 = time.monotonic()
            good.send(orjson.dumps({"type": "SubmitTransaction",
                                    "data": {"tx": pay.to_json()}}).decode())
            reply = orjson.loads(good.recv(timeout=300))
            answered = time.monotonic() - t0
            sender.join()
            codes = [orjson.loads(bad.recv(timeout=300))["data"].get("code")
                     for _ in junk]
        _record("bad_signatures", {
            "payment_answered_s": round(answered, 2), "payment_reply": reply["type"],
            "node_cpu_s": round(cpu_s(pid) - cpu0, 2),
            "rss_growth_mb": round(rss_mb(pid) - rss0, 1),
            "junk_codes": sorted(set(codes))})
    finally:
        n.kill()


def test_subscription_history(tmp_path):
    """60 rounds of Subscribe / Unsubscribe of 10,000 new addresses on one connection,
    with a payment (new events) each round, while another wallet pings."""
    n = _start(tmp_path)
    try:
        pid = n.proc.pid
        rss0 = rss_mb(pid)
        last = 0.0
        pings: list[float] = []
        _, payee = new_wallet()
        with connect(n.ws_url, max_size=None) as ws, connect(n.ws_url) as other:
            for r in range(60):
                addrs = [f"r{r}x{i}" for i in range(10_000)]
                t0 = time.monotonic()
                ws.send(orjson.dumps({"type": "Subscribe",
                                      "data": {"addresses": addrs, "snapshot": False}}).decode())
                # Another wallet's ping, sent while the node works on the Subscribe.
                other.send('{"type":"Ping"}')
                ws.recv(timeout=60)
                last = time.monotonic() - t0
                other.recv(timeout=60)
                pings.append(time.monotonic() - t0)
                result(n.rpc_url, "faucet", payee, 1000)
                ws.send(orjson.dumps({"type": "Unsubscribe",
                                      "data": {"addresses": addrs}}).decode())
                ws.recv(timeout=60)
            rss1 = rss_mb(pid)
        _record("subscription_history", {
            "rss_growth_mb": round(rss1 - rss0, 1), "last_subscribe_s": round(last, 3),
            "max_other_ping_ms": round(1000 * max(pings), 1)})
    finally:
        n.kill()


def test_unfinished_handshakes(tmp_path):
    """400 TCP connections from one address that never send a handshake, against
    MAX_CONNECTIONS 200 and MAX_CONNECTIONS_PER_IP 50."""
    n = _start(tmp_path, MAX_CONNECTIONS=200, MAX_CONNECTIONS_PER_IP=50)
    socks: list[socket.socket] = []
    try:
        pid = n.proc.pid
        fd0 = fds(pid)
        host, port = n.ws_url[len("ws://"):].rsplit(":", 1)
        for _ in range(400):
            s = socket.create_connection((host, int(port)), timeout=5)
            socks.append(s)
        time.sleep(1)
        held = fds(pid) - fd0
        open_ = 0
        for s in socks:
            s.setblocking(False)
            try:
                open_ += s.recv(1) != b""
            except BlockingIOError:
                open_ += 1
            except OSError:
                pass
        _record("unfinished_handshakes", {"node_fds_held": held, "sockets_left_open": open_})
    finally:
        for s in socks:
            s.close()
        n.kill()


def test_dust_snapshot(tmp_path):
    """Subscribe to, and GetUtxos of, an address holding 7,000 coins."""
    n = _start(tmp_path)
    try:
        key, a = new_wallet()
        fund_coins(n.rpc_url, key, a, 7000, 200)
        out = {}
        for kind, req in (("Subscribe", {"type": "Subscribe", "data": {"addresses": [a]}}),
                          ("GetUtxos", {"type": "GetUtxos", "data": {"addresses": [a]}})):
            with connect(n.ws_url, max_size=None) as ws:
                ws.send(orjson.dumps(req).decode())
                try:
                    raw = ws.recv(timeout=60)
                    msg = orjson.loads(raw)
                    out[kind] = {"reply": msg["type"], "bytes": len(raw)}
                    if msg["type"] == "Lagged":
                        ws.recv(timeout=10)
                except ConnectionClosed as e:
                    out[kind] = {"closed": e.rcvd.code if e.rcvd else None}
        _record("dust_snapshot", out)
    finally:
        n.kill()
