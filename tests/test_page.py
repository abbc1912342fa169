"""The live page: ``GET /status`` (SPEC 3.7), ``GET /`` and its files, and the page
itself in headless Chromium (Debian's, through playwright-core; skipped, saying why,
where either is missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import websocket

from timefast import crypto, page
from timefast.ledger import Ledger
from timefast.storage import Store
from timefast.transaction import build

from .helpers import NodeThread, new_wallet, result

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = Path(os.environ.get("TIMEFAST_NODE_MODULES", ROOT / ".ci" / "node_modules"))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeThread(tmp_path_factory.mktemp("page")).start()
    yield n
    n.stop()


def get(url: str, accept: str = "*/*") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_status_lists_pending_transactions_with_their_tallies(tmp_path, monkeypatch):
    # Two masternodes: quorum 2, so this node's own vote leaves a payment pending.
    other = crypto.public_key_hex(crypto.new_key())
    key = crypto.new_key()
    led = Ledger(Store(tmp_path / "db"), "regtest", key,
                 masternodes=[crypto.public_key_hex(key), other])
    _, a = new_wallet()
    s = page.status(led)
    assert s["peers"] == [] and s["pending"] == [] and s["height"] == led.height
    assert s["tip"] == led.tip
    assert s["consensus"] == {"height": led.height + 1, "round": 0, "step": "NewHeight"}
    faucet = led.faucet.pay(a, 3000)  # pending too: the faucet's payment needs 2 votes
    led.sign_batch()  # its own vote, as the peer layer signs it a few ms later
    s = page.status(led, now=led.pool.pending[faucet].accepted_at + 2)
    outputs = led.pool.pending[faucet].tx.outputs  # the 3,000 and the faucet's change
    assert s["pending"] == [{"txid": faucet, "votes": 1, "against": 0, "quorum": 2,
                             "amount": sum(o.amount for o in outputs), "age_s": 2.0}]
    assert s["pending_count"] == 1 and s["unconfirmed"] == []
    monkeypatch.setattr(page, "MAX_LISTED", 0)
    s = page.status(led)
    assert s["pending"] == [] and s["pending_count"] == 1


def test_status_over_http_and_the_finalized_awaiting_a_block(node):
    _, a = new_wallet()
    txid = result(node.rpc_url, "faucet", a, 1000)
    code, ctype, body = get(node.http_url + "/status")
    assert code == 200 and ctype == "application/json"
    s = orjson.loads(body)
    assert {"txid": txid, "amount": s["unconfirmed"][-1]["amount"]} in s["unconfirmed"]
    result(node.rpc_url, "generate", 1)
    s = orjson.loads(get(node.http_url + "/status")[2])
    assert s["unconfirmed"] == [] and s["height"] == result(node.rpc_url, "getinfo")["height"]


def test_root_is_the_page_for_browsers_and_the_protocol_for_wallets(node):
    code, ctype, body = get(node.http_url + "/", "text/html,application/xhtml+xml,*/*;q=0.8")
    assert code == 200 and ctype.startswith("text/html") and b'src="/app.js"' in body
    code, ctype, body = get(node.http_url + "/client.js")
    assert code == 200 and ctype.startswith("text/javascript")
    assert body == (ROOT / "clients" / "js" / "timefast-client.js").read_bytes()
    for path in ("/app.js", "/style.css"):
        assert get(node.http_url + path)[0] == 200
    # A plain HTTP request that does not want HTML is not given the page.
    assert get(node.http_url + "/")[0] != 200
    # A WebSocket upgrade on / is the wallet protocol, as before, Accept or not.
    ws = websocket.create_connection(node.ws_url + "/", header=["Accept: text/html"])
    ws.send('{"type":"Ping"}')
    assert ws.recv() == '{"type":"Pong"}'
    ws.close()


class LivePage:
    """The live page at ``url`` in headless Chromium (tests/browser/run_live_page.js),
    driven by its commands; skips, saying why, where Node or Chromium is missing."""

    def __init__(self, url: str, shot: Path) -> None:
        nodejs = shutil.which("node")
        if nodejs is None:
            pytest.skip("node is not installed")
        if not (NODE_MODULES / "playwright-core").exists():
            pytest.skip("playwright-core is not installed (npm ci --prefix .ci)")
        chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
        if chromium is None:
            pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
        env = {**os.environ, "CHROMIUM": chromium,
               "PLAYWRIGHT_CORE": str(NODE_MODULES / "playwright-core")}
        self.proc = subprocess.Popen(
            [nodejs, str(ROOT / "tests" / "browser" / "run_live_page.js"), url, str(shot)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "READY"

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(30)


def test_live_page_shows_a_payment_and_a_block(node, tmp_path):
    ka, a = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 1000)
    result(node.rpc_url, "generate", 1)
    # UPDATE_SCREENSHOT=1 refreshes the one the README shows.
    shot = (ROOT / "docs" / "live-page.png" if os.environ.get("UPDATE_SCREENSHOT")
            else tmp_path / "live-page.png")
    page_ = LivePage(f"{node.http_url}/#{a}", shot)
    try:
        command = page_.command
        tx = build([(coin, 0, ka)], [(new_wallet()[1], 600), (a, 400)], timestamp=9)
        result(node.rpc_url, "sendrawtransaction", tx.to_json())
        assert command(f"TX {tx.txid}") == "SHOWN"
        height = result(node.rpc_url, "getinfo")["height"] + 1
        result(node.rpc_url, "generate", 1)
        assert command(f"BLOCK {height}") == "SHOWN"
        # The payment in the address's history, confirmed by that block.
        assert command(f"HIST {tx.txid} confirmed") == "SHOWN"
        assert command(f"HIST {coin} confirmed") == "SHOWN"
        # A second payment, in flight when the picture is taken.
        tx2 = build([(tx.txid, 1, ka)], [(new_wallet()[1], 150), (a, 250)], timestamp=10)
        result(node.rpc_url, "sendrawtransaction", tx2.to_json())
        assert command(f"TX {tx2.txid}") == "SHOWN"
        assert command(f"HIST {tx2.txid} finalized") == "SHOWN"
        assert orjson.loads(command("ORDER")) == [tx2.txid, tx.txid, coin]
        text = orjson.loads(command("SHOT"))
        assert f"confirmed {tx.txid[:10]}" in text and f"#{height} " in text
        assert "SpentFinalized → Confirmed" in text
        assert "finalized, awaiting a block" in text
        assert "balance 0.0000025 TIME" in text
        # tx in the history: 1,000 units out of the address, 400 back as change.
        assert f"{tx.txid[:10]}…{tx.txid[-6:]}\tconfirmed\t+0.000004\t−0.00001\t#{height}" in text
        assert "3 tx · showing 3" in text
        assert page_.proc.wait(30) == 0
        assert shot.stat().st_size > 10_000
    finally:
        page_.proc.kill()


def test_live_page_history_follows_more_and_takes_new_payments_on_top(node, tmp_path):
    ka, a = new_wallet()
    _, b = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 100_000)
    txids, last = [coin], (coin, 0, 100_000)

    def pay(i: int) -> str:
        nonlocal last
        txid, vout, amount = last
        tx = build([(txid, vout, ka)], [(b, 100), (a, amount - 100)], timestamp=i)
        result(node.rpc_url, "sendrawtransaction", tx.to_json())
        last = (tx.txid, 1, amount - 100)
        txids.append(tx.txid)
        return tx.txid

    for i in range(54):  # 55 transactions: a page of 50, and 5 behind "more"
        pay(i)
    page_ = LivePage(f"{node.http_url}/#{a}", tmp_path / "shot.png")
    try:
        assert page_.command("ROWS 50") == "SHOWN"
        assert orjson.loads(page_.command("ORDER")) == txids[::-1][:50]
        assert page_.command("MORE") == "CLICKED"
        assert page_.command("ROWS 55") == "SHOWN"
        assert orjson.loads(page_.command("ORDER")) == txids[::-1]
        # A new payment goes on top; the rows "more" brought stay below.
        new = pay(99)
        assert page_.command(f"HIST {new} finalized") == "SHOWN"
        assert orjson.loads(page_.command("ORDER")) == txids[::-1]
        assert page_.close() == 0
    finally:
        page_.proc.kill()
