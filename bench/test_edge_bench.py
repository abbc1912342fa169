"""Fan-out through edges (SPEC 8, docs/EDGES.md): wallets on `time-masternode edge`
processes fed by NATS JetStream, against the masternode serving them itself.

One run, the same compiled load client (bench/loadclient.c) and the same events
(blocks made through the masternode's RPC): wallets connect to the masternode
(without and with EVENT_BUS), to one edge, then to two edges sharing one port
(SO_REUSEPORT: the kernel spreads the connections).  Results go to the terminal and
to bench/results/REPORT.md (section ``edges``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import orjson

from bench import report
from bench.test_fanout_bench import Server, _free_port, loadclient, run_client, start_timefast
from tests.helpers import NatsServer, wait_for

__all__ = ["loadclient"]

# (name, clients, events, in flight): NewBlock to every wallet.
SCENARIOS = [
    ("broadcast 1k x16", 1000, 600, 16),
    ("broadcast 5k x16", 5000, 160, 16),
]
TARGET = 0.8  # one edge against the masternode serving its wallets itself


class Edges:
    """``count`` edges on one port, fed by ``bus``, answering through ``node``'s RPC;
    looks to the load client like one server (wallets here, triggers at the node)."""

    def __init__(self, node: Server, bus: str, count: int) -> None:
        self.name = f"{count} edge{'s' if count > 1 else ''}"
        self.node = node
        self.ws_port, self.rpc_port = _free_port(), node.rpc_port
        env = {**os.environ, "WS_ADDR": f"127.0.0.1:{self.ws_port}", "EVENT_BUS": bus,
               "NODE_RPC": f"http://127.0.0.1:{node.rpc_port}/",
               "MAX_CONNECTIONS_PER_IP": "0", "MAX_CONNECTIONS": "20000",
               "LOG_LEVEL": "WARNING", "HEARTBEAT_INTERVAL": "600"}
        self.procs = [subprocess.Popen([sys.executable, "-m", "timefast", "edge"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for _ in range(count)]
        # Ready when the port answers and the edges have the node's last event.
        want = node.rpc("getinfo")["seq"]  # type: ignore[index]
        wait_for(lambda: all(self._seq() >= want for _ in range(4 * count)), 30,
                 "the edges started")

    def _seq(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ws_port}/metrics",
                                    timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("timefast_event_seq "):
                    return int(line.split()[1])
        return -1

    def rpc(self, method: str, *params: object) -> object:
        return self.node.rpc(method, *params)

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs:
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_edge_fanout(loadclient, tmp_path, benchmark):
    results: dict[str, dict[str, dict]] = {s[0]: {} for s in SCENARIOS}

    def measure(label: str, server: object) -> None:
        for scen, clients, events, flight in SCENARIOS:
            r = run_client(loadclient, server, "broadcast", clients, 1, events,  # type: ignore[arg-type]
                           flight)
            assert r["complete"], (label, scen, r)
            results[scen][label] = r
            print(f"\n{scen:18s} {label:28s} {r['msgs_per_s']:>12,.0f} msg/s "
                  f"p50 {r['p50_ms']:7.1f} ms p99 {r['p99_ms']:7.1f} ms "
                  f"server cpu {r['server_cpu_timed_s']:.2f}s of {r['seconds']:.2f}s",
                  flush=True)

    plain = start_timefast(tmp_path / "plain")
    try:
        measure("masternode", plain)
    finally:
        plain.stop()
    bus = NatsServer(tmp_path / "nats").start()
    node = start_timefast(tmp_path / "bus", EVENT_BUS=bus.url)
    try:
        measure("masternode with EVENT_BUS", node)
        for count in (1, 2):
            edges = Edges(node, bus.url, count)
            try:
                measure(edges.name, edges)
            finally:
                edges.stop()
    finally:
        node.stop()
        bus.stop()
    benchmark.extra_info.update(results=results)
    benchmark.pedantic(lambda: None, rounds=1)
    write_report(results)


def write_report(results: dict[str, dict[str, dict]]) -> None:
    report.RESULTS.mkdir(exist_ok=True)
    (report.RESULTS / "edges.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    lines = ["## Fan-out through edges", "",
             f"{report.stamp()} One run; the machine is shared with other work, so the "
             "figures move from run to run: compare rows of one run.  Every process here "
             "(load client, masternode, nats-server, edges) shares those cores.", "",
             "Wallets get NewBlock for each block made through the masternode's RPC: on "
             "the masternode itself (without, then with EVENT_BUS), on one edge, and on "
             "two edges sharing one port (SO_REUSEPORT).  Delivered messages per second, "
             "latency from trigger to receipt (through NATS for the edges), and the CPU "
             "of the processes serving the wallets over the timed part (the edges' "
             "summed).", "",
             "| scenario | wallets served by | msgs/s | p50 ms | p99 ms | serving CPU |"
             " vs the masternode |", "|---|---|---:|---:|---:|---:|---:|"]
    for scen, per in results.items():
        base = per.get("masternode with EVENT_BUS", {}).get("msgs_per_s") or 0
        for label, r in per.items():
            ratio = f"{r['msgs_per_s'] / base:.2f}x" if base and label.endswith(
                ("edge", "edges")) else "-"
            secs = r["seconds"] or 1.0
            lines.append(f"| {scen} | {label} | {r['msgs_per_s']:,.0f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['server_cpu_timed_s'] / secs:.0%} | "
                         f"{ratio} |")
    lines += ["", f"Target: one edge at least {TARGET:.1f}x the masternode serving its "
              "wallets itself (with EVENT_BUS, the same events).  Latency through an edge "
              "is higher: the masternode answers a trigger before any edge has the event, "
              "so with 16 in flight the triggers run ahead of the edges' delivery and the "
              "queue between them is counted in (a masternode serving its wallets itself "
              "answers triggers on the loop that writes to them, which paces them).  "
              "Two edges on this machine compete for its two cores with the masternode, "
              "nats-server and the load client; the scaling "
              "from 1 to 8 edges needs a machine with more cores than this one (not "
              "measured yet)."]
    report.set_section("edges", "\n".join(lines))

