"""Shared fixtures: the compiled core and its plain-Python model side by side, and
four-masternode networks."""

from __future__ import annotations

import pytest

from tests import core_model
from tests.p2p_net import four_network
from timefast import _core

IMPLEMENTATIONS = {"compiled": _core, "model": core_model}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def impl(request):
    """Run a test once against the compiled core and once against the model."""
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def four(tmp_path):
    """Four masternodes started and linked, closed after the test."""
    yield from four_network(tmp_path)


@pytest.fixture
def four_generating(tmp_path):
    """Four masternodes for tests that ``generate`` blocks."""
    # generate(k) gives up after FINALITY_TIMEOUT x k: a round of a dead proposer
    # costs TIMEOUT_PROPOSE (3 s), more than the harness's 2 s a block.
    yield from four_network(tmp_path, FINALITY_TIMEOUT=10)
