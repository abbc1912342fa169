"""Hooks for the tests and the benchmarks alike."""

from __future__ import annotations

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    """Node processes find every module's bytecode written (``compile_package``)."""
    from tests.helpers import compile_package
    compile_package()
