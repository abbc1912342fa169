"""Helpers shared by the ledger's tests (tests/test_ledger_*.py): a clock, a ledger
with its events, and the networks and payments several of them start from."""

from __future__ import annotations

import orjson

from timefast import crypto
from timefast.ledger import Ledger
from timefast.storage import Store
from timefast.transaction import build

from .helpers import batch_vote, new_wallet


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make_ledger(path, key=None, masternodes=None, clock=None, **kw):
    key = key or crypto.new_key()
    led = Ledger(Store(path / "t.db"), "regtest", key, masternodes, clock=clock or Clock(),
                 **kw)
    events = []
    led.listen(events.extend)
    if led.networked:
        signing(led)
    return led, events


def signing(led):
    """Sign a network ledger's own votes after each transaction it accepts, as the
    node's peer layer does a few milliseconds later."""
    def signed(call):
        def wrapped(*args, **kw):
            out = call(*args, **kw)
            while led.sign_batch() is not None:
                pass
            return out
        return wrapped
    led.submit = signed(led.submit)
    led.faucet.pay = signed(led.faucet.pay)


def kinds(events):
    out = []
    for e in events:
        d = orjson.loads(e.payload)["data"]
        if e.type == "UtxoStateChange":
            out.append((e.type, d["state"], d["prev_state"]))
        else:
            out.append((e.type,))
    return out


def _four(tmp_path, clock=None):
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led, events = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    ka, a = new_wallet()
    # The faucet's own payment needs quorum too: vote it through.
    t = led.faucet.pay(a, 1000)
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, t, True))
    assert led.reads.balance(a) == 1000
    u = led.reads.list_unspent(a)[0]
    tx = build([(u["txid"], u["vout"], ka)], [(new_wallet()[1], 900)], timestamp=5)
    events.clear()
    led.submit(tx.to_json())
    return led, events, keys, tx, u


def _net(tmp_path, clock=None):
    """A masternode of four with a finalized coin of 5,000 for a fresh wallet."""
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led, events = make_ledger(tmp_path, key=keys[0], masternodes=pubs, clock=clock)
    ka, a = new_wallet()
    coin = led.faucet.pay(a, 5000)
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, coin, True))
    assert led.status_of(coin) == "finalized"
    return led, events, keys, pubs, ka, coin


def _own_vote(led, txid):
    p = led.pool.pending[txid]
    return (True if led.public_key in p.approvals
            else False if led.public_key in p.rejections else None)


def _paid_with_fee(led, fee=100):
    """A finalized payment at ``led`` (one masternode) that leaves ``fee``."""
    ka, addr = new_wallet()
    paid = led.faucet.pay(addr, 5000)
    tx = build([(paid, 0, ka)], [(new_wallet()[1], 5000 - fee)], timestamp=7)
    led.submit(tx.to_json())
    return tx
