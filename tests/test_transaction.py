"""Transactions and votes against ../shared/vectors/ledger.json (SPEC 4.1, 4.3)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from timefast import crypto, transaction

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "ledger.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
KEYS = {k["public_key"]: SigningKey(bytes.fromhex(k["seed"])) for k in VECTORS["keys"]}


@pytest.mark.parametrize("case", VECTORS["transactions"], ids=lambda c: c["name"])
def test_vector_signing_bytes_txid_and_signatures(case):
    tx = transaction.parse(case["tx"])
    assert tx.signing_bytes().hex() == case["signing_bytes_hex"]
    assert tx.compute_txid() == case["tx"]["txid"]
    for i in tx.inputs:
        assert crypto.verify(bytes.fromhex(i.public_key), tx.signing_bytes(),
                             bytes.fromhex(i.signature))
    assert tx.to_json() == case["tx"]


@pytest.mark.parametrize("case", VECTORS["transactions"], ids=lambda c: c["name"])
def test_build_reproduces_vector(case):
    t = case["tx"]
    built = transaction.build(
        [(i["previous_output"]["txid"], i["previous_output"]["vout"], KEYS[i["public_key"]])
         for i in t["inputs"]],
        [(o["address"], o["amount"]) for o in t["outputs"]],
        timestamp=t["timestamp"], lock_time=t["lock_time"], version=t["version"],
    )
    if all(i["sequence"] == transaction.U32 for i in t["inputs"]):
        assert built.to_json() == t


@pytest.mark.parametrize("vote", VECTORS["votes"], ids=lambda v: str(v["approve"]))
def test_vote_vectors(vote):
    msg = crypto.vote_bytes(vote["txid"], vote["approve"])
    assert msg.hex() == vote["signed_bytes_hex"]
    assert crypto.verify(bytes.fromhex(vote["voter"]), msg, bytes.fromhex(vote["signature"]))
    signed = crypto.sign_vote(KEYS[vote["voter"]], vote["txid"], vote["approve"])
    assert signed["signature"] == vote["signature"]


@pytest.mark.parametrize("k", VECTORS["keys"], ids=lambda k: k["seed"][:4])
def test_addresses(k):
    assert crypto.address_of(k["public_key"], "regtest") == k["regtest_address"]
    assert crypto.address_of(k["public_key"], "testnet") == k["regtest_address"]
    assert crypto.address_of(k["public_key"], "mainnet") == k["mainnet_address"]
    key = SigningKey(bytes.fromhex(k["seed"]))
    assert crypto.parse_private_key(crypto.format_private_key(key)).encode() == key.encode()


def test_node_key_is_made_once_with_mode_0600(tmp_path):
    k1 = crypto.load_or_create_key(tmp_path, None)
    mode = stat.S_IMODE(os.stat(tmp_path / "masternode.key").st_mode)
    assert mode == 0o600
    k2 = crypto.load_or_create_key(tmp_path, None)
    assert k1.encode() == k2.encode()
    given = crypto.format_private_key(crypto.new_key())
    assert crypto.format_private_key(crypto.load_or_create_key(tmp_path, given)) == given
    with pytest.raises(crypto.KeyFormatError):
        crypto.parse_private_key("MN1234")


def _valid():
    return json.loads(json.dumps(VECTORS["transactions"][0]["tx"]))


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda t: t.update(inputs=[]), "at least one input"),
    (lambda t: t.update(outputs=[]), "at least one output"),
    (lambda t: t["outputs"][0].update(amount=0), "amount out of range"),
    (lambda t: t["outputs"][0].update(amount=-5), "amount out of range"),
    (lambda t: t["outputs"][0].update(amount=1.5), "amount must be an integer"),
    (lambda t: t["outputs"][0].update(address="bad address!"), "address must be"),
    (lambda t: t["inputs"][0].update(signature="00"), "signature must be"),
    (lambda t: t["inputs"][0].update(public_key="zz"), "public_key must be"),
    (lambda t: t["inputs"][0]["previous_output"].update(vout=-1), "vout out of range"),
    (lambda t: t.update(txid="XYZ"), "txid must be"),
    (lambda t: t.update(timestamp="now"), "timestamp must be an integer"),
    (lambda t: t.update(outputs=[{"amount": 1, "address": "A" * 128}] * 800),
     "larger than 100000 bytes"),
])
def test_malformed_transactions_name_their_fault(mutate, reason):
    t = _valid()
    mutate(t)
    with pytest.raises(transaction.TxFormatError, match=reason):
        transaction.parse(t)


def test_not_an_object():
    with pytest.raises(transaction.TxFormatError):
        transaction.parse([1, 2])
