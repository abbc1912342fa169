"""The network fault scenarios (tests/faults.py) over many seeds: payments, faults
injected, violations the checker found, time to recover.  FAULT_SEEDS=N seeds each
(default 20); the figures go to bench/results/REPORT.md."""

from __future__ import annotations

import os
import statistics
import time

import pytest

from bench import report
from tests import faults

SEEDS = int(os.environ.get("FAULT_SEEDS", "20"))
SCENARIOS = {
    "kill -9 of any one of four, 10 cycles": lambda root, s: faults.kill_cycles(root, s, 10),
    "partition 2|2, healed": faults.partition_halves,
    "1|3, the next proposer alone": faults.isolated_proposer,
    "paused proposer (SIGSTOP 4-6 s)": faults.paused_proposer,
    "a masternode votes both ways under one batch": faults.votes_both_ways,
    "five masternodes, one down": lambda root, s: faults.network_of(root, s, 5),
    "six masternodes, one down": lambda root, s: faults.network_of(root, s, 6),
    "three masternodes (f = 0)": lambda root, s: faults.network_of(root, s, 3),
    "eight masternodes, two down": lambda root, s: faults.network_of(root, s, 8),
    "nine masternodes, two down": lambda root, s: faults.network_of(root, s, 9),
    "a masternode approves two spends of one coin": faults.conflicting_approvals,
    "a flapping link and a slow lossy one": faults.flapping_link,
    "a child before its parent's votes": faults.child_before_parent,
    "kill -9 at approval (decided, batch unsigned), a vote split":
        lambda root, s: faults.crash_at_vote(root, s, "approval"),
    "kill -9 at batch (written, not committed), a vote split":
        lambda root, s: faults.crash_at_vote(root, s, "batch"),
    "kill -9 at send (committed, not sent), a vote split":
        lambda root, s: faults.crash_at_vote(root, s, "send"),
    "kill -9 at precommit (lock persisted, not sent), a round split":
        faults.crash_at_precommit,
}
RESULTS: dict[str, list[dict]] = {}


@pytest.mark.timeout(SEEDS * 120 + 300)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_scenario_over_seeds(name, tmp_path):
    runs = []
    started = time.monotonic()
    for seed in range(1, SEEDS + 1):
        runs.append(SCENARIOS[name](tmp_path / f"seed{seed}", seed))
        print(f"\n{name} seed {seed}: {runs[-1]}", flush=True)
    RESULTS[name] = runs
    bad = [r for r in runs if r["violations"]]
    rows = []
    for n, rs in RESULTS.items():
        cell = n.replace("|", "\\|")  # a table cell: its own bars escaped
        rows.append(f"| {cell} | {len(rs)} | {sum(r['payments'] for r in rs):,} | "
                    f"{sum(r['conflicts'] for r in rs)} | {sum(r['faults'] for r in rs)} | "
                    f"{sum(len(r['violations']) for r in rs)} | "
                    f"{statistics.median(r['recover_s'] for r in rs):.1f} / "
                    f"{max(r['recover_s'] for r in rs):.1f} |")
    report.set_section("faults", "\n".join([
        "## Network faults", "",
        f"{report.stamp()} Real masternode processes on loopback, every peer link through "
        "a fault proxy (tests/faults.py); after each run the checker looks for double "
        "spends, forks, statuses that went back, events out of order, payments lost or "
        "ending differently, money made or lost. Seeds 1..N; FAULT_SEED=n replays one "
        "in tests/test_faults.py.", "",
        "| scenario | seeds | payments | conflicting pairs | faults | violations | "
        "recovery s (median / max) |", "|---|---:|---:|---:|---:|---:|---:|", *rows]))
    print(f"{name}: {len(runs)} seeds in {time.monotonic() - started:.0f} s")
    assert not bad, bad
