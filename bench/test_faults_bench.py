"""The network fault scenarios (tests/faults.py) over many seeds: payments, faults
injected, violations the checker found, time to recover.  FAULT_SEEDS=N seeds each
(default 20).  Every run of every scenario goes into one queue, longest first, and
runs start while their masternodes fit in FAULT_JOBS x 4 (default 20: a run mostly
waits, on timeouts and blocks), a smaller one passing a bigger one that does not fit
yet; the runs that hold a height ~30 s run beside them in lanes of their own.  So
the two cores stay busy to the end.  Node processes are forked from one interpreter
that imported the node (tests/forked.py; FAULT_FORK=0 runs ``python -m timefast``
for each, as tests/test_faults.py does).  The figures go to
bench/results/REPORT.md."""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time

import pytest

from bench import report
from tests import faults

SEEDS = int(os.environ.get("FAULT_SEEDS", "20"))
JOBS = int(os.environ.get("FAULT_JOBS", "5"))
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
# Where a run keeps more of a core busy than its masternodes say: a kill-cycle run,
# restarting a node every ~0.7 s, about two thirds of a core alone, twice a
# four-node run's third.
UNITS = {"kill -9 of any one of four, 50 cycles": 8}
# Runs that spend most of their time waiting (a height held ~30 s by a clock ahead):
# they run in lanes of their own, WAIT_LANES at once, beside the rest.
WAITING = {f"one of four with its clock {skew:+d} s off" for skew in (29, 31)}
WAIT_LANES = 6
# How long smaller runs may pass a bigger one that does not fit yet.
PASS_S = 20.0
# Seconds one run took in the last 20-seed run, where over ~10 s: the queue starts
# the longest first, so that the last runs to finish are short ones.
LONG = {"kill -9 of any one of four, 50 cycles": 50,
        "a lying catch-up peer (withheld blocks, forged commits, a far Status)": 18,
        "partition 2|2, healed": 12,
        **{f"one of four with its clock {skew:+d} s off": 60 for skew in (29, 31)},
        **{f"one of four with its clock {skew:+d} s off": 12 for skew in (32, -29, -31)}}
FORK = os.environ.get("FAULT_FORK", "1") != "0"


def _cpu_seconds(forker) -> float:
    """CPU time of this process, of every node process it has waited for, and of the
    fork server with the nodes it forked and reaped."""
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                               resource.getrusage(resource.RUSAGE_CHILDREN)))
    return own + (forker.cpu_seconds() if forker else 0.0)


def _cost(name: str) -> float:
    """How much a run takes: of FAULT_JOBS x 4, its masternodes or its UNITS (at most
    all of them); of the lanes for runs that mostly wait, one."""
    if name in WAITING:
        return 1.0
    return float(min(UNITS.get(name, NODES.get(name, 4)), JOBS * 4))


