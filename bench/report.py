"""bench/results/REPORT.md: one file, one section per benchmark, each rewritten by its run.

A section sits between ``<!-- section: NAME -->`` and ``<!-- end: NAME -->``; a run
replaces its own section and leaves the others as the last runs wrote them.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = RESULTS / "REPORT.md"
TITLE = "# Benchmark report\n"
ORDER = ("fanout", "ledger")  # sections in this order, others after


def stamp() -> str:
    """When and where a section was measured."""
    return (f"Measured by `pytest bench/` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            f", {os.cpu_count()} cores.")


def set_section(name: str, markdown: str) -> None:
    """Replace (or add) section ``name`` of the report with ``markdown``."""
    RESULTS.mkdir(exist_ok=True)
    text = REPORT.read_text() if REPORT.exists() else TITLE
    sections = dict(re.findall(r"<!-- section: (\w+) -->\n(.*?)<!-- end: \1 -->\n", text,
                               flags=re.S))
    sections[name] = markdown.rstrip("\n") + "\n"
    names = [n for n in ORDER if n in sections] + sorted(set(sections) - set(ORDER))
    out = [TITLE]
    for n in names:
        out.append(f"\n<!-- section: {n} -->\n{sections[n]}<!-- end: {n} -->\n")
    REPORT.write_text("".join(out))
