"""The privval (timefast/privval.py): the masternode signs a consensus message only
once its record is persisted, and never two different ones for one round and step."""

from __future__ import annotations

import pytest

from timefast import consensus, crypto, wire
from timefast.consensus import Record, Step
from timefast.privval import DoubleSign, PrivValidator
from timefast.storage import Store
from timefast.tables import Tables


def test_a_second_different_prevote_for_one_round_is_refused(tmp_path):
    key = crypto.new_key()
    me = crypto.public_key_hex(key)
    store = Store(tmp_path / "t.db")
    try:
        privval = PrivValidator(store, Tables(store), key, b"\x07" * 32)
        first = consensus.Prevote(1, 0, "ab" * 32, me)
        with pytest.raises(DoubleSign):  # nothing persisted for height 1 yet
            privval.sign(first)
        privval.persist(Record(1, 0, Step.PREVOTE, None, -1, None, -1, None, first, None))
        signed = privval.sign(first)
        assert isinstance(signed, wire.Prevote) and signed.block_hash == "ab" * 32
        assert privval.sign(first) == signed  # the same one again (a resend) is fine
        with pytest.raises(DoubleSign):
            privval.sign(consensus.Prevote(1, 0, None, me))
        with pytest.raises(DoubleSign):
            privval.sign(consensus.Prevote(1, 0, "cd" * 32, me))
        # Another round is another prevote.
        assert privval.sign(consensus.Prevote(1, 1, None, me)).block_hash is None
    finally:
        store.close()
