"""Reconnect storms (issue 20): wallets connecting at once, and a node restart.

1. N wallets connect, subscribe to their own address and are confirmed
   (`Subscribed`), beside the three baselines in the same run (for them
   Subscribe -> Subscribed is the one message and its reply).
2. Half the wallets go away; payments flow to every wallet's address; the node is
   killed (kill -9) while they flow and started again on the same data directory
   and ports; every wallet reconnects at once with its last `seq` (those that were
   away replay what they missed, the others what was in flight at the kill).
   Measured: time until the last wallet has resumed and caught up, events replayed
   per second, latency of payments made during the storm, and wallets that missed
   or repeated an event.

The compiled load client (bench/loadclient.c, `--mode storm`) does the wallet side.
Results go to the terminal and to bench/results/REPORT.md (section ``storm``).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import orjson

from bench import report
from bench.test_fanout_bench import SERVERS, Server, loadclient, start_timefast  # noqa: F401

# STORM_SIZES=1000 for a quick run.
SIZES = tuple(int(s) for s in os.environ.get("STORM_SIZES", "1000,10000").split(","))
# Payments before the kill, per size: every wallet has something in the window.
PRE = {n: max(n, 3000) for n in SIZES}
LIVE, RATE, INFLIGHT = 400, 200.0, 4
# Wallets that go away before the payments and come back in the storm: they replay
# what they missed (the others only what was in flight at the kill).
OFFLINE = 0.5


def _raise_nofile() -> None:
    """As many descriptors as this process may have (the clients inherit them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _storm_client(client: Path, server: Server, conns: int, pre: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(client), "--mode", "storm", "--ws-port", str(server.ws_port),
         "--rpc-port", str(server.rpc_port), "--conns", str(conns), "--events", str(pre),
         "--live", str(LIVE), "--rate", str(RATE), "--inflight", str(INFLIGHT),
         "--offline", str(OFFLINE if pre else 0), "--timeout", "240"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def connect_only(client: Path, server: Server, conns: int) -> float:
    """Seconds for ``conns`` wallets to connect, subscribe and be confirmed."""
    proc = _storm_client(client, server, conns, 0)
    out, _ = proc.communicate(timeout=240)
    r = orjson.loads(out.splitlines()[0])
    assert r["ready"] == conns, r
    return float(r["connect_s"])


def restart_storm(client: Path, tmp: Path, conns: int) -> dict:
    """One timefast node, ``conns`` wallets, a kill -9 while payments flow, a restart."""
    server = start_timefast(tmp / f"storm{conns}")
    try:
        proc = _storm_client(client, server, conns, PRE[conns])
        assert proc.stdout is not None and proc.stdin is not None
        ready = orjson.loads(proc.stdout.readline())
        assert ready["ready"] == conns, ready
        kill = orjson.loads(proc.stdout.readline())
        assert kill["kill"], kill
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        t0 = time.monotonic()
        server = Server(server.name, server.argv, server.env, server.ws_port, server.rpc_port)
        startup = time.monotonic() - t0
        proc.stdin.write("go\n")
        proc.stdin.flush()
        r = orjson.loads(proc.stdout.readline())
        assert proc.wait(60) == 0
        r["connect_s"] = ready["connect_s"]
        r["node_start_s"] = startup
        return r
    finally:
        server.stop()


def write_report(connect: dict[int, dict[str, float]], storms: dict[int, dict]) -> None:
    names = list(next(iter(connect.values())))
    lines = ["## Reconnect storms", "",
             f"{report.stamp()} One run, the same compiled load client "
             "(`loadclient --mode storm`) for every server.", "",
             "Wallets connecting at once: each opens a WebSocket, sends `Subscribe` for its "
             "own address and waits for `Subscribed` (seconds until the last is confirmed; "
             "lower is better).", "",
             "| wallets | " + " | ".join(names) + " | timefast speed vs Node ws |",
             "|---:|" + "---:|" * (len(names) + 1)]
    for n, per in connect.items():
        ratio = per.get("node ws", 0) / per["timefast"] if per.get("timefast") else 0
        lines.append(f"| {n:,} | " + " | ".join(f"{per[k]:.2f} s" for k in names)
                     + f" | {ratio:.2f}x |")
    lines += ["", f"Restart storm: {OFFLINE:.0%} of the wallets go away; payments flow to "
              "every wallet's address; the node is killed (kill -9) while they flow "
              f"({INFLIGHT} in flight), started again on its data directory, and every "
              "wallet reconnects at once with `since_seq` = the last `seq` it saw, while "
              f"{LIVE} more payments are made at {RATE:.0f}/s. Times are from the restarted "
              "node answering RPC; caught up = it holds every event of every payment "
              "answered before the kill.", "",
             "| wallets | payments before | node start | last resumed | last caught up | "
             "events replayed | replayed/s | live p50 ms | live p99 ms | missed | "
             "repeated |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in storms.items():
        lines.append(f"| {n:,} | {PRE[n]:,} | {r['node_start_s']:.2f} s | {r['resume_s']:.2f} s"
                     f" | {r['storm_s']:.2f} s | {r['replayed']:,} | "
                     f"{r['replayed_per_s']:,.0f} | {r['live_p50_ms']:.1f} | "
                     f"{r['live_p99_ms']:.1f} | {r['missed']} | {r['repeated']} |")
    report.set_section("storm", "\n".join(lines))


def test_storm(loadclient, tmp_path, benchmark):  # noqa: F811
    _raise_nofile()
    connect: dict[int, dict[str, float]] = {n: {} for n in SIZES}
    for name, start in SERVERS.items():
        server = start(tmp_path / name.replace(" ", "_"))
        if server is None:
            continue
        try:
            for n in SIZES:
                connect[n][name] = connect_only(loadclient, server, n)
                print(f"\nconnect {n:6d} {name:22s} {connect[n][name]:.2f} s", flush=True)
                time.sleep(1.0)  # the server closes the last run's sockets
        finally:
            server.stop()
    storms = {}
    for n in SIZES:
        r = storms[n] = restart_storm(loadclient, tmp_path, n)
        print(f"\nstorm {n:6d}: {r}", flush=True)
        assert r["complete"], r
        assert r["missed"] == 0 and r["repeated"] == 0, r
    benchmark.extra_info.update(connect=connect, storms=storms)
    benchmark.pedantic(lambda: None, rounds=1)
    write_report(connect, storms)
    os.makedirs(report.RESULTS, exist_ok=True)
