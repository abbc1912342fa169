"""The network fault scenarios (tests/faults.py) over many seeds: payments, faults
injected, violations the checker found, time to recover.  FAULT_SEEDS=N seeds each
(default 20), FAULT_JOBS runs of four masternodes side by side (default 4: a run
mostly waits, on timeouts and blocks; a network of n nodes counts n/4 runs); the
figures go to bench/results/REPORT.md."""

from __future__ import annotations

import os
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench import report
from tests import faults

SEEDS = int(os.environ.get("FAULT_SEEDS", "20"))
JOBS = int(os.environ.get("FAULT_JOBS", "4"))
SCENARIOS = {
    "kill -9 of any one of four, 50 cycles": lambda root, s: faults.kill_cycles(root, s, 50),
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
    "a lying proposer (two blocks a round, votes for both, replays, garbage), one of four":
        faults.lying_proposers,
    "two lying proposers of seven": lambda root, s: faults.lying_proposers(root, s, 7, 2),
    "a block re-proposed in a later round by another proposer": faults.reproposed_block,
    "a lying catch-up peer (withheld blocks, forged commits, a far Status)":
        faults.catchup_liar,
    "a co-signer double-spends his input of a shared payment":
        faults.co_signer_double_spend,
    # +29 and +31 hold the network ~30 s each run (SPEC 7.5 starts a height an interval
    # after the last block's timestamp, the skewed proposer's): ~45 s a seed.
    **{f"one of four with its clock {skew:+d} s off":
       lambda root, s, skew=skew: faults.clock_skew(root, s, skew)
       for skew in (29, -29, 31, 32, -31)},
    "kill -9 at approval (decided, batch unsigned), a vote split":
        lambda root, s: faults.crash_at_vote(root, s, "approval"),
    "kill -9 at batch (written, not committed), a vote split":
        lambda root, s: faults.crash_at_vote(root, s, "batch"),
    "kill -9 at send (committed, not sent), a vote split":
        lambda root, s: faults.crash_at_vote(root, s, "send"),
    "kill -9 at precommit (lock persisted, not sent), a round split":
        faults.crash_at_precommit,
}
# Masternodes per scenario where not four: how many runs fit side by side.
NODES = {"five masternodes, one down": 5, "six masternodes, one down": 6,
         "eight masternodes, two down": 8, "nine masternodes, two down": 9,
         "two lying proposers of seven": 7}
# Runs that spend most of their time waiting (a height held ~30 s by a clock ahead):
# three times as many side by side.
WAITING = {f"one of four with its clock {skew:+d} s off" for skew in (29, 31)}
RESULTS: dict[str, list[dict]] = {}


def _cpu_seconds() -> float:
    """CPU time of this process and of every node process it has waited for."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))


CPU_AT_START = _cpu_seconds()
SECONDS: dict[str, float] = {}


@pytest.mark.timeout(SEEDS * 120 + 300)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_scenario_over_seeds(name, tmp_path):
    started = time.monotonic()

    def one(seed: int) -> dict:
        try:
            r = SCENARIOS[name](tmp_path / f"seed{seed}", seed)
        except Exception as e:  # a scenario's own check failed: it counts, the rest run
            r = {"seed": seed, "payments": 0, "conflicts": 0, "faults": 0,
                 "violations": [f"raised {e!r}"], "recover_s": 0.0}
        print(f"\n{name} seed {seed}: {r}", flush=True)
        return r
    jobs = max(1, JOBS * 4 // NODES.get(name, 4)) * (3 if name in WAITING else 1)
    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(one, range(1, SEEDS + 1)))
    elapsed = time.monotonic() - started
    RESULTS[name] = runs
    SECONDS[name] = elapsed
    bad = [r for r in runs if r["violations"]]
    rows = []
    for n, rs in RESULTS.items():
        cell = n.replace("|", "\\|")  # a table cell: its own bars escaped
        rows.append(f"| {cell} | {len(rs)} | {sum(r['payments'] for r in rs):,} | "
                    f"{sum(r['conflicts'] for r in rs)} | {sum(r['faults'] for r in rs)} | "
                    f"{sum(len(r['violations']) for r in rs)} | "
                    f"{statistics.median(r['recover_s'] for r in rs):.1f} / "
                    f"{max(r['recover_s'] for r in rs):.1f} | {SECONDS[n]:.0f} |")
    cpu = _cpu_seconds() - CPU_AT_START
    report.set_section("faults", "\n".join([
        "## Network faults", "",
        f"{report.stamp()} Real masternode processes on loopback, every peer link through "
        "a fault proxy (tests/faults.py); after each run the checker looks for double "
        "spends, forks, statuses that went back, events out of order, payments lost or "
        "ending differently, money made or lost. Seeds 1..N; FAULT_SEED=n replays one "
        f"in tests/test_faults.py. Up to {JOBS} runs of four masternodes side by side "
        f"(FAULT_JOBS); all scenarios took {sum(SECONDS.values()) / 60:.1f} min, and "
        f"{cpu / 60:.1f} CPU-minutes, which {os.cpu_count()} cores cannot do in less than "
        f"{cpu / 60 / (os.cpu_count() or 1):.1f} min.", "",
        "| scenario | seeds | payments | conflicting pairs | faults | violations | "
        "recovery s (median / max) | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows]))
    print(f"{name}: {len(runs)} seeds in {time.monotonic() - started:.0f} s")
    assert not bad, bad
