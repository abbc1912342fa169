"""End-to-end fan-out: delivered messages per second, node against baselines.

Every server is driven by the same compiled load client (bench/loadclient.c) over
loopback, with events triggered through the server's RPC.  Results go to the
terminal, to bench/results/fanout.json and to bench/results/REPORT.md (with a PNG
plot when matplotlib is installed).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from bench import report
from tests.helpers import wait_for

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"
RESULTS = HERE / "results"

# (name, mode, clients, addresses, events, in flight)
SCENARIOS = [
    ("broadcast 1k x1", "broadcast", 1000, 1, 500, 1),
    ("broadcast 1k x16", "broadcast", 1000, 1, 800, 16),
    ("broadcast 10k x1", "broadcast", 10000, 1, 60, 1),
    ("broadcast 10k x16", "broadcast", 10000, 1, 160, 16),
    ("routed 10k/10k x16", "routed", 10000, 10000, 3000, 16),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _compile(src: str, out: str) -> Path:
    BUILD.mkdir(exist_ok=True)
    target = BUILD / out
    if not target.exists() or target.stat().st_mtime < (HERE / src).stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(target), str(HERE / src)], check=True)
    return target


@pytest.fixture(scope="session")
def loadclient() -> Path:
    """The compiled load client, built from bench/loadclient.c when it changed."""
    return _compile("loadclient.c", "loadclient")


class Server:
    """A server under test in its own process, with its WS and RPC ports."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None,
                 ws_port: int, rpc_port: int) -> None:
        self.name, self.ws_port, self.rpc_port = name, ws_port, rpc_port
        self.argv, self.env = argv, env  # to start it again (bench/test_storm_bench.py)
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Started once its RPC answers (an OSError until it listens).
        wait_for(lambda: self.rpc("getblockcount") is not None, 30, f"{name} started")

    def rpc(self, method: str, *params: object) -> object:
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                             "params": list(params)})
        req = urllib.request.Request(f"http://127.0.0.1:{self.rpc_port}/", data=body)
        with urllib.request.urlopen(req, timeout=30) as r:
            return orjson.loads(r.read())["result"]

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_timefast(tmp: Path, **extra: str) -> Server:
    ws, rpc = _free_port(), _free_port()
    env = {**extra,"WS_ADDR": f"127.0.0.1:{ws}", "RPC_ADDR": f"127.0.0.1:{rpc}",
           "DATA_DIR": str(tmp / "timefast"), "BLOCK_INTERVAL": "0",
           "MAX_CONNECTIONS_PER_IP": "0", "MAX_CONNECTIONS": "20000", "LOG_LEVEL": "WARNING",
           "HEARTBEAT_INTERVAL": "600", **extra}
    return Server("timefast", [sys.executable, "-m", "timefast"], env, ws, rpc)


def start_websockets(tmp: Path) -> Server:
    ws, rpc = _free_port(), _free_port()
    return Server("websockets.broadcast",
                  [sys.executable, str(HERE / "baseline_websockets.py"), str(ws), str(rpc)],
                  None, ws, rpc)


def start_bare_c(tmp: Path) -> Server:
    binary = _compile("baseline_server.c", "baseline_server")
    ws, rpc = _free_port(), _free_port()
    return Server("bare C epoll", [str(binary), str(ws), str(rpc)], None, ws, rpc)


def start_node_ws(tmp: Path) -> Server | None:
    """Node's `ws`, installed from npm into bench/build; None where node is missing."""
    node = shutil.which("node")
    if node is None:
        print("\nnode is not installed: the Node ws baseline is left out", flush=True)
        return None
    module = BUILD / "node_modules" / "ws"
    if not module.exists():
        subprocess.run(["npm", "install", "--prefix", str(BUILD), "--no-audit", "--no-fund",
                        "ws@8"], check=True, capture_output=True)
    ws, rpc = _free_port(), _free_port()
    return Server("node ws", [node, str(HERE / "baseline_ws.js"), str(ws), str(rpc)],
                  {"WS_MODULE": str(module)}, ws, rpc)


SERVERS = {"timefast": start_timefast, "websockets.broadcast": start_websockets,
           "node ws": start_node_ws, "bare C epoll": start_bare_c}


