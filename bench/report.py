"""bench/results/REPORT.md: one file, one section per benchmark, each rewritten by its run.

A section sits between ``<!-- section: NAME -->`` and ``<!-- end: NAME -->``; a run
replaces its own section and leaves the others as the last runs wrote them.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import orjson

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


def record_tagged(path: str | Path, name: str, value: object) -> None:
    """Keep ``value`` as figure ``name`` in the JSON file ``path``, under the run's
    ``ATTACK_TAG`` (default ``current``), beside what other tags and names hold."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = orjson.loads(path.read_bytes()) if path.exists() else {}
    old.setdefault(os.environ.get("ATTACK_TAG", "current"), {})[name] = value
    path.write_bytes(orjson.dumps(old, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
                                  | orjson.OPT_NON_STR_KEYS))
