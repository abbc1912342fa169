"""The house rules of the layout, read from the modules' own imports."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "timefast"
LEDGER = ("ledger", "rules", "journal", "tables", "storage", "transaction", "crypto",
          "errors")
PORTS = ("server", "session", "rpc")
IO = ("asyncio", "socket", "ssl", "websockets", "uvloop")


def imports(module: str) -> set[str]:
    """Every module ``timefast/<module>.py`` imports, by its full name."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_the_ledger_never_imports_io_or_the_ports():
    for module in LEDGER:
        bad = {name for name in imports(module)
               if name.split(".")[0] in IO
               or any(name == f"timefast.{p}" or name.startswith(f"timefast.{p}.")
                      for p in (*PORTS, "node", "commits"))}
        assert not bad, f"timefast/{module}.py imports {sorted(bad)}"


def test_the_ledger_takes_only_the_wire_formats_from_the_peers():
    # The rules check signed vote batches and commits in the peers' own layouts
    # (timefast.wire, sans-I/O); links, relay and sync stay above the ledger, which they
    # call: importing them from here would make a cycle.
    for module in LEDGER:
        bad = {name for name in imports(module)
               if name.startswith("timefast.p2p") and name != "timefast.p2p"
               and not name.startswith("timefast.wire")}
        assert not bad, f"timefast/{module}.py imports {sorted(bad)}"
    wire = imports("wire")
    assert not {n for n in wire if n.startswith(("timefast.ledger", "timefast.rules"))}


def test_the_ports_never_import_storage():
    for module in PORTS:
        bad = {n for n in imports(module) if n.startswith("timefast.storage")
               or n.startswith("timefast.tables")}
        assert not bad, f"timefast/{module}.py imports {sorted(bad)}"


def test_no_import_cycle_in_the_package():
    names = [p.stem for p in PACKAGE.glob("*.py")]
    graph = {m: {n.split(".")[1] for n in imports(m)
                 if n.startswith("timefast.") and n.split(".")[1] in names} for m in names}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(graph[m] - {m}):
            assert seen.get(n) != 1, f"import cycle: {' -> '.join([*path, m, n])}"
            if n not in seen:
                visit(n, [*path, m])
        seen[m] = 2

    for m in sorted(names):
        if m not in seen:
            visit(m, [])


def test_the_peer_layer_never_imports_storage_or_the_wallet_ports_and_has_no_cycle():
    # The switch and the reactors reach the database only through the ledger's
    # contract (and its privval): SQL stays below the ledger.
    p2p = PACKAGE / "p2p"
    names = [p.stem for p in p2p.glob("*.py") if p.stem != "__init__"]
    graph: dict[str, set[str]] = {}
    for module in names:
        found = imports(f"p2p/{module}")
        bad = {n for n in found if n.startswith(("timefast.storage", "timefast.tables"))
               or any(n == f"timefast.{p}" or n.startswith(f"timefast.{p}.") for p in PORTS)}
        assert not bad, f"timefast/p2p/{module}.py imports {sorted(bad)}"
        graph[module] = {n.split(".")[2] for n in found
                         if n.startswith("timefast.p2p.") and n.split(".")[2] in names}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, f"import cycle: {' -> '.join([*path, m])}"
        for n in sorted(graph[m] - {m}):
            if n not in done:
                visit(n, [*path, m])
        done.add(m)

    for m in sorted(names):
        visit(m, [])
