"""DATA_DIR's ownership: one node at a time, and one network for its whole life.

Two nodes writing one database corrupt each other's view of it (each holds the UTXO
set in memory), so a node takes an exclusive ``flock`` on ``DATA_DIR/lock`` for as
long as it runs; the kernel drops it when the process ends, however it ends. The
network a directory was made for is kept in its database: a regtest directory
(whose faucet holds the genesis coins) must never start as mainnet.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from timefast.storage import Store
from timefast.tables import Tables

LOCK_FILE = "lock"


class DataDirError(Exception):
    """DATA_DIR cannot be used by this node as configured; the message says why."""


class DataDirLock:
    """An exclusive lock on a data directory, held until ``release``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirError(f"DATA_DIR {data_dir} is in use by process {holder} "
                               f"(it holds {self.path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        """Let the next node have the directory."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def check_network(store: Store, network: str) -> None:
    """Refuse a database made for another network; record ``network`` in one without it.

    Databases made before the network was kept are taken to belong to the network
    they are started with now.
    """
    tables = Tables(store)
    stored = tables.network()
    if stored is None:
        with store.transaction() as db:
            tables.write_network(db, network)
    elif stored != network:
        raise DataDirError(f"DATA_DIR {store.path.parent} holds a {stored} ledger; "
                           f"start it with NETWORK={stored}, or give NETWORK={network} "
                           "a DATA_DIR of its own")
