"""The fault-injection hook (timefast/crashpoints.py): a point kills the process the
n-th time it is reached, unset it does nothing, a bad setting stops the node."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from timefast import crashpoints
from timefast.__main__ import main


@pytest.fixture(autouse=True)
def _disarmed():
    yield
    crashpoints.arm(None)


def test_the_point_kills_the_process_the_nth_time_with_sigkill():
    script = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "from timefast import crashpoints as c\n"
        "c.arm('batch:3')\n"
        "for i in range(5):\n"
        "    c.reached('approval')\n"  # another point: never counts
        "    c.reached('batch')\n"
        "    print(i, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["0", "1"]  # the third reach never returned
    assert "crash point batch reached (time 3): SIGKILL" in done.stderr


def test_the_first_time_by_default_and_other_points_never(monkeypatch):
    kills: list[int] = []
    monkeypatch.setattr(crashpoints.os, "kill", lambda pid, sig: kills.append(sig))
    crashpoints.arm("send")
    for point in ("approval", "batch", "precommit"):
        crashpoints.reached(point)
    assert kills == []
    crashpoints.reached("send")
    assert kills == [signal.SIGKILL]


def test_unset_every_point_is_a_no_op(monkeypatch):
    def kill(pid: int, sig: int) -> None:
        raise AssertionError("killed while unset")
    monkeypatch.setattr(crashpoints.os, "kill", kill)
    for spec in (None, ""):
        crashpoints.arm(spec)
        for _ in range(1000):
            for point in crashpoints.POINTS:
                crashpoints.reached(point)
        assert crashpoints._armed is None and crashpoints._count == 0  # nothing counted


@pytest.mark.parametrize("spec", ["bogus", "batch:0", "batch:x", "batch:-1", ":2"])
def test_a_bad_setting_is_refused(spec):
    with pytest.raises(ValueError, match="TIMEFAST_CRASH_AT"):
        crashpoints.arm(spec)


def test_the_node_refuses_to_start_with_a_bad_setting(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv(crashpoints.ENV, "approval:zero")
    assert main([]) == 2
    assert "TIMEFAST_CRASH_AT" in capsys.readouterr().err
