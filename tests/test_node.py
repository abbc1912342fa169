"""The assembled node's own jobs (the rest is covered through its ports)."""

from __future__ import annotations

import logging
import resource
import sys

import pytest

from timefast import node
from timefast.node import malloc_trim

from .helpers import NodeThread


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


def test_open_file_limit_is_raised_at_start_and_a_shortfall_is_warned(tmp_path, caplog):
    # With systemd's soft limit of 1,024, 1,100 connections that never finished a
    # handshake used up every descriptor and the database could not open its files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
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
