"""``time-masternode`` / ``python -m timefast``: run the node."""

from __future__ import annotations

import sys

from timefast import logs
from timefast.datadir import DataDirError
from timefast.node import Node
from timefast.settings import SettingsError, load


def main(argv: list[str] | None = None) -> int:
    """Parse settings, run the node until a signal, exit 0."""
    try:
        settings = load(sys.argv[1:] if argv is None else argv)
    except SettingsError as e:
        print(f"time-masternode: {e}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    try:
        import uvloop

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
