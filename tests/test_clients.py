"""The seed's clients against a live regtest node: wscat, websocket-client, a browser.

wscat and playwright-core come from npm and Chromium from Debian; `.ci/run`
installs them.  Where one cannot be found the test is skipped and says why.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import websocket

from timefast.transaction import build

from .helpers import NodeThread, Pty, new_wallet, result

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = Path(os.environ.get("TIMEFAST_NODE_MODULES", ROOT / ".ci" / "node_modules"))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeThread(tmp_path_factory.mktemp("clients")).start()
    yield n
    n.stop()


def _tool(name: str) -> str:
    local = NODE_MODULES / ".bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (npm install --prefix .ci {name})")
    return found


def test_wscat_as_the_seed_shows(node):
    wscat = _tool("wscat")
    term = Pty([wscat, "-c", node.ws_url, "--no-color"])
    try:
        term.wait_for("Connected")
        term.type('{"type":"Subscribe","data":{"addresses":["time1test"]}}')
        term.wait_for('"type":"Subscribed"')
        term.type('{"type":"Ping"}')
        term.wait_for('{"type":"Pong"}')
    finally:
        term.close()


def test_seed_python_snippet(node):
    """The seed's Python example, run as written but for the URL and a bounded loop."""
    ws = websocket.create_connection(node.ws_url)

    # Subscribe
    ws.send(json.dumps({
        "type": "Subscribe",
        "data": {"addresses": ["time1test"]}
    }))

    # Listen for messages
    received = []
    for _ in range(2):
        msg = ws.recv()
        received.append(msg)
        if len(received) == 1:
            result(node.rpc_url, "generate", 1)
    ws.close()
    assert json.loads(received[0])["type"] == "Subscribed"
    assert json.loads(received[1])["type"] == "NewBlock"


def test_seed_browser_page_sees_transaction_finalized(node, tmp_path):
    nodejs = shutil.which("node")
    if nodejs is None:
        pytest.skip("node is not installed")
    if not (NODE_MODULES / "playwright-core").exists():
        pytest.skip("playwright-core is not installed (npm install --prefix .ci playwright-core)")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    ka, a = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 1000)
    page = (Path(__file__).parent / "browser" / "seed_page.html").read_text()
    (tmp_path / "index.html").write_text(
        page.replace("__WS_URL__", node.ws_url).replace("__ADDRESS__", a))
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *args, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    env = {**os.environ, "CHROMIUM": chromium,
           "PLAYWRIGHT_CORE": str(NODE_MODULES / "playwright-core")}
    proc = subprocess.Popen([nodejs, str(Path(__file__).parent / "browser" / "run_seed_page.js"),
                             url], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        tx = build([(coin, 0, ka)], [(new_wallet()[1], 600), (a, 400)], timestamp=9)
        result(node.rpc_url, "sendrawtransaction", tx.to_json())
        assert proc.stdout.readline().strip() == "FINALIZED"
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        httpd.shutdown()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_time_cli_watch_reconnects_and_resumes_by_seq(tmp_path):
    from .helpers import NodeProcess

    ws_port, rpc_port = _free_port(), _free_port()
    ports = {"WS_ADDR": f"127.0.0.1:{ws_port}", "RPC_ADDR": f"127.0.0.1:{rpc_port}"}
    node = NodeProcess(tmp_path, **ports).start()
    ka, a = new_wallet()
    coin = result(node.rpc_url, "faucet", a, 1000)
    term = Pty([sys.executable, "-m", "timefast.cli", "watch", a, "--ws-url", node.ws_url])
    try:
        term.wait_for("watching " + a)
        node.kill()
        term.wait_for("reconnecting")
        # While the watcher is away, a payment happens; it must still be shown.
        node = NodeProcess(tmp_path, **ports).start()
        tx = build([(coin, 0, ka)], [(new_wallet()[1], 600), (a, 400)], timestamp=4)
        result(node.rpc_url, "sendrawtransaction", tx.to_json())
        term.wait_for("SpentFinalized", timeout=30)
        term.wait_for("finalized")
        assert term.screen.count(b"watching ") == 1  # resumed, not started afresh
    finally:
        term.close()
        node.kill()
