"""The assembled node's own jobs (the rest is covered through its ports)."""

from __future__ import annotations

import logging
import os
import resource
import sqlite3
import subprocess
import sys

import pytest

from timefast import node
from timefast.node import malloc_trim

from .helpers import NodeProcess, NodeThread, base_env


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or malloc_trim() is None,
                    reason="needs glibc's malloc_trim")
def test_malloc_trim_hands_scattered_free_memory_back():
    trim = malloc_trim()
    assert trim is not None
    # Event-sized blocks, most freed, a few kept between them: the pattern of the
    # replay window turning over.
    blocks = [bytes(1000 + i % 200) for i in range(200_000)]
    kept = blocks[::20]
    del blocks
    before = _rss_kb()
    trim(0)
    after = _rss_kb()
    assert len(kept) == 10_000
    assert before - after > 50_000, (before, after)  # KiB: most of ~200 MB freed


def _start(data_dir, **settings) -> subprocess.CompletedProcess[str]:
    """``time-masternode`` that is expected to refuse to start."""
    env = {**os.environ, **base_env(data_dir, **settings)}
    return subprocess.run([sys.executable, "-m", "timefast"], env=env, capture_output=True,
                          text=True, timeout=20)


def _refused(p: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2 with one line on stderr that names the problem, and no traceback."""
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


@pytest.mark.parametrize(("setting", "value"), [
    ("MASTERNODE_KEY", "MNxyz"), ("MASTERNODES", "zz"),
    ("MASTERNODES", "ab" * 32 + ",nothex"), ("WS_ADDR", "127.0.0.1:99999"),
])
def test_bad_settings_are_one_line_and_exit_2(tmp_path, setting, value):
    _refused(_start(tmp_path, **{setting: value}), setting)


def test_a_damaged_key_file_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "masternode.key").write_text("MNnonsense\n")
    _refused(_start(tmp_path), "masternode.key")


def test_data_dir_keeps_its_network(tmp_path):
    """A regtest DATA_DIR (faucet coins and all) does not start as mainnet."""
    n = NodeProcess(tmp_path).start()
    assert n.terminate() == 0
    _refused(_start(tmp_path, NETWORK="mainnet", BLOCK_INTERVAL=600), "regtest", "mainnet")
    # A DATA_DIR from before the network was kept: it is taken as the current one's.
    db = sqlite3.connect(tmp_path / "timefast.db")
    with db:
        db.execute("DELETE FROM meta WHERE key='network'")
    db.close()
    n = NodeProcess(tmp_path, NETWORK="regtest").start()
    assert n.terminate() == 0
    _refused(_start(tmp_path, NETWORK="testnet", BLOCK_INTERVAL=600), "regtest", "testnet")


def test_one_node_per_data_dir(tmp_path):
    first = NodeProcess(tmp_path).start()
    try:
        assert first.proc is not None
        _refused(_start(tmp_path), str(tmp_path), f"process {first.proc.pid}")
        assert first.proc.poll() is None  # the first runs on, untouched
    finally:
        assert first.terminate() == 0
    second = NodeProcess(tmp_path).start()  # the lock went with the first
    assert second.terminate() == 0


def _node_under_ulimit(data_dir, soft: int, hard: int, **settings) -> tuple[str, int]:
    """Start a node under ``ulimit -n`` soft/hard; its first log lines and its open-file
    soft limit once it runs."""
    env = {**os.environ, **base_env(data_dir, **settings)}
    p = subprocess.Popen(["sh", "-c", f"ulimit -Sn {soft} && ulimit -Hn {hard} && "
                          f'exec "{sys.executable}" -m timefast'], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if "RPC http://" in line:
                break
        with open(f"/proc/{p.pid}/limits") as f:
            soft_now = next(int(x.split()[3]) for x in f if x.startswith("Max open files"))
    finally:
        p.terminate()
        p.wait(30)
    return "".join(lines), soft_now


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_open_file_limit_is_raised_or_named(tmp_path):
    """One descriptor per connection: the node raises its soft limit as far as the hard
    one lets it for MAX_CONNECTIONS, and says so when that is not enough."""
    log, soft = _node_under_ulimit(tmp_path / "a", 256, 4096, MAX_CONNECTIONS=1000)
    assert soft >= 1000 and "open files" not in log, log
    log, soft = _node_under_ulimit(tmp_path / "b", 256, 512, MAX_CONNECTIONS=1000)
    assert soft == 512
    assert "open files" in log and "MAX_CONNECTIONS" in log and "LimitNOFILE" in log, log


def test_open_file_limit_is_raised_at_start_and_a_shortfall_is_warned(tmp_path, caplog):
    # With systemd's soft limit of 1,024, 1,100 connections that never finished a
    # handshake used up every descriptor and the database could not open its files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Low, but above what this test process already holds (earlier tests' nodes).
    low = min(max(256, len(os.listdir("/proc/self/fd")) + 64), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        with caplog.at_level(logging.WARNING, logger="timefast"):
            n = NodeThread(tmp_path, MAX_CONNECTIONS=10).start()
            n.stop()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        assert "open-file limit" not in caplog.text
        if hard != resource.RLIM_INFINITY:
            need = hard + 1 - node.REFUSED_WAITING - node.FD_RESERVE
            with caplog.at_level(logging.WARNING, logger="timefast"):
                n = NodeThread(tmp_path, MAX_CONNECTIONS=need).start()
                n.stop()
            assert "below the" in caplog.text and "MAX_CONNECTIONS" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
