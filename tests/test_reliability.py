"""Reliability: crashes, full disks, hostile input, churn (the CI-sized runs)."""

from __future__ import annotations

import asyncio
import json
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as aconnect
from websockets.sync.client import connect

from timefast import _core, crypto
from timefast.ledger import Ledger
from timefast.rpc import RpcDispatcher
from timefast.session import Limits, WalletSession
from timefast.storage import Store
from timefast.transaction import build

from . import crash_harness
from .helpers import Capture, NodeThread, new_wallet, parse_frames, result, rpc

FAUCET_ADDRESS = "TIME0204ae9b33c389b9fb8b26c3bcc14147d700af6c5"
ERROR_CODES = {"BAD_JSON", "BAD_REQUEST", "UNKNOWN_TYPE", "INVALID_ADDRESS",
               "TOO_MANY_SUBSCRIPTIONS", "RATE_LIMITED", "TX_INVALID", "TX_CONFLICT",
               "NOT_FOUND", "UNAVAILABLE"}
REPLY_TYPES = {"Subscribed", "Unsubscribed", "Pong", "Hello", "Utxos", "Transaction",
               "TransactionAccepted", "Error"}


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    rep = crash_harness.run(tmp_path, submissions=1000, kills=6, seed=7)
    assert rep.problems == []
    assert rep.kills >= 3 and rep.acknowledged > 0
    assert rep.stored >= rep.acknowledged


def test_full_disk_refuses_then_recovers(tmp_path):
    n = NodeThread(tmp_path).start()
    try:
        ka, a = new_wallet()
        coin = result(n.rpc_url, "faucet", a, 10_000)
        db = n.node.store.db
        pages = n.call(lambda: db.execute("PRAGMA page_count").fetchone()[0])
        n.call(lambda: db.execute(f"PRAGMA max_page_count={pages}"))  # the disk is full
        tx = build([(coin, 0, ka)], [(new_wallet()[1], 500)], timestamp=1)
        err = rpc(n.rpc_url, "sendrawtransaction", tx.to_json())["error"]
        assert err["data"]["code"] == "UNAVAILABLE" and "full" in err["message"]
        with connect(n.ws_url) as ws:
            ws.send(orjson.dumps({"type": "SubmitTransaction", "id": 1,
                                  "data": {"tx": tx.to_json()}}).decode())
            reply = orjson.loads(ws.recv(timeout=10))
            assert reply["type"] == "Error" and reply["data"]["code"] == "UNAVAILABLE"
        assert rpc(n.rpc_url, "gettransaction", tx.txid)["error"]["data"]["code"] == "NOT_FOUND"
        assert result(n.rpc_url, "gettxout", coin, 0)["state"] == "Unspent"
        n.call(lambda: db.execute("PRAGMA max_page_count=1073741823"))  # space is back
        assert result(n.rpc_url, "sendrawtransaction", tx.to_json()) == tx.txid
        assert result(n.rpc_url, "gettransaction", tx.txid)["status"] == "finalized"
    finally:
        n.stop()


def test_compression_offer_is_declined(tmp_path):
    n = NodeThread(tmp_path).start()
    try:
        with connect(n.ws_url, compression="deflate") as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            ws.send('{"type":"Ping"}')
            assert ws.recv(timeout=10) == '{"type":"Pong"}'
    finally:
        n.stop()


def test_churn_clients_resume_with_exactly_their_events(tmp_path):
    churn(tmp_path, clients=200)


def churn(tmp_path, clients: int, progress=None) -> int:
    """Clients dropped mid-burst come back with their last seq; each must end with
    exactly the events it should have had.  Returns how many events were checked.
    ``progress(k)`` is called after each of the 120 payments."""
    n = NodeThread(tmp_path, MAX_CONNECTIONS_PER_IP=0).start()
    try:
        addrs = [new_wallet()[1] for _ in range(20)]
        start = result(n.rpc_url, "getinfo")["seq"]

        async def client(i: int, got: list, half: asyncio.Event, done: asyncio.Event):
            mine = [addrs[i % 20], addrs[(i + 7) % 20]]
            sub = {"type": "Subscribe", "data": {"addresses": mine, "snapshot": False,
                                                 "since_seq": start}}
            async with aconnect(n.ws_url) as ws:
                await ws.send(orjson.dumps(sub).decode())
                while not half.is_set() or not got:
                    try:
                        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except TimeoutError:
                        continue
                    if msg["type"] != "Subscribed":
                        got.append(msg["data"]["seq"])
            # Dropped mid-burst; back with the last seq it saw.
            await asyncio.sleep(0.05 * (i % 5))
            sub["data"]["since_seq"] = got[-1]
            async with aconnect(n.ws_url) as ws:
                await ws.send(orjson.dumps(sub).decode())
                while True:
                    try:
                        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 1.0))
                    except TimeoutError:
                        if done.is_set():
                            return
                        continue
                    if msg["type"] != "Subscribed":
                        got.append(msg["data"]["seq"])

        async def scenario():
            half, done = asyncio.Event(), asyncio.Event()
            got = [[] for _ in range(clients)]
            tasks = [asyncio.create_task(client(i, got[i], half, done)) for i in range(clients)]
            await asyncio.sleep(1.0)
            loop = asyncio.get_running_loop()
            for k in range(120):
                await loop.run_in_executor(None, result, n.rpc_url, "faucet",
                                           addrs[k % 20], 1000 + k)
                if k == 40:
                    half.set()
                if k % 30 == 29:
                    await loop.run_in_executor(None, result, n.rpc_url, "generate", 1)
                if progress is not None:
                    progress(k + 1)
            done.set()
            await asyncio.gather(*tasks)
            return got

        got = asyncio.run(scenario())
        events = n.call(lambda: [(e.seq, e.addresses) for e in n.node.ledger.journal.recent
                                 if e.seq > start])
        checked = 0
        for i in range(clients):
            mine = {addrs[i % 20], addrs[(i + 7) % 20]}
            want = [s for s, ad in events if ad is None or mine & set(ad)]
            assert got[i] == want, f"client {i}"
            checked += len(want)
        return checked
    finally:
        n.stop()