def _run_all(names: list[str], root) -> dict:
    """Every seed of every scenario in ``names``, side by side while they fit; each
    run's figures and seconds, the wall and CPU seconds of them all."""
    from tests import helpers
    forker = None
    if FORK:
        from tests.forked import Forker
        forker = helpers.FORKER = Forker()
    cpu0, t0 = _cpu_seconds(forker), time.monotonic()
    queue = sorted(((n, s) for n in names for s in range(1, SEEDS + 1)),
                   key=lambda x: -LONG.get(x[0], 10))
    waiting = [q for q in queue if q[0] in WAITING]
    busy = [q for q in queue if q[0] not in WAITING]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    free = {"units": float(JOBS * 4), "lanes": WAIT_LANES}
    cond = threading.Condition()

    def one(name: str, seed: int) -> None:
        started = time.monotonic()
        try:
            r = SCENARIOS[name](root / f"{names.index(name)}-seed{seed}", seed)
        except Exception as e:  # a scenario's own check failed: it counts, the rest run
            r = {"seed": seed, "payments": 0, "conflicts": 0, "faults": 0,
                 "violations": [f"raised {e!r}"], "recover_s": 0.0}
        r["run_s"] = round(time.monotonic() - started, 1)
        print(f"\n{name} seed {seed}: {r}", flush=True)
        with cond:
            runs[name].append(r)
            free["lanes" if name in WAITING else "units"] += _cost(name)
            cond.notify_all()

    head_blocked: list[float | None] = [None]

    def pick() -> tuple[str, int] | None:
        """The next run to start: a waiting one while a lane is free, else the first
        queued one whose masternodes fit.  A smaller one may pass a bigger one for
        PASS_S seconds; then none does until the bigger one fits (without that, the
        nine-node runs found room only at the very end, one at a time)."""
        if waiting and free["lanes"] >= 1:
            free["lanes"] -= 1
            return waiting.pop(0)
        if busy and _cost(busy[0][0]) > free["units"]:
            head_blocked[0] = head_blocked[0] or time.monotonic()
            if time.monotonic() - head_blocked[0] > PASS_S:
                return None
        for k, (name, _) in enumerate(busy):
            if _cost(name) <= free["units"]:
                free["units"] -= _cost(name)
                if k == 0:
                    head_blocked[0] = None
                return busy.pop(k)
        return None

    threads = []
    try:
        with cond:
            while waiting or busy:
                run = pick()
                if run is None:
                    cond.wait()
                    continue
                t = threading.Thread(target=one, args=run, daemon=True)
                t.start()
                threads.append(t)
        for t in threads:
            t.join()
        return {"runs": runs, "wall": time.monotonic() - t0,
                "cpu": _cpu_seconds(forker) - cpu0}
    finally:
        helpers.FORKER = None
        if forker:
            forker.close()


@pytest.fixture(scope="module")
def all_runs(request, tmp_path_factory):
    """The runs of every scenario selected in this session, done once, together."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_fault_scenario_over_seeds"]
    return _run_all(list(dict.fromkeys(names)), tmp_path_factory.mktemp("faults"))


@pytest.mark.timeout(SEEDS * 150 + 900)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_scenario_over_seeds(name, all_runs):
    results = all_runs["runs"]
    runs = sorted(results[name], key=lambda r: r["seed"])
    bad = [r for r in runs if r["violations"]]
    rows = []
    for n, rs in results.items():
        cell = n.replace("|", "\\|")  # a table cell: its own bars escaped
        rows.append(f"| {cell} | {len(rs)} | {sum(r['payments'] for r in rs):,} | "
                    f"{sum(r['conflicts'] for r in rs)} | {sum(r['faults'] for r in rs)} | "
                    f"{sum(len(r['violations']) for r in rs)} | "
                    f"{statistics.median(r['recover_s'] for r in rs):.1f} / "
                    f"{max(r['recover_s'] for r in rs):.1f} | "
                    f"{statistics.median(r['run_s'] for r in rs):.0f} / "
                    f"{max(r['run_s'] for r in rs):.0f} |")
    wall, cpu = all_runs["wall"], all_runs["cpu"]
    cores = os.cpu_count() or 1
    report.set_section("faults", "\n".join([
        "## Network faults", "",
        f"{report.stamp()} Real masternode processes on loopback, every peer link through "
        "a fault proxy (tests/faults.py); after each run the checker looks for double "
        "spends, forks, statuses that went back, events out of order, payments lost or "
        "ending differently, money made or lost. Seeds 1..N; FAULT_SEED=n replays one "
        f"in tests/test_faults.py. {SEEDS} seeds of {len(results)} scenarios, "
        f"{sum(map(len, results.values()))} runs, side by side while their masternodes "
        f"fit in {JOBS * 4} (FAULT_JOBS={JOBS}), the {len(WAITING)} scenarios that hold "
        f"a height ~30 s in {WAIT_LANES} lanes of their own; nodes "
        + ("forked from one interpreter that imported the node (FAULT_FORK=1). "
           if FORK else "started by `python -m timefast` each (FAULT_FORK=0). ")
        + f"All runs took {wall / 60:.1f} min and {cpu / 60:.1f} CPU-minutes, which "
        f"{cores} cores cannot do in less than {cpu / 60 / cores:.1f} min.", "",
        "| scenario | seeds | payments | conflicting pairs | faults | violations | "
        "recovery s (median / max) | run s (median / max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|", *rows]))
    print(f"{name}: {len(runs)} seeds")
    assert len(runs) == SEEDS
    assert not bad, bad
