"""Peer messages against ../shared/vectors/p2p.json, round trips and refusal of
malformed frames (SPEC 7.1-7.5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from timefast import transaction, wire

VECTORS = json.loads((Path(__file__).resolve().parent / "vectors" / "p2p.json").read_text())
KEYS = {k["public_key"]: SigningKey(bytes.fromhex(k["seed"])) for k in VECTORS["keys"]}
NET = bytes.fromhex(VECTORS["network_id"])
SIGNER = KEYS[VECTORS["auth"]["public_key"]]
OTHER = KEYS[VECTORS["masternodes"][1]]
H = "ab" * 32


# -- vectors -------------------------------------------------------------------------

def test_network_id_vector():
    assert wire.network_id(VECTORS["genesis"], VECTORS["masternodes"]) == NET


def test_network_id_normalises_case_duplicates_and_order():
    keys = VECTORS["masternodes"]
    mixed = [keys[0].upper(), *reversed(keys), keys[2]]
    assert wire.network_id(VECTORS["genesis"], mixed) == NET
    assert wire.network_id(VECTORS["genesis"], keys[:3]) != NET
    assert wire.network_id("00" * 32, keys) != NET


@pytest.mark.parametrize("name", ["auth", "auth_acceptor"])
def test_auth_vectors(name):
    v = VECTORS[name]
    own, peer = bytes.fromhex(v["ephemeral"]), bytes.fromhex(v["peer_ephemeral"])
    signed = wire.auth_bytes(NET, v["role"], own, peer, bytes.fromhex(v["public_key"]),
                             bytes.fromhex(v["peer_public_key"]))
    assert signed.hex() == v["signed_bytes"]
    auth = wire.sign_auth(KEYS[v["public_key"]], NET, v["role"], own, peer,
                          v["peer_public_key"])
    assert auth.signature == v["signature"]
    # The peer checks it from its side: its own role and ephemeral, then ours.
    wire.verify_auth(auth, NET, 1 - v["role"], peer, own, v["peer_public_key"],
                     v["public_key"])


def test_auth_binds_roles_ephemerals_and_keys():
    v = VECTORS["auth"]
    own, peer = bytes.fromhex(v["ephemeral"]), bytes.fromhex(v["peer_ephemeral"])
    auth = wire.Auth(v["signature"])
    args = (NET, 1, peer, own, v["peer_public_key"], v["public_key"])
    wire.verify_auth(auth, *args)
    # Each field changed in turn: the dialler's Auth shown to another dialler (the
    # relay of a third party that dialled both sides), other ephemerals, other keys.
    for i, other in ((1, 0), (2, bytes(32)), (3, bytes(32)), (4, VECTORS["masternodes"][2]),
                     (5, VECTORS["masternodes"][2])):
        changed = list(args)
        changed[i] = other
        with pytest.raises(wire.BadSignature):
            wire.verify_auth(auth, *changed)


def test_session_keys_vector():
    from timefast.crypto import sha3
    from timefast.p2p.seal import ephemeral_keypair, session_keys

    v = VECTORS["session_keys"]
    own = ephemeral_keypair(sha3(b"own ephemeral"))
    peer = ephemeral_keypair(sha3(b"peer ephemeral"))
    assert own[0].hex() == VECTORS["auth"]["ephemeral"]
    assert peer[0].hex() == VECTORS["auth"]["peer_ephemeral"]
    rx, tx = session_keys(True, own[0], own[1], peer[0])
    assert (rx.hex(), tx.hex()) == (v["dialler_rx"], v["dialler_tx"])
    # The acceptor's keys are the dialler's, crossed.
    assert session_keys(False, peer[0], peer[1], own[0]) == (tx, rx)


def test_addr_vector():
    v = VECTORS["addr"]
    signed = wire.addr_bytes(NET, v["public_key"], v["listen"], v["timestamp"])
    assert signed.hex() == v["signed_bytes"]
    addr = wire.sign_addr(SIGNER, NET, v["listen"], v["timestamp"])
    assert addr == wire.Addr(v["public_key"], v["listen"], v["timestamp"], v["signature"])
    wire.verify_addr(addr, NET)
    with pytest.raises(wire.BadSignature):
        wire.verify_addr(wire.Addr(addr.public_key, "203.0.113.8:24100", addr.timestamp,
                                   addr.signature), NET)


def test_votes_vector():
    v = VECTORS["votes"]
    pairs = [(t, a) for t, a in v["votes"]]
    assert wire.votes_bytes(NET, v["voter"], v["batch"], pairs).hex() == v["signed_bytes"]
    votes = wire.sign_votes(KEYS[v["voter"]], NET, v["batch"], pairs)
    assert votes.signature == v["signature"]
    wire.verify_votes(votes, NET)
    parsed = wire.parse(orjson.dumps({"type": "Votes", "data": {
        "voter": v["voter"], "batch": v["batch"], "votes": v["votes"],
        "signature": v["signature"]}}))
    assert parsed == votes
    pub, msg, sig = wire.votes_check(votes, NET)
    assert (pub.hex(), msg.hex(), sig.hex()) == (v["voter"], v["signed_bytes"], v["signature"])
    flipped = wire.Votes(votes.voter, votes.batch, ((pairs[0][0], False), pairs[1]),
                         votes.signature)
    with pytest.raises(wire.BadSignature):
        wire.verify_votes(flipped, NET)
    with pytest.raises(wire.BadSignature):
        wire.verify_votes(votes, bytes(32))


def _block(height: int = 12, block_hash: str = H, commit: Any = None) -> wire.Block:
    return wire.Block(height, "cd" * 32, 1764150000, (), VECTORS["masternodes"][0], 1,
                      block_hash, (), commit)


def test_proposal_vector():
    v = VECTORS["proposal"]
    signed = wire.proposal_bytes(NET, v["height"], v["round"], v["valid_round"],
                                 v["block_hash"])
    assert signed.hex() == v["signed_bytes"]
    p = wire.sign_proposal(SIGNER, NET, v["height"], v["round"], v["valid_round"],
                           _block(v["height"], v["block_hash"]))
    assert p.signature == v["signature"]
    wire.verify_proposal(p, NET, SIGNER.verify_key.encode().hex())
    with pytest.raises(wire.BadSignature):
        wire.verify_proposal(p, NET, VECTORS["masternodes"][1])
    assert wire.parse(wire.encode(p)) == p


def test_a_proposal_is_parsed_to_its_envelope_and_its_block_only_when_opened():
    # What the signature covers is read at once; a block that would not parse (here a
    # transaction of junk) and certificates that are not batches wait for open(), so
    # a receiver checks the signature first and never parses a block it refuses.
    p = wire.sign_proposal(SIGNER, NET, 5, 2, 1, _block(5), [])
    data = _data(p)
    junk = {**data, "block": {**data["block"], "txs": [{"junk": 1}]},
            "certificates": [{}]}
    parsed = wire.parse(_frame("Proposal", junk))
    assert isinstance(parsed, wire.Proposal) and not parsed.opened
    assert (parsed.height, parsed.round, parsed.valid_round, parsed.block_hash) == \
        (5, 2, 1, H)
    wire.verify_proposal(parsed, NET, SIGNER.verify_key.encode().hex())
    with pytest.raises(wire.ParseError, match="txs"):
        parsed.open()
    with pytest.raises(wire.ParseError, match="txs"):
        _ = parsed.block
    certs_only = wire.parse(_frame("Proposal", {**data, "certificates": [{}]}))
    assert isinstance(certs_only, wire.Proposal)
    with pytest.raises(wire.ParseError, match="Votes"):
        certs_only.open()
    # The count of transactions is checked with the envelope (it costs nothing).
    many = {**data, "block": {**data["block"], "txs": [{}] * (wire.MAX_BLOCK_TXS + 1)}}
    with pytest.raises(wire.ParseError, match="txs"):
        wire.parse(_frame("Proposal", many))


def test_a_proposal_s_transaction_bytes_are_counted_before_it_is_opened():
    full = _examples()[9]
    assert isinstance(full, wire.Proposal)
    want = sum(len(orjson.dumps(t.to_json())) for t in full.block.txs)
    parsed = wire.parse(wire.encode(full))
    assert isinstance(parsed, wire.Proposal) and not parsed.opened
    assert parsed.txs_bytes() == want == full.txs_bytes()
    assert parsed.open() == full and parsed.opened and parsed.txs_bytes() == want


@pytest.mark.parametrize("name", ["prevote", "precommit_nil"])
def test_bft_vectors(name):
    v = VECTORS[name]
    step = wire.STEP_PREVOTE if name == "prevote" else wire.STEP_PRECOMMIT
    signed = wire.bft_bytes(NET, step, v["height"], v["round"], v["block_hash"])
    assert signed.hex() == v["signed_bytes"]
    sign = wire.sign_prevote if name == "prevote" else wire.sign_precommit
    vote = sign(SIGNER, NET, v["height"], v["round"], v["block_hash"])
    assert vote.signature == v["signature"]
    assert vote.block_hash == v["block_hash"]
    wire.verify_bft(vote, NET)
    assert wire.parse(wire.encode(vote)) == vote
    # The step is signed: a prevote's signature does not make a precommit.
    other = (wire.Precommit if name == "prevote" else wire.Prevote)(
        vote.height, vote.round, vote.block_hash, vote.voter, vote.signature)
    with pytest.raises(wire.BadSignature):
        wire.verify_bft(other, NET)


def test_commit_signatures():
    block = _block()
    sigs = tuple(wire.CommitSig(p.voter, p.round, p.signature)
                 for p in (wire.sign_precommit(k, NET, 12, 3, H) for k in KEYS.values()))
    assert wire.verify_commit(_block(commit=sigs), NET) == list(KEYS)
    nil = wire.sign_precommit(SIGNER, NET, 12, 3, None)
    with pytest.raises(wire.BadSignature):
        wire.verify_commit(_block(commit=(wire.CommitSig(nil.voter, 3, nil.signature),)), NET)
    assert wire.verify_commit(block, NET) == []


# -- round trips ---------------------------------------------------------------------

def _tx(n: int = 0) -> transaction.Transaction:
    return transaction.build([("ef" * 32, n, OTHER)], [("TIME0" + "1" * 40, 5 + n)],
                             timestamp=1764150000 + n)


def _coinbase() -> transaction.Transaction:
    tx = transaction.Transaction("", 1, (), (transaction.TxOutput(7, "TIME0" + "2" * 40),),
                                 12, 1764150000)
    return transaction.Transaction(tx.compute_txid(), 1, (), tx.outputs, 12, 1764150000)


def _examples() -> list[wire.Message]:
    votes = wire.sign_votes(SIGNER, NET, 3, [(_tx().txid, True), (H, False)])
    commit = (wire.CommitSig(VECTORS["masternodes"][0], 0, "11" * 64),)
    full = wire.Block(5, "cd" * 32, -3, (_coinbase().txid, _tx().txid),
                      VECTORS["masternodes"][0], 0, H, (_coinbase(), _tx()), commit)
    genesis = wire.Block(0, "00" * 32, 1764150000, (), "", 0, H, (), ())
    return [
        wire.Hello(2, NET.hex(), "regtest", H, VECTORS["masternodes"][0], "01" * 32, 7, H,
                   "127.0.0.1:24200"),
        wire.Hello(2, NET.hex(), "mainnet", H, VECTORS["masternodes"][0], "01" * 32, 0, H,
                   None),
        wire.Hello(2, NET.hex(), "testnet", H, VECTORS["masternodes"][0], "01" * 32, 0, H,
                   "[::1]:24200"),
        wire.sign_auth(SIGNER, NET, 0, bytes(32), b"\x01" * 32, VECTORS["masternodes"][1]),
        wire.sign_addr(SIGNER, NET, "node-1.example.org:24100", 1764150000),
        wire.Ping(5), wire.Pong(wire.U64_MAX),
        wire.Tx(_tx()),
        votes,
        wire.sign_proposal(SIGNER, NET, 5, 2, 1, full, [votes]),
        wire.sign_prevote(SIGNER, NET, wire.U64_MAX, wire.U32_MAX, None),
        wire.sign_precommit(SIGNER, NET, 1, 0, H),
        wire.Status(9, H),
        wire.GetBlocks(1, 500),
        wire.Blocks((genesis, full)),
        wire.GetPending(), wire.GetPending((H, _tx().txid)),
        wire.Pending((_tx(), _tx(1)), (votes,)),
        wire.StartHeight(13),
    ]


def test_every_type_has_an_example():
    assert {m.TYPE for m in _examples()} == set(wire.MESSAGE_TYPES)


@pytest.mark.parametrize("msg", _examples(), ids=lambda m: m.TYPE)
def test_round_trip(msg):
    frame = wire.encode(msg)
    assert wire.parse(frame) == msg
    assert wire.parse(frame.decode()) == msg
    assert wire.encode(wire.parse(frame)) == frame
    assert orjson.loads(frame)["type"] == msg.TYPE


def test_wire_field_names():
    assert orjson.loads(wire.encode(wire.GetBlocks(4, 2)))["data"] == {"from": 4, "count": 2}
    d = orjson.loads(wire.encode(_examples()[-2]))["data"]
    assert set(d) == {"txs", "votes"} and d["votes"][0]["votes"][0][1] is True


def test_ping_without_nonce_and_unknown_fields_are_accepted():
    assert wire.parse(b'{"type":"Ping","data":{}}') == wire.Ping(0)
    frame = orjson.dumps({"type": "Status", "data": {"height": 1, "tip": H, "later": [1]}})
    assert wire.parse(frame) == wire.Status(1, H)


# -- refusals ------------------------------------------------------------------------

def _frame(t: str, data: Any) -> bytes:
    return orjson.dumps({"type": t, "data": data})


def _data(msg: wire.Message) -> dict[str, Any]:
    return orjson.loads(wire.encode(msg))["data"]


def _votes_data(n: int) -> dict[str, Any]:
    return {"voter": H, "batch": 1, "votes": [[f"{i:064x}", True] for i in range(n)],
            "signature": "00" * 64}


BAD = [
    ("not json", b"{"),
    ("not an object", b"[1]"),
    ("no type", b'{"data":{}}'),
    ("unknown type", _frame("Gossip", {})),
    ("type not a string", orjson.dumps({"type": 1, "data": {}})),
    ("no data", b'{"type":"Ping"}'),
    ("data not an object", _frame("Ping", [])),
    ("uppercase hex", _frame("Status", {"height": 1, "tip": H.upper()})),
    ("short hex", _frame("Status", {"height": 1, "tip": H[:62]})),
    ("negative height", _frame("Status", {"height": -1, "tip": H})),
    ("height over u64", orjson.dumps({"type": "Status", "data": {"height": 1, "tip": H}})
     .replace(b'"height":1', b'"height":18446744073709551616')),
    ("float height", _frame("Status", {"height": 1.0, "tip": H})),
    ("bool height", _frame("Status", {"height": True, "tip": H})),
    ("round over u32", _frame("Prevote", {**_data(wire.sign_prevote(SIGNER, NET, 1, 0, None)),
                                          "round": 1 << 32})),
    ("valid_round -2", _frame("Proposal", {**_data(_examples()[9]), "valid_round": -2})),
    ("GetBlocks count 501", _frame("GetBlocks", {"from": 0, "count": 501})),
    ("GetBlocks count 0", _frame("GetBlocks", {"from": 0, "count": 0})),
    ("257 votes", _frame("Votes", _votes_data(257))),
    ("no votes", _frame("Votes", _votes_data(0))),
    ("batch 0", _frame("Votes", {**_votes_data(1), "batch": 0})),
    ("vote not a pair", _frame("Votes", {**_votes_data(1), "votes": [[H]]})),
    ("approve not bool", _frame("Votes", {**_votes_data(1), "votes": [[H, 1]]})),
    ("txid twice", _frame("Votes", {**_votes_data(1), "votes": [[H, True], [H, False]]})),
    ("short signature", _frame("Auth", {"signature": "00" * 63})),
    ("listen without port", _frame("Addr", {**_data(_examples()[4]), "listen": "host"})),
    ("listen port 0", _frame("Addr", {**_data(_examples()[4]), "listen": "host:0"})),
    ("listen port 70000", _frame("Addr", {**_data(_examples()[4]), "listen": "h:70000"})),
    ("listen not ascii", _frame("Addr", {**_data(_examples()[4]), "listen": "hôst:1"})),
    ("hello missing listen", _frame("Hello", {k: v for k, v in _data(_examples()[0]).items()
                                              if k != "listen"})),
    ("bad tx", _frame("Tx", {"tx": {**_tx().to_json(), "inputs": []}})),
    ("coinbase outside a block", _frame("Tx", {"tx": _coinbase().to_json()})),
    ("producer empty above genesis", _frame("Blocks", {"blocks": [
        {**_data(_examples()[14])["blocks"][1], "producer": ""}]})),
    ("nonfirst tx without inputs", _frame("Blocks", {"blocks": [
        {**_data(_examples()[14])["blocks"][1],
         "txs": [_tx().to_json(), _coinbase().to_json()]}]})),
    ("501 blocks", _frame("Blocks", {"blocks": [None] * 501})),
    ("commit entry", _frame("Blocks", {"blocks": [
        {**_data(_examples()[14])["blocks"][1], "commit": [{"voter": H, "round": 0}]}]})),
    ("proposal txs not a list", _frame("Proposal", {**_data(_examples()[9]), "block": {
        **_data(_examples()[9])["block"], "txs": {}}})),
    ("proposal block without hash", _frame("Proposal", {**_data(_examples()[9]), "block": {
        k: v for k, v in _data(_examples()[9])["block"].items() if k != "hash"}})),
    ("GetPending txids", _frame("GetPending", {"txids": [1]})),
    ("invalid utf-8", b'{"type":"Status","data":{"height":1,"tip":"\xff"}}'),
]


@pytest.mark.parametrize(("name", "frame"), BAD, ids=[b[0] for b in BAD])
def test_malformed_frames_are_parse_errors(name, frame):
    with pytest.raises(wire.ParseError) as e:
        wire.parse(frame)
    assert e.value.code == wire.CLOSE_POLICY


def test_too_large():
    frame = wire.encode(wire.Status(1, H))
    assert wire.parse(frame, max_bytes=len(frame)) == wire.Status(1, H)
    with pytest.raises(wire.MessageTooLarge) as e:
        wire.parse(frame, max_bytes=len(frame) - 1)
    assert e.value.code == wire.CLOSE_TOO_BIG
    with pytest.raises(wire.MessageTooLarge):
        wire.parse(frame.decode(), max_bytes=len(frame) - 1)
    # The limit counts UTF-8 bytes, not characters.
    text = orjson.dumps({"type": "Status", "data": {"height": 1, "tip": H, "x": "é" * 50}})
    assert wire.parse(text.decode(), max_bytes=len(text)) == wire.Status(1, H)
    with pytest.raises(wire.MessageTooLarge):
        wire.parse(text.decode(), max_bytes=len(text) - 1)
    assert wire.MAX_P2P_MESSAGE_BYTES == 8_388_608


def test_parse_and_signature_errors_are_distinct():
    assert not issubclass(wire.BadSignature, wire.ParseError)
    assert not issubclass(wire.ParseError, wire.BadSignature)
    assert wire.BadSignature.code == wire.CLOSE_POLICY


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=70)
    | st.sampled_from([H, "00" * 64, "127.0.0.1:1", -1, 0, 1, 256, 500, 501]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=5),
    max_leaves=30)


def _dumps(obj: Any) -> bytes:
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return json.dumps(obj).encode()


def _parse_or_parse_error(frame: bytes) -> None:
    try:
        msg = wire.parse(frame)
        if isinstance(msg, wire.Proposal):
            msg.open()  # the block and certificates are parsed only when opened
    except wire.ParseError:
        return
    # Whatever parses serializes back to a frame that parses to the same message.
    assert wire.parse(wire.encode(msg)) == msg


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(sorted(wire.MESSAGE_TYPES)), json_values)
def test_arbitrary_json_only_raises_parse_error(t, data):
    _parse_or_parse_error(_dumps({"type": t, "data": data}))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_parse_error(frame):
    _parse_or_parse_error(frame)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(obj: Any, path: tuple[Any, ...], new: Any, delete: bool) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        obj = dict(obj)
        if delete and not rest:
            del obj[head]
        else:
            obj[head] = _mutate(obj[head], rest, new, delete)
        return obj
    obj = list(obj)
    if delete and not rest:
        del obj[head]
    else:
        obj[head] = _mutate(obj[head], rest, new, delete)
    return obj


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_mutated_valid_messages_only_raise_parse_error(data):
    msg = data.draw(st.sampled_from(_EXAMPLES))
    obj = orjson.loads(wire.encode(msg))
    path = data.draw(st.sampled_from(_paths(obj)))
    delete = bool(path) and data.draw(st.booleans())
    new = None if delete else data.draw(json_values)
    _parse_or_parse_error(_dumps(_mutate(obj, path, new, delete)))


_EXAMPLES = _examples()


def test_no_asyncio_or_sockets():
    code = ("import sys, timefast.wire; "
            "bad = {'asyncio', 'socket', 'websockets', 'uvloop'} & set(sys.modules); "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
