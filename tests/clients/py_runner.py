"""Run ``timefast.client`` and print every event as one JSON line (tests/test_client.py).

Usage: py_runner.py URLS ADDRESSES (each comma-separated).  Each line is the event's
fields with its ``type`` and the client's ``balances`` after it; runs until killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import orjson

from timefast.client import UtxoStateChange, WalletClient


async def main(urls: list[str], addresses: list[str]) -> None:
    async with WalletClient(urls, addresses, backoff_max=0.5) as c:
        async for ev in c:
            line = {"type": type(ev).__name__, **dataclasses.asdict(ev),
                    "balances": c.balances()}
            if isinstance(ev, UtxoStateChange):
                line["transaction"] = None  # the tests read seq and type, not the tx
            sys.stdout.write(orjson.dumps(line).decode() + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].split(","), sys.argv[2].split(",")))