# --------------------------------------------------------------------------- fuzzing

@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    led = Ledger(Store(tmp_path_factory.mktemp("fuzz") / "f.db"), "regtest", crypto.new_key())
    fan = _core.Fanout(1 << 30)
    cap = Capture()
    slot = fan.open(cap)
    # A clock that races ahead: the rate limit never trips, every message is parsed.
    session = WalletSession(led, fan, slot, Limits(max_subscriptions=50),
                            clock=lambda: time.monotonic() * 1e6)
    return fan, cap, session, RpcDispatcher(led)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=12)
MESSAGE_TYPES = st.sampled_from(["Subscribe", "Unsubscribe", "Ping", "Hello", "GetUtxos",
                                 "GetTransaction", "SubmitTransaction", "Nope", ""])
messages = st.one_of(
    st.binary(max_size=64),
    json_values.map(orjson.dumps),
    st.builds(lambda t, d, i: orjson.dumps({"type": t, "data": d, "id": i}),
              MESSAGE_TYPES, json_values,
              st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4)),
    st.builds(lambda t, a: orjson.dumps({"type": t, "data": {"addresses": a}}),
              MESSAGE_TYPES, st.lists(st.text(max_size=10), max_size=60)),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=messages)
def test_fuzz_wallet_messages_get_specified_replies(fuzz_target, raw):
    fan, cap, session, _ = fuzz_target
    cap.data.clear()
    session.handle_text(raw)
    fan.flush()
    replies = [orjson.loads(p) for p in parse_frames(bytes(cap.data))]
    assert replies, raw  # every message is answered
    for r in replies:
        assert r["type"] in REPLY_TYPES, r
        if r["type"] == "Error":
            assert r["data"]["code"] in ERROR_CODES and r["data"]["message"], r


# Integers of any size, written by the standard library (orjson writes only 64-bit
# ones): orjson reads up to 2**64 - 1 as an int, beyond as a float; SQLite stores
# -2**63 .. 2**63 - 1, so the edges on both sides of those ranges are drawn often.
EDGES = [2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**23]
big_ints = (st.integers() | st.sampled_from(EDGES + [-e for e in EDGES])
            | st.sampled_from(EDGES).map(str))
big_values = st.recursive(
    st.none() | st.booleans() | big_ints | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=12)
RPC_METHODS = st.sampled_from(["getinfo", "getblock", "gettxout", "gettransaction",
                               "sendrawtransaction", "submitvote", "listunspent",
                               "getbalance", "faucet", "generate", "nope"])


def _rpc_body(method: str, params: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                       "params": params}).encode()


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(
    st.binary(max_size=64), json_values.map(orjson.dumps),
    st.builds(lambda m, p: orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": m,
                                         "params": p}), RPC_METHODS, json_values),
    st.builds(_rpc_body, RPC_METHODS, big_values),
    # Numbers where the methods take numbers: heights, vouts, amounts, counts.
    st.builds(lambda m, n: _rpc_body(m, [n]), st.sampled_from(["getblock", "generate"]),
              big_ints),
    st.builds(lambda t, n: _rpc_body("gettxout", [t, n]),
              st.sampled_from(["ab" * 32, "x"]), big_ints),
    st.builds(lambda n: _rpc_body("faucet", [FAUCET_ADDRESS, n]), big_ints),
    st.builds(lambda v, a, t: _rpc_body("sendrawtransaction", [{
        "txid": "ab" * 32, "version": 1, "timestamp": t, "lock_time": 0,
        "inputs": [{"previous_output": {"txid": "ab" * 32, "vout": v},
                    "public_key": "cd" * 32, "signature": "ef" * 64, "sequence": 0}],
        "outputs": [{"amount": a, "address": FAUCET_ADDRESS}]}]),
        big_ints, big_ints, big_ints),
))
def test_fuzz_rpc_gets_results_or_jsonrpc_errors(fuzz_target, body):
    dispatcher = fuzz_target[3]
    reply = dispatcher.handle_bytes(body)
    if reply is None:
        return
    obj = orjson.loads(reply)
    for r in obj if isinstance(obj, list) else [obj]:
        assert r["jsonrpc"] == "2.0"
        assert ("result" in r) != ("error" in r)
        if "error" in r:
            assert isinstance(r["error"]["code"], int) and r["error"]["message"]
            assert r["error"]["message"] != "internal error", body
