"""The house rules of the layout, read from the modules' own code (docs/house.json
draws the same parts)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "timefast"
BASE = ("rules", "journal", "tables", "storage", "transaction", "crypto", "errors")
PORTS = ("server", "session", "rpc", "page", "source")
IO = ("asyncio", "socket", "ssl", "websockets", "uvloop")
# The parts whose modules must each be readable in one sitting.
SMALL_PARTS = ("ledger", "p2p")
MAX_LINES = 600
MAX_METHODS = 25


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name below ``timefast``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts) or "__init__"] = path
    return out


MODULES = modules()
LEDGER = tuple(m for m in MODULES if m == "ledger" or m.startswith("ledger."))
PEERS = tuple(m for m in MODULES if m == "p2p" or m.startswith("p2p."))


def imports(module: str) -> set[str]:
    """Every module ``timefast.<module>`` imports, by its full name."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _under(name: str, *parts: str) -> bool:
    return any(name == f"timefast.{p}" or name.startswith(f"timefast.{p}.") for p in parts)


def test_the_ledger_never_imports_io_the_ports_or_the_peers():
    for module in (*LEDGER, *BASE):
        bad = {name for name in imports(module)
               if name.split(".")[0] in IO or _under(name, *PORTS, "node", "commits", "p2p")}
        assert not bad, f"timefast.{module} imports {sorted(bad)}"


def test_the_wire_formats_and_the_consensus_machine_are_sans_io():
    for module in ("wire", "consensus", "p2p.link", "p2p.seal", "p2p.relay", "p2p.addrbook",
                   "p2p.budgets", "p2p.scores"):
        bad = {n for n in imports(module) if n.split(".")[0] in IO}
        assert not bad, f"timefast.{module} imports {sorted(bad)}"
    assert not {n for n in imports("wire") if _under(n, "ledger", "rules")}


def test_the_peers_never_import_storage_or_the_wallet_ports():
    for module in PEERS:
        bad = {n for n in imports(module) if _under(n, "storage", "tables", *PORTS)}
        assert not bad, f"timefast.{module} imports {sorted(bad)}"


def test_the_ports_never_import_storage():
    for module in PORTS:
        bad = {n for n in imports(module) if _under(n, "storage", "tables")}
        assert not bad, f"timefast.{module} imports {sorted(bad)}"


def test_no_import_cycle_in_the_package():
    def target(name: str) -> str | None:
        # ``from timefast.ledger import work`` names a module; ``... import Ledger``
        # names its package.
        while name.startswith("timefast."):
            short = name[len("timefast."):]
            if short in MODULES:
                return short
            name = name.rpartition(".")[0]
        return None

    graph = {m: {t for n in imports(m) if (t := target(n)) is not None} for m in MODULES}
    # A module imports its own package's __init__ to reach its siblings: that edge is
    # Python's import machinery, not a dependency.
    for m, deps in graph.items():
        deps.discard(m)
        for parent in (m.rpartition(".")[0],):
            if parent and not m.endswith("__init__"):
                deps.discard(parent)
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(graph[m]):
            assert seen.get(n) != 1, f"import cycle: {' -> '.join([*path, m, n])}"
            if n not in seen:
                visit(n, [*path, m])
        seen[m] = 2

    for m in sorted(MODULES):
        if m not in seen:
            visit(m, [])


def test_each_module_of_the_ledger_and_the_peers_reads_in_one_sitting():
    for module in (*LEDGER, *PEERS):
        text = MODULES[module].read_text()
        assert text.count("\n") <= MAX_LINES, f"timefast.{module} is over {MAX_LINES} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                n = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef)
                        for b in node.body)
                assert n <= MAX_METHODS, f"{module}.{node.name} has {n} methods"


SQL = re.compile(r"^\s*(SELECT\s.*\sFROM\s|INSERT\s(OR\s\w+\s)?INTO\s|UPDATE\s\w+\sSET\s"
                 r"|DELETE\sFROM\s|(CREATE|DROP|ALTER)\s(TABLE|INDEX)\s)", re.S)


def test_sql_is_written_in_the_tables_module_only():
    # storage.py holds the schema machinery and the pragmas.
    for module, path in MODULES.items():
        if module in ("tables", "storage"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL.match(node.value), f"SQL in timefast.{module}: {node.value!r}"


def test_no_module_reads_another_objects_private_attributes():
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        # A library's private module named in an import (``nacl._sodium``) is that
        # library's business, not an object's state.
        imported = {a.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for a in node.names}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                continue
            owner = node.value
            # self._x and cls._x are the object's own.
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls", *imported):
                continue
            raise AssertionError(f"timefast.{module} line {node.lineno} reads "
                                 f"{ast.unparse(node)}")
