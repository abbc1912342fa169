"""Run ``timefast.client`` and print every event as one JSON line (tests/test_client.py).

Usage: py_runner.py URLS ADDRESSES (each comma-separated).  Each line is the event's
fields with its ``type`` and the client's ``balances`` after it; runs until killed.
Requests come on stdin, one JSON line each (``{"op": "history", "address", "limit",
"before"}`` or ``{"op": "history_all", "address", "page_size"}``), each answered by a
line ``{"type": "Reply", "op", "result"}`` or ``{"type": "Reply", "op", "error"}``
(the ``ClientError``'s code), in the order they finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import Any

import orjson

from timefast.client import ClientError, UtxoStateChange, WalletClient


def emit(line: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


async def answer(c: WalletClient, cmd: dict[str, Any]) -> None:
    out: dict[str, Any] = {"type": "Reply", "op": cmd["op"]}
    try:
        if cmd["op"] == "history":
            page = await c.history(cmd["address"], cmd.get("limit", 50), cmd.get("before"))
            out["result"] = dataclasses.asdict(page)
        elif cmd["op"] == "history_all":
            out["result"] = [dataclasses.asdict(tx) async for tx in
                             c.history_all(cmd["address"], cmd.get("page_size", 200))]
    except ClientError as e:
        out["error"] = e.code
    emit(out)


async def commands(c: WalletClient) -> None:
    loop = asyncio.get_running_loop()
    pending = set()
    while text := await loop.run_in_executor(None, sys.stdin.readline):
        task = loop.create_task(answer(c, orjson.loads(text)))
        pending.add(task)
        task.add_done_callback(pending.discard)


async def main(urls: list[str], addresses: list[str]) -> None:
    async with WalletClient(urls, addresses, backoff_max=0.5) as c:
        reader = asyncio.ensure_future(commands(c))
        async for ev in c:
            line = {"type": type(ev).__name__, **dataclasses.asdict(ev),
                    "balances": c.balances()}
            if isinstance(ev, UtxoStateChange):
                line["transaction"] = None  # the tests read seq and type, not the tx
            emit(line)
        reader.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].split(","), sys.argv[2].split(",")))
