"""Tests of timefast.ledger.index: the address history index built for old databases."""

from __future__ import annotations

from timefast.transaction import build

from .helpers import new_wallet
from .ledger_helpers import make_ledger


def test_an_older_data_directory_gets_its_history_built_once(tmp_path, caplog):
    led, _ = make_ledger(tmp_path)
    ka, a = new_wallet()
    paid = led.faucet.pay(a, 1000)
    spend = build([(paid, 0, ka)], [(new_wallet()[1], 400), (a, 500)], timestamp=3)
    led.submit(spend.to_json())
    led.blocks.make_block()
    want = led.reads.history(a, 1000)
    faucet = led.reads.history(led.pool.utxos.get(paid, 1)[0], 1000)
    led.store.close()
    # As a node from before the index left it: no history rows, no marker.
    import sqlite3
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("DROP TABLE history")
    db.execute("DELETE FROM meta WHERE key='history'")
    db.commit()
    db.close()
    caplog.set_level("INFO")
    again, _ = make_ledger(tmp_path)
    assert again.reads.history(a, 1000) == want
    assert again.reads.history(faucet["address"], 1000) == faucet
    # genesis, the payment, the spend and the block's coinbase (the spend's fee)
    assert "address history built: 4 transactions" in caplog.text
    caplog.clear()
    make_ledger(tmp_path)  # once
    assert "address history" not in caplog.text
