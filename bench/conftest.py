"""Benchmarks: run with `pytest bench/`; numbers go to the terminal and bench/results/."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Node processes find every module's bytecode written (``compile_package``)."""
    from tests.helpers import compile_package
    compile_package()
