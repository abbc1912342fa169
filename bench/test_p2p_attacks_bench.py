"""The peer-port attacks of issue 29 at the issue's rates, 40 s each, against four
masternode processes with the attacker's key the fifth of the set
(``tests/siege.py``, ``tests/attacker.py``).

Each attack runs twice, each time on a fresh network set up alike: the attack, then
a control run in which the attacking process burns the CPU seconds the attack took
it, in a busy loop, sending nothing (the attacker shares the machine's cores with the
nodes, so the control says what of the payments' slowdown is the attack and what is
only a busy machine).  Each run times an honest payment every second (submitted at
node 0, until finalized on all four) and reports every node's RSS, CPU seconds and
data-directory growth, and RSS 30 s after the attack; PASS or FAIL against the
issue's done-when thresholds (``tests.siege.verdict``) is printed, never asserted.

Run ``pytest bench/test_p2p_attacks_bench.py -s`` (``-k`` picks attacks); figures go
to the terminal and to bench/results/p2p-attacks.json under ``ATTACK_TAG`` (default
``current``).  To measure other code, put its tree first on PYTHONPATH: the node
processes run whatever ``timefast`` that finds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from bench.report import record_tagged
from tests.siege import Siege, summary, verdict

RESULTS_PATH = os.path.join(os.path.dirname(__file__), "results", "p2p-attacks.json")
DURATION = 40.0
AFTER = 30.0
COINS = 50  # a payment a second for the 40 s, and spare


def _nothing(s: Siege) -> dict[str, Any]:
    return {}


def _pending(total: int) -> Callable[[Siege], dict[str, Any]]:
    def setup(s: Siege) -> dict[str, Any]:
        s.fill_pending(total)
        return {}
    return setup


def _blocks_and_pending(s: Siege) -> dict[str, Any]:
    # GetBlocks from height 1 gets a block of ~340 KB; GetPending ~4.2 MB.
    s.fill_pending(340_000)
    s.generate(1)
    s.fill_pending(4_200_000)
    return {}


def _spent(inputs: int) -> Callable[[Siege], dict[str, Any]]:
    def setup(s: Siege) -> dict[str, Any]:
        return s.confirmed_spend(inputs)
    return setup


# name: (attack, its settings, the nodes' settings, set-up returning more settings)
ATTACKS: dict[str, tuple[str, dict[str, Any], dict[str, Any],
                         Callable[[Siege], dict[str, Any]]]] = {
    "1 impersonation": ("impersonate", {"relay_s": 2.0, "hold_s": 3.0}, {}, _nothing),
    "2a far heights": ("high_height", {"threads": 8}, {}, _nothing),
    "2b unread links": ("unread", {"links": 12, "rate": 20}, {}, _pending(4_200_000)),
    "3 proposal flood": ("proposals", {"rounds": 16, "rate": 2.35, "block_mib": 5.3}, {},
                         _nothing),
    "4 Addr flood": ("addr_flood", {"records": 4096, "listening": 64, "rate": 400}, {},
                     _nothing),
    "5 JSON bomb": ("json_bomb", {"mib_per_s": 25}, {}, _nothing),
    "6 amplification": ("amplify", {"links": 8, "rate": 12, "read_delay": 0.02}, {},
                        _blocks_and_pending),
    "7 re-spends": ("respend", {"rate": 1075}, {}, _spent(1)),
    "7 wide re-spends": ("respend", {"rate": 60}, {}, _spent(250)),
    "8 vote batches of 256": ("votes", {"mode": "wide"}, {}, _nothing),
    "8 batches all numbered 1": ("votes", {"mode": "same_number"}, {}, _nothing),
    "8 one-vote batches": ("votes", {"mode": "single"}, {}, _nothing),
    "9 prevote flood": ("consensus", {"rate": 1200, "rounds": 64}, {"BLOCK_INTERVAL": 1},
                        _nothing),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack(tmp_path, name):
    attack, settings, node_settings, setup = ATTACKS[name]
    with Siege(tmp_path / "attack", coins=COINS, **node_settings) as s:
        fig = s.run(attack, {**settings, **setup(s)}, duration=DURATION, after=AFTER)
    assert "failed" not in fig["attacker"], fig["attacker"]
    with Siege(tmp_path / "control", coins=COINS, **node_settings) as s:
        setup(s)
        control = s.run("burn", {"cpu_s": fig["attacker"]["cpu_s"]}, duration=DURATION,
                        after=AFTER)
    fig["attacker"].pop("ports", None)  # thousands of them: the check is done
    record_tagged(RESULTS_PATH, name, {"attack": fig, "control": control, "verdict": verdict(fig)})
    print("\n" + summary(name, fig, control), flush=True)
