"""The fault bench's forked nodes (tests/forked.py) behave as ``python -m timefast``
does for the harness: each its own process with its own settings, its output read
for the banner, its exit status as ``subprocess`` reports it (``-9`` for kill -9)."""

from __future__ import annotations

import os
import signal

import orjson
import pytest

from tests import helpers
from tests.forked import Forker
from tests.helpers import NodeProcess, rpc


@pytest.fixture
def forker(monkeypatch):
    f = Forker()
    monkeypatch.setattr(helpers, "FORKER", f)
    yield f
    f.close()


def test_forked_nodes_run_apart_with_their_own_settings_and_exit_as_processes(
        forker, tmp_path):
    plain = NodeProcess(tmp_path / "a").start()
    as_json = NodeProcess(tmp_path / "b", LOG_FORMAT="json").start()
    try:
        assert plain.forked and as_json.forked
        assert len({plain.proc.pid, as_json.proc.pid, os.getpid()}) == 3
        for node in (plain, as_json):
            assert rpc(node.rpc_url, "getinfo")["result"]["height"] == 0
        assert as_json.proc.poll() is None
        # Each took its own LOG_FORMAT: the settings of one never leak into another.
        assert "wallets ws://" in plain.log[-1] and not plain.log[-1].startswith("{")
        assert "wallets ws://" in orjson.loads(as_json.log[-1])["msg"]
        as_json.kill()
        assert as_json.proc.wait(10) == -signal.SIGKILL
        assert plain.terminate() == 0  # SIGTERM: a clean stop, status 0
    finally:
        plain.kill()
        as_json.kill()
    assert forker.cpu_seconds() > 0  # the two nodes, reaped by the server, counted


def test_a_forked_node_that_refuses_its_settings_exits_with_its_status(forker, tmp_path):
    node = NodeProcess(tmp_path, TIMEFAST_CRASH_AT="nowhere")
    with pytest.raises(RuntimeError, match="TIMEFAST_CRASH_AT"):
        node.start()
    assert node.proc.wait(10) == 2


def test_a_node_with_a_preloaded_library_is_started_by_exec_not_forked(forker, tmp_path):
    node = NodeProcess(tmp_path, LD_PRELOAD="")
    assert not node.forked
