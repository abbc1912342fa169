"""Whom a node dials (SPEC 7.2): ``PEERS``, ``addnode`` and the voting set.

``Dialer`` runs the switch's dial loops.  ``PEERS`` and ``addnode`` addresses are
dialled for good, each by a loop of its own; a key of the voting set learnt from a
signed ``Addr`` is dialled by one loop per key at the newest address gossiped for it
(a newer ``Addr`` changes the address the loop dials, it starts no second loop);
never more loops than ``MAX_PEERS``.  Nothing else is dialled: keys outside the
voting set are free to make, so their records (and ``Hello.listen``, unsigned) would
let anyone make a node dial wherever they like.  A failed dial is logged when its
error changes, not on every attempt: at WARNING for ``PEERS``, INFO for the others,
with a traceback only for what is not a connection error (a bug).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from timefast.p2p.seal import OVERHEAD

log = logging.getLogger("timefast.p2p")

PATH = "/p2p"
BACKOFF_MIN = 1.0  # seconds before dialling a lost peer again, doubling...
BACKOFF_MAX = 30.0  # ...up to this

# What dialling a peer that is down or away raises: logged, never with a traceback.
CONNECTION_ERRORS = (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed)

# serve(ws, address, expected key or None) -> whether the link authenticated.
Serve = Callable[[ClientConnection, str, "str | None"], Awaitable[bool]]


class Dialer:
    """The dial loops of one switch (see the module docstring)."""

    def __init__(self, public_key: str, masternodes: Collection[str], serve: Serve, *,
                 waiting: Callable[[str], bool], max_loops: int, discovery: bool = True,
                 max_message_bytes: int) -> None:
        """``serve`` runs one dialled connection; ``waiting(key)``: the key is linked
        already or refused, so its loop waits instead of dialling."""
        self.public_key = public_key
        self.masternodes = frozenset(masternodes)
        self.serve = serve
        self.waiting = waiting
        self.max_loops = max_loops
        self.discovery = discovery
        self.max_message_bytes = max_message_bytes
        self.closing = False
        # Loops: by address for PEERS and addnode, by key for the voting set's keys.
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.keys: dict[str, str] = {}  # PEERS address -> the key found there
        self.targets: dict[str, str] = {}  # a found key -> the address its loop dials
        self._cap_logged = False

    def add(self, address: str) -> bool:
        """Dial ``address`` (host:port) and keep dialling it; False if already."""
        if address in self.loops or self.closing:
            return False
        self.loops[address] = asyncio.ensure_future(self._loop(address, None))
        return True

    def discover(self, address: str, key: str) -> None:
        """The newest signed address of ``key``: dialled if it is of the voting set."""
        if (not self.discovery or self.closing or key == self.public_key
                or key not in self.masternodes):
            return
        if key in self.targets:
            self.targets[key] = address  # its one loop dials here from now on
            return
        if key in self.keys.values():
            return  # a PEERS address reaches it already
        if len(self.loops) >= self.max_loops:
            if not self._cap_logged:
                self._cap_logged = True
                log.warning("not dialling %s at %s: %d dial loops already (MAX_PEERS)",
                            key[:16], address, len(self.loops))
            return
        self.targets[key] = address
        self.loops[key] = asyncio.ensure_future(self._loop(address, key))

    def found(self, address: str, key: str) -> None:
        """A link dialled to ``address`` authenticated as ``key``: a PEERS loop
        remembers whose address it dials (it waits while that key is linked)."""
        if address in self.loops:
            self.keys[address] = key

    def stop(self) -> None:
        """Stop every loop."""
        self.closing = True
        for task in self.loops.values():
            task.cancel()

    async def _loop(self, address: str, key: str | None) -> None:
        backoff = BACKOFF_MIN
        last_error = ""
        level = logging.WARNING if key is None else logging.INFO
        while not self.closing:
            if key is not None:
                address = self.targets.get(key, address)
            known = key or self.keys.get(address)
            if known is not None and self.waiting(known):
                await asyncio.sleep(BACKOFF_MIN)
                continue
            authenticated, error, bug = await self._dial(address, known)
            if error and error != last_error:
                if bug is not None:
                    log.error("peer %s: dial failed", address, exc_info=bug)
                else:
                    log.log(level, "peer %s%s: cannot connect: %s", address,
                            "" if key is None else f" ({key[:16]})", error)
            last_error = error
            if authenticated:
                backoff = BACKOFF_MIN
            await asyncio.sleep(backoff)
            if not authenticated:
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _dial(self, address: str, known: str | None
                    ) -> tuple[bool, str, Exception | None]:
        """One attempt: whether it authenticated, the error if it did not, and the
        exception if that is not a connection error (a bug, logged with its
        traceback)."""
        host, _, port = address.rpartition(":")
        try:
            async with connect(f"ws://{host}:{port}{PATH}",
                               max_size=self.max_message_bytes + OVERHEAD,
                               ping_interval=None, compression=None, open_timeout=10,
                               max_queue=64) as ws:
                if await self.serve(ws, address, known):
                    return True, "", None
                return False, "closed before it authenticated", None
        except CONNECTION_ERRORS as e:
            return False, f"{type(e).__name__}: {e}", None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return False, f"{type(e).__name__}: {e}", e
