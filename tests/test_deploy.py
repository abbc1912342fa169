"""The systemd unit in deploy/ does what the seed shows.

The Dockerfile and docker-compose.yml are tested in tests/test_image.py, by building
and running the image.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_systemd_unit_follows_the_seed():
    unit = (ROOT / "deploy" / "time-masternode.service").read_text()
    for needle in ("Description=TIME Coin Masternode", 'Environment="WS_ADDR=0.0.0.0:8765"',
                   "Restart=always", "RestartSec=10", "WantedBy=multi-user.target"):
        assert needle in unit
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M)
    assert exec_start and exec_start.group(1).endswith("/time-masternode")
