"""``time-masternode`` / ``python -m timefast``: run the node;
``time-masternode edge``: run an edge (docs/EDGES.md)."""

from __future__ import annotations

import os
import sys

from timefast import crashpoints, logs
from timefast.datadir import DataDirError
from timefast.node import Node, tune_gc
from timefast.settings import SettingsError, load


def main(argv: list[str] | None = None) -> int:
    """Parse settings, run the node (or, with ``edge`` first, an edge) until a
    signal, exit 0."""
    args = sys.argv[1:] if argv is None else argv
    edge = bool(args) and args[0] == "edge"
    try:
        settings = load(args[1:] if edge else args)
        if edge and not (settings.event_bus and settings.node_rpc):
            raise SettingsError("an edge needs EVENT_BUS (the NATS server) and NODE_RPC "
                                "(the masternode's RPC URL)")
        crashpoints.arm(os.environ.get(crashpoints.ENV))
    except (SettingsError, ValueError) as e:
        print(f"time-masternode: {e}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    tune_gc()
    try:
        import uvloop

        if edge:
            from timefast.edge import Edge  # needs nats-py, as EVENT_BUS does
            uvloop.run(Edge(settings).run())
        else:
            uvloop.run(Node(settings).run())
    except DataDirError as e:
        print(f"time-masternode: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"time-masternode: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
