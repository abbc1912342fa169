"""Kill -9 in the middle of a burst: nothing acknowledged is lost (SPEC 4.5)."""

from __future__ import annotations

import threading
import time
import urllib.request

import orjson
from websockets.sync.client import connect

from timefast.transaction import build

from .helpers import NodeProcess, new_wallet, result


def _post(url: str, tx: dict) -> dict:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "sendrawtransaction",
                         "params": [tx]})
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
        return orjson.loads(r.read())


def test_sigkill_during_burst_loses_nothing_acknowledged(tmp_path):
    node = NodeProcess(tmp_path).start()
    try:
        ka, a = new_wallet()
        coin = result(node.rpc_url, "faucet", a, 1000 * 1000)
        split = build([(coin, 0, ka)], [(a, 1000)] * 1000, timestamp=1)
        result(node.rpc_url, "sendrawtransaction", split.to_json())
        txs = [build([(split.txid, i, ka)], [(new_wallet()[1], 900)], timestamp=i)
               for i in range(1000)]
        acked: list[str] = []
        seen_seq = [0]
        stop = threading.Event()

        def listen() -> None:
            try:
                with connect(node.ws_url) as ws:
                    ws.send(orjson.dumps({"type": "Subscribe",
                                          "data": {"addresses": [a]}}).decode())
                    while not stop.is_set():
                        msg = orjson.loads(ws.recv(timeout=5))
                        seq = msg.get("data", {}).get("seq")
                        if isinstance(seq, int) and msg["type"] != "Subscribed":
                            seen_seq[0] = max(seen_seq[0], seq)
            except Exception:
                return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(0.3)

        def burst() -> None:
            for tx in txs:
                try:
                    reply = _post(node.rpc_url, tx.to_json())
                except OSError:
                    return
                if "result" in reply:
                    acked.append(reply["result"])

        sender = threading.Thread(target=burst, daemon=True)
        sender.start()
        while len(acked) < 300:
            time.sleep(0.005)
        node.kill()
        sender.join(10)
        stop.set()
        listener.join(10)
        assert 300 <= len(acked) < 1000
        highest = seen_seq[0]
        assert highest > 0

        again = NodeProcess(tmp_path).start()
        try:
            for txid in acked:
                # On one node an acknowledged transaction was already final.
                assert result(again.rpc_url, "gettransaction", txid)["status"] == "finalized"
            info = result(again.rpc_url, "getinfo")
            assert info["seq"] >= highest
            [h] = result(again.rpc_url, "generate", 1)
            assert result(again.rpc_url, "getinfo")["seq"] > highest
            # Every coin is either spent by an acknowledged tx or still unspent.
            states = {result(again.rpc_url, "gettxout", split.txid, i)["state"]
                      for i in range(len(acked))}
            assert states == {"Confirmed"}
            assert h == result(again.rpc_url, "getbestblockhash")
        finally:
            again.terminate()
    finally:
        node.kill()


def test_sigkill_during_a_burst_leaves_the_history_equal_to_a_rebuild(tmp_path):
    import shutil

    from timefast.storage import Store
    from timefast.tables import Tables

    node = NodeProcess(tmp_path / "node").start()
    try:
        ka, a = new_wallet()
        coin = result(node.rpc_url, "faucet", a, 1000 * 300)
        split = build([(coin, 0, ka)], [(a, 1000)] * 300, timestamp=1)
        result(node.rpc_url, "sendrawtransaction", split.to_json())
        payees = [new_wallet()[1] for _ in range(7)]
        txs = [build([(split.txid, i, ka)], [(payees[i % 7], 600), (a, 300)], timestamp=i)
               for i in range(300)]
        acked: list[str] = []

        def burst() -> None:
            for tx in txs:
                try:
                    reply = _post(node.rpc_url, tx.to_json())
                except OSError:
                    return
                if "result" in reply:
                    acked.append(reply["result"])

        t = threading.Thread(target=burst)
        t.start()
        while len(acked) < 100:
            time.sleep(0.005)
        node.kill()
        t.join(30)
    finally:
        node.kill()
    # What kill -9 left, and the same transactions indexed afresh from their rows.
    shutil.copytree(tmp_path / "node", tmp_path / "copy")
    live = Store(tmp_path / "node" / "timefast.db")
    fresh = Store(tmp_path / "copy" / "timefast.db")
    Tables(fresh).build_history()
    rows = "SELECT address, k, txid, received, sent FROM history ORDER BY address, k"
    stored = live.query(rows)
    assert stored == fresh.query(rows)
    assert len({r[2] for r in stored}) >= 100 + 2  # the acknowledged, faucet and split
    live.close()
    fresh.close()
