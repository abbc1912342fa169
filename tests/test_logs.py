"""Logs: the seed's lines, JSON lines for machines, and the start-up banner."""

from __future__ import annotations

import orjson
from websockets.sync.client import connect

from .helpers import NodeProcess, wait_for


def test_json_logs_banner_and_seed_lines(tmp_path):
    node = NodeProcess(tmp_path, LOG_FORMAT="json").start()
    try:
        with connect(node.ws_url) as ws:
            ws.send('{"type":"Subscribe","data":{"addresses":["a","b","c","d","e"]}}')
            ws.recv(timeout=10)
        wait_for(lambda: any("disconnected" in x for x in node.log), 10, "its disconnection logged")
    finally:
        node.terminate()
    records = [orjson.loads(line) for line in node.log if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    msgs = [r["msg"] for r in records]
    banner = msgs[0]
    assert "regtest" in banner and "wallets ws://127.0.0.1:" in banner and "TIME0" in banner
    assert any(m.startswith("📱 New WebSocket connection from: 127.0.0.1:") for m in msgs)
    assert any(m.startswith("📢 Client ") and m.endswith("subscribed to 5 addresses")
               for m in msgs)
    assert any(m.startswith("👋 Client ") and m.endswith(" disconnected") for m in msgs)
