"""Tests of timefast.ledger.work: the group commit, its staged rows and a failed batch."""

from __future__ import annotations

import pytest

from .helpers import new_wallet
from .ledger_helpers import make_ledger


def test_history_within_a_batch_and_after_a_failed_one(tmp_path):
    led, _ = make_ledger(tmp_path)
    _, a = new_wallet()
    with led.batch():
        t1 = led.faucet.pay(a, 10)
        assert led.reads.history(a)["tx_count"] == 1  # a read writes the staged rows first
        t2 = led.faucet.pay(a, 11)
    assert [t["txid"] for t in led.reads.history(a)["txs"]] == [t2, t1]
    with pytest.raises(RuntimeError), led.batch():
        led.faucet.pay(a, 12)
        raise RuntimeError("the batch fails")
    t3 = led.faucet.pay(a, 13)
    h = led.reads.history(a)
    assert [t["txid"] for t in h["txs"]] == [t3, t2, t1] and h["tx_count"] == 3
