"""The assembled node's own jobs (the rest is covered through its ports)."""

from __future__ import annotations

import sys

import pytest

from timefast.node import malloc_trim


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