def run_client(client: Path, server: Server, mode: str, clients: int, addresses: int,
               events: int, inflight: int, *extra: str, timeout: float = 120) -> dict:
    """One load-client run (``extra``: more client options, ``timeout``: its own
    limit in seconds); adds ``server_cpu_timed_s``, the server's CPU time over the
    timed part (from the client's "timed" line to its result)."""
    base = server.rpc("getblockcount")
    proc = subprocess.Popen(
        [str(client), "--ws-port", str(server.ws_port), "--rpc-port", str(server.rpc_port),
         "--conns", str(clients), "--addresses", str(addresses), "--mode", mode,
         "--events", str(events), "--inflight", str(inflight), "--timeout", str(timeout),
         "--base-height", str(base), *extra,
         "--progress", f"{server.name}: {mode} {clients} clients, {inflight} in flight"
         + (f" {' '.join(extra)}" if extra else "")],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    cpu0 = None
    last = ""
    for line in proc.stdout:
        if line.startswith('{"timed"'):
            cpu0 = server.cpu_seconds()
        elif line.strip():
            last = line
    cpu1 = server.cpu_seconds()
    assert proc.wait(timeout + 180) == 0
    r = orjson.loads(last)
    r["server_cpu_timed_s"] = cpu1 - cpu0 if cpu0 is not None else 0.0
    return r


def idle_rss_per_connection(client: Path, server: Server, clients: int = 10000) -> float:
    before = server.rss_kb()
    proc = subprocess.Popen([str(client), "--ws-port", str(server.ws_port), "--rpc-port",
                             str(server.rpc_port), "--conns", str(clients), "--events", "0",
                             "--idle", "3", "--timeout", "120"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = orjson.loads(proc.stdout.readline())
    time.sleep(1.0)
    after = server.rss_kb()
    proc.wait(60)
    assert ready["conn_failures"] == 0
    return (after - before) * 1024 / clients


def write_report(results: dict[str, dict[str, dict]], rss: dict[str, float]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fanout.json").write_bytes(orjson.dumps({"results": results, "rss": rss},
                                                       option=orjson.OPT_INDENT_2))
    servers = list(rss)
    lines = ["## Fan-out", "",
             f"{report.stamp()} One run, the same compiled load client for every server.",
             "", "Delivered messages per second (higher is better), latency from trigger to "
             "receipt, and how busy each side was while events flowed: CPU time over the "
             "timed part's wall time, for the server process and the load client (near "
             "100% is the limit; 100% is one core).", "",
             "| scenario | server | msgs/s | p50 ms | p99 ms | server CPU | client CPU |"
             " timefast vs it |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for scen, per_server in results.items():
        ours = per_server.get("timefast", {}).get("msgs_per_s") or 0
        for name in servers:
            r = per_server.get(name)
            if not r:
                continue
            ratio = f"{ours / r['msgs_per_s']:.2f}x" if r["msgs_per_s"] and name != "timefast" \
                else "-"
            secs = r["seconds"] or 1.0
            lines.append(f"| {scen} | {name} | {r['msgs_per_s']:,.0f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['server_cpu_timed_s'] / secs:.0%} | "
                         f"{r['client_cpu_timed_s'] / secs:.0%} | {ratio} |")
    lines += ["", "CPU shares come from 10 ms clock ticks: rows that ran under half a second "
              "are rough.  In the routed row each timefast event is a real payment through "
              "the ledger (`faucet`: signed, validated, committed), which bounds it at the "
              "ledger's rate; the baselines only send JSON."]
    lines += ["", "Idle memory per connection (RSS growth with 10,000 idle connections):", "",
              "| server | bytes per connection |", "|---|---:|"]
    lines += [f"| {name} | {v:,.0f} |" for name, v in rss.items()]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in servers:
            for flight, style in ((1, "o-"), (16, "s--")):
                pts = [(per[name]["connections"], per[name]["msgs_per_s"])
                       for scen, per in results.items()
                       if scen.startswith("broadcast") and scen.endswith(f"x{flight}")
                       and name in per]
                if pts:
                    xs, ys = zip(*sorted(pts), strict=True)
                    ax.plot(xs, ys, style, label=f"{name}, {flight} in flight")
        ax.set_xscale("log")
        ax.set_xlabel("clients")
        ax.set_ylabel("delivered messages/s")
        ax.set_title("NewBlock broadcast fan-out")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "fanout.png", dpi=100)
        lines += ["", "![fan-out plot](fanout.png)"]
    except ImportError:
        lines += ["", "(install matplotlib for the plot)"]
    report.set_section("fanout", "\n".join(lines))


def test_fanout(loadclient, tmp_path, benchmark):
    results: dict[str, dict[str, dict]] = {s[0]: {} for s in SCENARIOS}
    rss: dict[str, float] = {}
    for name, start in SERVERS.items():
        server = start(tmp_path)
        if server is None:
            continue
        try:
            rss[name] = idle_rss_per_connection(loadclient, server)
            for scen, mode, clients, addrs, events, flight in SCENARIOS:
                r = run_client(loadclient, server, mode, clients, addrs, events, flight)
                assert r["complete"], (name, scen, r)
                results[scen][name] = r
                print(f"\n{scen:22s} {name:22s} {r['msgs_per_s']:>12,.0f} msg/s "
                      f"p50 {r['p50_ms']:7.1f} ms p99 {r['p99_ms']:7.1f} ms "
                      f"server cpu {r['server_cpu_timed_s']:.2f}s "
                      f"client cpu {r['client_cpu_timed_s']:.2f}s of {r['seconds']:.2f}s",
                      flush=True)
        finally:
            server.stop()
    benchmark.extra_info.update(results=results, rss=rss)
    benchmark.pedantic(lambda: None, rounds=1)
    write_report(results, rss)
    shutil.copy(report.REPORT, tmp_path / "REPORT.md")
