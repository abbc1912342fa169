"""Shared fixtures: the compiled core and its plain-Python model side by side."""

from __future__ import annotations

import pytest

from tests import core_model
from timefast import _core

IMPLEMENTATIONS = {"compiled": _core, "model": core_model}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def impl(request):
    """Run a test once against the compiled core and once against the model."""
    return IMPLEMENTATIONS[request.param]
