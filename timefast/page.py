"""The live page on the wallet port: ``GET /status`` (SPEC 3.7) and the page's files.

The page (``timefast/static/``) is plain HTML, CSS and an ES module built on the
JavaScript wallet client (``/client.js``: ``static/client.js`` is a symbolic link to
``clients/js/timefast-client.js``, so git holds the client once, and building the
wheel copies its contents into the package): it is served as stored, with no CDN and
no build step at run time.  ``GET /`` is the page
only for a request that accepts HTML and is not a WebSocket upgrade, so wallets keep
connecting to ``/``.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

from websockets.datastructures import Headers

from timefast.ledger import Ledger

MAX_LISTED = 100  # pending (and finalized, unconfirmed) transactions listed by /status
# With one masternode no round is ever run between blocks: the node waits for
# BLOCK_INTERVAL (or a regtest ``generate``) to make the next height's block.
SINGLE_NODE_STEP = "NewHeight"

ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/client.js": ("client.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def status(ledger: Ledger, now: float | None = None,
           peers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What ``GET /status`` answers: the chain, peers, transactions in flight, consensus.

    ``pending`` lists transactions awaiting quorum with their tallies (``votes`` for,
    ``against``), ``unconfirmed`` those finalized and awaiting a block; each at most
    ``MAX_LISTED``, oldest first, with the full counts beside them; ``peers`` as
    ``getpeerinfo`` shows them.
    """
    pending, unconfirmed = ledger.reads.in_flight(MAX_LISTED, now)
    counts = ledger.reads.counts()
    return {
        "network": ledger.network, "node": ledger.public_key, "address": ledger.address,
        "height": ledger.height, "tip": ledger.tip, "tip_timestamp": ledger.tip_timestamp,
        "seq": ledger.seq,
        "peers": peers or [],
        "masternodes": len(ledger.masternodes), "quorum": ledger.quorum,
        "pending": pending, "pending_count": counts["pending"],
        "unconfirmed": unconfirmed, "unconfirmed_count": counts["unconfirmed"],
        "consensus": {"height": ledger.height + 1, "round": 0, "step": SINGLE_NODE_STEP},
    }


def asset(path: str, headers: Headers) -> tuple[bytes, str] | None:
    """``(body, content type)`` of the page file at ``path``, or None.

    ``/`` is the page only when the request accepts HTML and is no WebSocket upgrade.
    """
    entry = ASSETS.get(path)
    if entry is None:
        return None
    if path == "/" and ("upgrade" in headers.get("Connection", "").lower()
                        or "text/html" not in headers.get("Accept", "")):
        return None
    return _read(entry[0]), entry[1]


@functools.cache
def _read(name: str) -> bytes:
    return (importlib.resources.files("timefast") / "static" / name).read_bytes()
