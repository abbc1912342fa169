"""Peer messages (SPEC 7.1-7.5): typed values, strict parsing, serialization, and the
signed bytes, signing and checking of every signed layout.

A frame is one JSON text ``{"type": T, "data": {...}}``. ``parse`` turns it into one of
the frozen dataclasses below or raises ``ParseError``; ``encode`` is its inverse. All
hex is lowercase and of exact length (a transaction keeps the upstream format, which
``timefast.transaction.parse`` checks); integers are range-checked to the width their
signed layout gives them; lists are bounded. Keys a message does not define are
ignored, so that a later version may add fields; they are never signed and never
re-sent, since ``encode`` writes only the fields it knows.

Signatures are checked by the ``verify_*`` functions, which raise ``BadSignature``.
Both exceptions close a link with 1008 and count as misbehaviour (SPEC 7.3); a frame
larger than the limit raises ``MessageTooLarge`` (a ``ParseError``, closed with 1009).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeAlias

import orjson
from nacl.signing import SigningKey

from timefast import transaction
from timefast.crypto import sha3, verify
from timefast.transaction import Transaction, TxFormatError

PROTOCOL_VERSION = 2
# Before Auth a peer may send only Hello and Auth, each at most this many bytes (SPEC
# 7.2): an outsider cannot make a node parse a large frame.
MAX_HANDSHAKE_BYTES = 4096
MAX_P2P_MESSAGE_BYTES = 8_388_608
MAX_GET_BLOCKS = 500  # GetBlocks.count
MAX_VOTES_PER_BATCH = 256
MAX_BLOCK_TXS = 10_000
# Certificates of a proposal, transactions and batches of Pending, txids of GetPending,
# signatures of a commit: bounded so that a compact frame cannot make a huge list; the
# frame size limit bounds them further.
MAX_LIST = 65_536
MAX_LISTEN_CHARS = 261  # a 253-character name, ':' and a port, or a bracketed IPv6

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I32_MAX = (1 << 31) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1

CLOSE_POLICY = 1008  # RFC 6455 policy violation: a malformed or badly signed message
CLOSE_TOO_BIG = 1009

ZERO_HASH = bytes(32)
STEP_PREVOTE = 1
STEP_PRECOMMIT = 2

_HEX32 = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{128}")
# host:port with an ASCII name or IPv4 address, or [IPv6]:port; the port is 1-65535.
_LISTEN = re.compile(r"(?:\[[0-9a-fA-F:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})")


class WireError(Exception):
    """A peer message the node refuses; ``code`` is the WebSocket close code."""

    code: int = CLOSE_POLICY


class ParseError(WireError, ValueError):
    """A frame that is not a well-formed message of SPEC 7.3."""


class MessageTooLarge(ParseError):
    """A frame over ``MAX_P2P_MESSAGE_BYTES``."""

    code = CLOSE_TOO_BIG


class UnsupportedVersion(ParseError):
    """A ``Hello`` of another protocol version."""


class BadSignature(WireError):
    """A signature that does not verify over its message's signed bytes."""


# -- network id ----------------------------------------------------------------------

def network_id(genesis_hash: str, masternodes: Iterable[str]) -> bytes:
    """SHA3-256(genesis hash raw ‖ the MASTERNODES keys lowercased, deduplicated,
    sorted, as raw bytes) (SPEC 7.1)."""
    keys = sorted({k.lower() for k in masternodes})
    return sha3(bytes.fromhex(genesis_hash) + b"".join(bytes.fromhex(k) for k in keys))


# -- field checks --------------------------------------------------------------------

def _get(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ParseError(f"{where}: missing {key}")
    return data[key]


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParseError(f"{where} must be an object")
    return value


def _hex32(data: dict[str, Any], key: str, where: str) -> str:
    v = _get(data, key, where)
    if not isinstance(v, str) or _HEX32.fullmatch(v) is None:
        raise ParseError(f"{where}.{key} must be 64 lowercase hex characters")
    return v


def _hex32_value(v: Any, where: str) -> str:
    if not isinstance(v, str) or _HEX32.fullmatch(v) is None:
        raise ParseError(f"{where} must be 64 lowercase hex characters")
    return v


def _sig(data: dict[str, Any], key: str, where: str) -> str:
    v = _get(data, key, where)
    if not isinstance(v, str) or _HEX64.fullmatch(v) is None:
        raise ParseError(f"{where}.{key} must be 128 lowercase hex characters")
    return v


def _int(data: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    v = _get(data, key, where)
    if type(v) is not int:  # bool is an int subclass: refused here
        raise ParseError(f"{where}.{key} must be an integer")
    if not lo <= v <= hi:
        raise ParseError(f"{where}.{key} must be in [{lo}, {hi}]")
    return v


def _list(v: Any, limit: int, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise ParseError(f"{where} must be an array")
    if len(v) > limit:
        raise ParseError(f"{where} holds more than {limit} items")
    return v


def _listen(v: Any, where: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_LISTEN_CHARS:
        raise ParseError(f"{where} must be host:port")
    m = _LISTEN.fullmatch(v)
    if m is None or not 1 <= int(m.group(1)) <= 65535:
        raise ParseError(f"{where} must be host:port")
    return v


def _tx(v: Any, where: str, coinbase: bool = False) -> Transaction:
    """A transaction in the upstream format; ``coinbase`` also takes one without inputs
    (a block's first transaction, SPEC 7.5)."""
    try:
        if coinbase and isinstance(v, dict) and v.get("inputs") == []:
            # transaction.parse refuses an empty input list; check every other field
            # with it through a placeholder input, then drop the placeholder.
            tx = transaction.parse({**v, "inputs": [_PLACEHOLDER_INPUT]})
            return replace(tx, inputs=())
        return transaction.parse(v)
    except TxFormatError as e:
        raise ParseError(f"{where}: {e}") from None


_PLACEHOLDER_INPUT = {"previous_output": {"txid": "0" * 64, "vout": 0},
                      "public_key": "0" * 64, "signature": "0" * 128}


# -- messages ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    """First message of each side (SPEC 7.2). ``ephemeral`` is a fresh X25519 public
    key for this connection only; ``network`` and ``genesis`` say, to an operator
    whose peer has another ``network_id``, what differs."""

    TYPE: ClassVar[str] = "Hello"
    version: int
    network_id: str
    network: str
    genesis: str
    public_key: str
    ephemeral: str
    height: int
    tip: str
    listen: str | None

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"version": self.version, "network_id": self.network_id,
                "network": self.network, "genesis": self.genesis,
                "public_key": self.public_key, "ephemeral": self.ephemeral,
                "height": self.height, "tip": self.tip, "listen": self.listen}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Hello:
        """Parse the ``data`` object."""
        w = cls.TYPE
        version = _int(d, "version", 0, U32_MAX, w)
        if version != PROTOCOL_VERSION:
            # Checked first, so that a peer of another version is told so, not that
            # a field of this version is missing.
            raise UnsupportedVersion(f"protocol version {version}, expected "
                                     f"{PROTOCOL_VERSION}")
        network = _get(d, "network", w)
        if not isinstance(network, str) or not 0 < len(network) <= 32:
            raise ParseError(f"{w}.network: a name of 1-32 characters")
        listen = _get(d, "listen", w)
        return cls(version, _hex32(d, "network_id", w), network, _hex32(d, "genesis", w),
                   _hex32(d, "public_key", w), _hex32(d, "ephemeral", w),
                   _int(d, "height", 0, U64_MAX, w), _hex32(d, "tip", w),
                   None if listen is None else _listen(listen, w + ".listen"))


@dataclass(frozen=True, slots=True)
class Auth:
    """The signature over ``auth_bytes``: the roles, both ephemerals and both keys
    (SPEC 7.2)."""

    TYPE: ClassVar[str] = "Auth"
    signature: str

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"signature": self.signature}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Auth:
        """Parse the ``data`` object."""
        return cls(_sig(d, "signature", cls.TYPE))


@dataclass(frozen=True, slots=True)
class Addr:
    """Where the holder of ``public_key`` listens, signed by it (SPEC 7.2)."""

    TYPE: ClassVar[str] = "Addr"
    public_key: str
    listen: str
    timestamp: int
    signature: str

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"public_key": self.public_key, "listen": self.listen,
                "timestamp": self.timestamp, "signature": self.signature}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Addr:
        """Parse the ``data`` object."""
        w = cls.TYPE
        return cls(_hex32(d, "public_key", w), _listen(_get(d, "listen", w), w + ".listen"),
                   _int(d, "timestamp", I64_MIN, I64_MAX, w), _sig(d, "signature", w))


@dataclass(frozen=True, slots=True)
class Ping:
    """Keep-alive; answered by a ``Pong`` with the same ``nonce`` (0 when absent)."""

    TYPE: ClassVar[str] = "Ping"
    nonce: int = 0

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"nonce": self.nonce}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Ping:
        """Parse the ``data`` object."""
        return cls(_int(d, "nonce", 0, U64_MAX, cls.TYPE) if "nonce" in d else 0)


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a ``Ping``, echoing its ``nonce``."""

    TYPE: ClassVar[str] = "Pong"
    nonce: int = 0

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"nonce": self.nonce}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Pong:
        """Parse the ``data`` object."""
        return cls(_int(d, "nonce", 0, U64_MAX, cls.TYPE) if "nonce" in d else 0)


@dataclass(frozen=True, slots=True)
class Tx:
    """A transaction to relay (SPEC 7.3); its signatures are the ledger's to check."""

    TYPE: ClassVar[str] = "Tx"
    tx: Transaction

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"tx": self.tx.to_json()}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Tx:
        """Parse the ``data`` object."""
        return cls(_tx(_get(d, "tx", cls.TYPE), "Tx.tx"))


@dataclass(frozen=True, slots=True)
class Votes:
    """A signed vote batch (SPEC 7.4): ``votes`` is ``(txid, approve)`` pairs, at most
    256, each txid once; ``batch`` counts up from 1 per voter."""

    TYPE: ClassVar[str] = "Votes"
    voter: str
    batch: int
    votes: tuple[tuple[str, bool], ...]
    signature: str

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"voter": self.voter, "batch": self.batch,
                "votes": [[t, a] for t, a in self.votes], "signature": self.signature}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Votes:
        """Parse the ``data`` object."""
        w = cls.TYPE
        voter = _hex32(d, "voter", w)
        batch = _int(d, "batch", 1, U64_MAX, w)
        raw = _list(_get(d, "votes", w), MAX_VOTES_PER_BATCH, w + ".votes")
        if not raw:
            raise ParseError("Votes.votes is empty")
        votes = []
        for n, item in enumerate(raw):
            if not isinstance(item, list) or len(item) != 2 or type(item[1]) is not bool:
                raise ParseError(f"Votes.votes[{n}] must be [txid, true|false]")
            votes.append((_hex32_value(item[0], f"Votes.votes[{n}][0]"), item[1]))
        # One vote per transaction per batch: a batch that names a txid twice has no
        # single meaning to count or relay.
        if len({t for t, _ in votes}) != len(votes):
            raise ParseError("Votes.votes names a txid twice")
        return cls(voter, batch, tuple(votes), _sig(d, "signature", w))

    def signed_bytes(self, network_id: bytes) -> bytes:
        """What ``signature`` signs."""
        return votes_bytes(network_id, self.voter, self.batch, self.votes)

    def content_hash(self, network_id: bytes) -> bytes:
        """SHA3-256 of the signed bytes: tells two batches under one number apart."""
        return sha3(self.signed_bytes(network_id))


@dataclass(frozen=True, slots=True)
class CommitSig:
    """One precommit of a block's commit (SPEC 7.5)."""

    voter: str
    round: int
    signature: str

    def to_data(self) -> dict[str, Any]:
        """The JSON object."""
        return {"voter": self.voter, "round": self.round, "signature": self.signature}

    @classmethod
    def from_data(cls, d: Any, where: str) -> CommitSig:
        """Parse one commit entry."""
        d = _obj(d, where)
        return cls(_hex32(d, "voter", where), _int(d, "round", 0, U32_MAX, where),
                   _sig(d, "signature", where))


@dataclass(frozen=True, slots=True)
class Block:
    """A block on the wire (SPEC 7.5): the header, ``txs`` (a coinbase without inputs
    may come first) and, from ``Blocks``, its ``commit`` (``None`` when the frame
    carried none, as in a ``Proposal``). Whether ``hash``, ``txids`` and ``txs`` agree
    is the chain's rule, not the wire's."""

    height: int
    prev_hash: str
    timestamp: int
    txids: tuple[str, ...]
    producer: str
    round: int
    hash: str
    txs: tuple[Transaction, ...]
    commit: tuple[CommitSig, ...] | None = None

    def to_data(self) -> dict[str, Any]:
        """The JSON object."""
        d: dict[str, Any] = {
            "height": self.height, "prev_hash": self.prev_hash, "timestamp": self.timestamp,
            "txids": list(self.txids), "producer": self.producer, "round": self.round,
            "hash": self.hash, "txs": [t.to_json() for t in self.txs]}
        if self.commit is not None:
            d["commit"] = [c.to_data() for c in self.commit]
        return d

    @classmethod
    def from_data(cls, d: Any, where: str) -> Block:
        """Parse one block."""
        d = _obj(d, where)
        height = _int(d, "height", 0, U64_MAX, where)
        producer = _get(d, "producer", where)
        # The genesis block (height 0) has no producer: "".
        if not (height == 0 and producer == ""):
            producer = _hex32(d, "producer", where)
        txids = tuple(
            _hex32_value(t, f"{where}.txids[{n}]")
            for n, t in enumerate(_list(_get(d, "txids", where), MAX_BLOCK_TXS,
                                        where + ".txids")))
        txs = tuple(
            _tx(t, f"{where}.txs[{n}]", coinbase=n == 0)
            for n, t in enumerate(_list(_get(d, "txs", where), MAX_BLOCK_TXS, where + ".txs")))
        commit = None
        if "commit" in d:
            commit = tuple(
                CommitSig.from_data(c, f"{where}.commit[{n}]")
                for n, c in enumerate(_list(d["commit"], MAX_LIST, where + ".commit")))
        return cls(height, _hex32(d, "prev_hash", where),
                   _int(d, "timestamp", I64_MIN, I64_MAX, where), txids, producer,
                   _int(d, "round", 0, U32_MAX, where), _hex32(d, "hash", where), txs, commit)


class Proposal:
    """A block proposed for (height, round) by that round's proposer (SPEC 7.5);
    ``valid_round`` is -1 or the round the block was last seen valid in.

    Parsed from a frame, only what the signature covers is read at first: ``height``,
    ``round``, ``valid_round``, the block's ``hash`` (``block_hash``) and the
    ``signature``; the block's ``txs`` are only counted (at most ``MAX_BLOCK_TXS``).
    The block and the certificates stay the JSON values that came until ``open``
    parses them, which a receiver calls only once the signature and the proposer held
    and it means to keep or relay the block (SPEC 7.3, Budgets): a member's junk block
    costs a signature check, not a parse.  Reading ``block`` or ``certificates``
    opens the proposal (``ParseError`` when they do not parse).  Immutable."""

    TYPE: ClassVar[str] = "Proposal"
    __slots__ = ("_block", "_certificates", "_raw", "block_hash", "height", "round",
                 "signature", "valid_round")

    def __init__(self, height: int, round: int, valid_round: int,
                 block: Block | dict[str, Any], certificates: tuple[Votes, ...] | list[Any],
                 signature: str) -> None:
        """``block`` and ``certificates`` parsed, or (from ``from_data``) their JSON
        as it came: the block's object, whose ``hash`` is read now, and the list of
        certificates, both parsed by ``open``."""
        self.height = height
        self.round = round
        self.valid_round = valid_round
        self.signature = signature
        self._block: Block | None = None
        self._certificates: tuple[Votes, ...] | None = None
        # The block and certificates as JSON, until ``open`` (None once opened).
        self._raw: tuple[dict[str, Any], list[Any]] | None = None
        if isinstance(block, Block):
            self.block_hash = block.hash
            self._block, self._certificates = block, tuple(certificates)
        else:
            self.block_hash = _hex32(block, "hash", self.TYPE + ".block")
            self._raw = (block, list(certificates))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Proposal):
            return NotImplemented
        return (self.height, self.round, self.valid_round, self.signature, self.block,
                self.certificates) == (other.height, other.round, other.valid_round,
                                       other.signature, other.block, other.certificates)

    def __hash__(self) -> int:
        return hash((self.height, self.round, self.valid_round, self.block_hash,
                     self.signature))

    def __repr__(self) -> str:
        return (f"Proposal(height={self.height}, round={self.round}, valid_round="
                f"{self.valid_round}, block_hash={self.block_hash!r}, "
                f"opened={self._raw is None})")

    @property
    def block(self) -> Block:
        """The block (opens the proposal)."""
        self.open()
        assert self._block is not None
        return self._block

    @property
    def certificates(self) -> tuple[Votes, ...]:
        """The finality certificates of the block's transactions (opens the proposal)."""
        self.open()
        assert self._certificates is not None
        return self._certificates

    @property
    def opened(self) -> bool:
        """Whether the block and certificates are parsed (always, for one made here)."""
        return self._raw is None

    def open(self) -> Proposal:
        """Parse the block and the certificates (once); ``ParseError`` if they do not
        parse.  Returns the proposal."""
        if self._raw is None:
            return self
        raw_block, raw_certs = self._raw
        w = self.TYPE
        block = Block.from_data(raw_block, w + ".block")
        certs = tuple(Votes.from_data(_obj(c, f"{w}.certificates[{n}]"))
                      for n, c in enumerate(raw_certs))
        self._block, self._certificates, self._raw = block, certs, None
        return self

    def txs_bytes(self) -> int:
        """The bytes of the block's transactions as JSON, each on its own (SPEC 7.5
        bounds them to 4 MiB), counted without parsing them: as they came, before
        ``open``."""
        if self._raw is None:
            assert self._block is not None
            return sum(len(orjson.dumps(t.to_json())) for t in self._block.txs)
        txs = self._raw[0]["txs"]
        try:
            size = len(orjson.dumps(txs))
        except orjson.JSONEncodeError as e:
            raise ParseError(f"{self.TYPE}.block.txs: {e}") from None
        # Without the brackets and the commas between items.
        return size - 2 - max(len(txs) - 1, 0)

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object (opens the proposal)."""
        return {"height": self.height, "round": self.round, "valid_round": self.valid_round,
                "block": self.block.to_data(),
                "certificates": [v.to_data() for v in self.certificates],
                "signature": self.signature}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Proposal:
        """Parse the ``data`` object's envelope: what the signature covers; the block
        and certificates wait for ``open``."""
        w = cls.TYPE
        block = _obj(_get(d, "block", w), w + ".block")
        _list(_get(block, "txs", w + ".block"), MAX_BLOCK_TXS, w + ".block.txs")
        certs = _list(_get(d, "certificates", w), MAX_LIST, w + ".certificates")
        return cls(_int(d, "height", 0, U64_MAX, w), _int(d, "round", 0, U32_MAX, w),
                   _int(d, "valid_round", -1, I32_MAX, w), block, certs,
                   _sig(d, "signature", w))

    def signed_bytes(self, network_id: bytes) -> bytes:
        """What ``signature`` signs."""
        return proposal_bytes(network_id, self.height, self.round, self.valid_round,
                              self.block_hash)


@dataclass(frozen=True, slots=True)
class _BftVote:
    height: int
    round: int
    block_hash: str | None  # None: nil
    voter: str
    signature: str

    STEP: ClassVar[int]
    TYPE: ClassVar[str]

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"height": self.height, "round": self.round, "block_hash": self.block_hash,
                "voter": self.voter, "signature": self.signature}

    def signed_bytes(self, network_id: bytes) -> bytes:
        """What ``signature`` signs."""
        return bft_bytes(network_id, self.STEP, self.height, self.round, self.block_hash)

    @staticmethod
    def _fields(d: dict[str, Any], w: str) -> tuple[int, int, str | None, str, str]:
        block_hash = None if _get(d, "block_hash", w) is None else _hex32(d, "block_hash", w)
        return (_int(d, "height", 0, U64_MAX, w), _int(d, "round", 0, U32_MAX, w),
                block_hash, _hex32(d, "voter", w), _sig(d, "signature", w))


@dataclass(frozen=True, slots=True)
class Prevote(_BftVote):
    """A prevote for ``block_hash`` (None: nil) at (height, round) (SPEC 7.5)."""

    STEP: ClassVar[int] = STEP_PREVOTE
    TYPE: ClassVar[str] = "Prevote"

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Prevote:
        """Parse the ``data`` object."""
        return cls(*cls._fields(d, cls.TYPE))


@dataclass(frozen=True, slots=True)
class Precommit(_BftVote):
    """A precommit for ``block_hash`` (None: nil) at (height, round) (SPEC 7.5)."""

    STEP: ClassVar[int] = STEP_PRECOMMIT
    TYPE: ClassVar[str] = "Precommit"

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Precommit:
        """Parse the ``data`` object."""
        return cls(*cls._fields(d, cls.TYPE))


@dataclass(frozen=True, slots=True)
class Status:
    """The sender's chain height and tip: a hint, never trusted (SPEC 7.3)."""

    TYPE: ClassVar[str] = "Status"
    height: int
    tip: str

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"height": self.height, "tip": self.tip}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Status:
        """Parse the ``data`` object."""
        return cls(_int(d, "height", 0, U64_MAX, cls.TYPE), _hex32(d, "tip", cls.TYPE))


@dataclass(frozen=True, slots=True)
class GetBlocks:
    """Ask for ``count`` (1-500) blocks from height ``from_height`` (JSON ``from``)."""

    TYPE: ClassVar[str] = "GetBlocks"
    from_height: int
    count: int

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"from": self.from_height, "count": self.count}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> GetBlocks:
        """Parse the ``data`` object."""
        return cls(_int(d, "from", 0, U64_MAX, cls.TYPE),
                   _int(d, "count", 1, MAX_GET_BLOCKS, cls.TYPE))


@dataclass(frozen=True, slots=True)
class Blocks:
    """Answer to ``GetBlocks``: blocks with their transactions and commits."""

    TYPE: ClassVar[str] = "Blocks"
    blocks: tuple[Block, ...]

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"blocks": [b.to_data() for b in self.blocks]}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Blocks:
        """Parse the ``data`` object."""
        w = cls.TYPE
        raw = _list(_get(d, "blocks", w), MAX_GET_BLOCKS, w + ".blocks")
        return cls(tuple(Block.from_data(b, f"{w}.blocks[{n}]") for n, b in enumerate(raw)))


@dataclass(frozen=True, slots=True)
class GetPending:
    """Ask for unconfirmed transactions: those named, or all (``txids`` None)."""

    TYPE: ClassVar[str] = "GetPending"
    txids: tuple[str, ...] | None = None

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {} if self.txids is None else {"txids": list(self.txids)}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> GetPending:
        """Parse the ``data`` object."""
        w = cls.TYPE
        if d.get("txids") is None:
            return cls(None)
        raw = _list(d["txids"], MAX_LIST, w + ".txids")
        return cls(tuple(_hex32_value(t, f"{w}.txids[{n}]") for n, t in enumerate(raw)))


@dataclass(frozen=True, slots=True)
class Pending:
    """Answer to ``GetPending``: transactions and the vote batches on them."""

    TYPE: ClassVar[str] = "Pending"
    txs: tuple[Transaction, ...]
    votes: tuple[Votes, ...]

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"txs": [t.to_json() for t in self.txs],
                "votes": [v.to_data() for v in self.votes]}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Pending:
        """Parse the ``data`` object."""
        w = cls.TYPE
        txs = _list(_get(d, "txs", w), MAX_LIST, w + ".txs")
        votes = _list(_get(d, "votes", w), MAX_LIST, w + ".votes")
        return cls(tuple(_tx(t, f"{w}.txs[{n}]") for n, t in enumerate(txs)),
                   tuple(Votes.from_data(_obj(v, f"{w}.votes[{n}]"))
                         for n, v in enumerate(votes)))


@dataclass(frozen=True, slots=True)
class StartHeight:
    """Regtest: start ``height`` now (from an authenticated masternode, SPEC 7.3)."""

    TYPE: ClassVar[str] = "StartHeight"
    height: int

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object."""
        return {"height": self.height}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> StartHeight:
        """Parse the ``data`` object."""
        return cls(_int(d, "height", 0, U64_MAX, cls.TYPE))


Message: TypeAlias = (Hello | Auth | Addr | Ping | Pong | Tx | Votes | Proposal | Prevote
                      | Precommit | Status | GetBlocks | Blocks | GetPending | Pending
                      | StartHeight)

MESSAGE_TYPES: dict[str, Any] = {
    c.TYPE: c for c in (Hello, Auth, Addr, Ping, Pong, Tx, Votes, Proposal, Prevote,
                        Precommit, Status, GetBlocks, Blocks, GetPending, Pending,
                        StartHeight)}


def parse(frame: bytes | str, max_bytes: int = MAX_P2P_MESSAGE_BYTES) -> Message:
    """One text frame to its message; ``ParseError`` (``MessageTooLarge`` over
    ``max_bytes``) for anything else. Never raises another exception."""
    size = len(frame)
    if isinstance(frame, str) and size <= max_bytes < 4 * size:
        # A character is 1-4 bytes of UTF-8: count them only where it matters.
        size = len(frame.encode("utf-8", "replace"))
    if size > max_bytes:
        raise MessageTooLarge(f"message of {size} bytes (limit {max_bytes})")
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as e:
        raise ParseError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ParseError("a message is an object {type, data}")
    t = obj.get("type")
    cls = MESSAGE_TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise ParseError(f"unknown message type {str(t)[:40]!r}")
    msg: Message = cls.from_data(_obj(obj.get("data"), f"{t}.data"))
    return msg


def encode(msg: Message) -> bytes:
    """The text frame of ``msg`` (UTF-8 JSON), made once for any number of links."""
    return orjson.dumps({"type": msg.TYPE, "data": msg.to_data()})


# -- signed bytes (SPEC 7.2, 7.4, 7.5) -------------------------------------------------

def auth_bytes(network_id: bytes, role: int, ephemeral: bytes, peer_ephemeral: bytes,
               public_key: bytes, peer_public_key: bytes) -> bytes:
    """``b"TIMEP2P/2" + network_id + role u8 (0: the signer dialled, 1: it accepted) +
    own ephemeral + peer's ephemeral + own public_key + peer's public_key``."""
    return (b"TIMEP2P/2" + network_id + bytes((role,)) + ephemeral + peer_ephemeral
            + public_key + peer_public_key)


def addr_bytes(network_id: bytes, public_key: str, listen: str, timestamp: int) -> bytes:
    """``b"TIMEADDR/1" + network_id + public_key + listen ASCII + timestamp i64``."""
    return (b"TIMEADDR/1" + network_id + bytes.fromhex(public_key) + listen.encode("ascii")
            + struct.pack("<q", timestamp))


def votes_bytes(network_id: bytes, voter: str, batch: int,
                votes: Iterable[tuple[str, bool]]) -> bytes:
    """``b"TIMEVOTES/1" + network_id + voter + batch u64 + count u32`` + per vote
    ``txid (32 bytes) + approve u8``."""
    votes = tuple(votes)
    parts = [b"TIMEVOTES/1", network_id, bytes.fromhex(voter),
             struct.pack("<QI", batch, len(votes))]
    for txid, approve in votes:
        parts.append(bytes.fromhex(txid))
        parts.append(b"\x01" if approve else b"\x00")
    return b"".join(parts)


def proposal_bytes(network_id: bytes, height: int, round_: int, valid_round: int,
                   block_hash: str) -> bytes:
    """``b"TIMEPROPOSAL/1" + network_id + height u64 + round u32 + valid_round i32 +
    block hash``."""
    return (b"TIMEPROPOSAL/1" + network_id + struct.pack("<QIi", height, round_, valid_round)
            + bytes.fromhex(block_hash))


def bft_bytes(network_id: bytes, step: int, height: int, round_: int,
              block_hash: str | None) -> bytes:
    """``b"TIMEBFT/1" + network_id + step u8 + height u64 + round u32 + block hash``
    (32 zero bytes for nil); step 1 prevote, 2 precommit."""
    return (b"TIMEBFT/1" + network_id + struct.pack("<BQI", step, height, round_)
            + (ZERO_HASH if block_hash is None else bytes.fromhex(block_hash)))


# -- signing and checking ------------------------------------------------------------

def _pub(key: SigningKey) -> bytes:
    return key.verify_key.encode()


def _check(public_key: bytes, message: bytes, signature: str, what: str) -> None:
    if not verify(public_key, message, bytes.fromhex(signature)):
        raise BadSignature(f"{what}: signature does not verify")


def sign_auth(key: SigningKey, network_id: bytes, role: int, ephemeral: bytes,
              peer_ephemeral: bytes, peer_key: str) -> Auth:
    """Our ``Auth`` on a link where we have ``role`` (0 dialled, 1 accepted), sent our
    ``ephemeral`` and got the peer's ``Hello`` with ``peer_ephemeral`` and ``peer_key``."""
    signed = auth_bytes(network_id, role, ephemeral, peer_ephemeral, _pub(key),
                        bytes.fromhex(peer_key))
    return Auth(key.sign(signed).signature.hex())


def verify_auth(auth: Auth, network_id: bytes, role: int, ephemeral: bytes,
                peer_ephemeral: bytes, public_key: str, peer_key: str) -> None:
    """Check a peer's ``Auth`` on a link where *we* have ``role`` and sent
    ``ephemeral``: signed by ``peer_key`` in the other role, over its ephemeral then
    ours, its key then ours. A relayed handshake fails here: a third party that dialled
    both sides makes each of them the acceptor, so neither signed the dialler's role."""
    peer = bytes.fromhex(peer_key)
    signed = auth_bytes(network_id, 1 - role, peer_ephemeral, ephemeral, peer,
                        bytes.fromhex(public_key))
    _check(peer, signed, auth.signature, "Auth")


def sign_addr(key: SigningKey, network_id: bytes, listen: str, timestamp: int) -> Addr:
    """An ``Addr`` record saying that ``key`` listens at ``listen``."""
    pub = _pub(key).hex()
    sig = key.sign(addr_bytes(network_id, pub, listen, timestamp)).signature.hex()
    return Addr(pub, listen, timestamp, sig)


def verify_addr(addr: Addr, network_id: bytes) -> None:
    """Check an ``Addr`` record's signature by its own ``public_key``."""
    _check(bytes.fromhex(addr.public_key),
           addr_bytes(network_id, addr.public_key, addr.listen, addr.timestamp),
           addr.signature, "Addr")


def sign_votes(key: SigningKey, network_id: bytes, batch: int,
               votes: Iterable[tuple[str, bool]]) -> Votes:
    """A signed batch of ``(txid, approve)`` votes numbered ``batch``."""
    votes = tuple(votes)
    voter = _pub(key).hex()
    sig = key.sign(votes_bytes(network_id, voter, batch, votes)).signature.hex()
    return Votes(voter, batch, votes, sig)


def votes_check(votes: Votes, network_id: bytes) -> tuple[bytes, bytes, bytes]:
    """``(public key, message, signature)`` of a batch, for ``crypto.verify_batch``
    (many batches checked at once, off the event loop)."""
    return (bytes.fromhex(votes.voter), votes.signed_bytes(network_id),
            bytes.fromhex(votes.signature))


def verify_votes(votes: Votes, network_id: bytes) -> None:
    """Check a vote batch's signature by its ``voter``."""
    _check(bytes.fromhex(votes.voter), votes.signed_bytes(network_id), votes.signature, "Votes")


def sign_proposal(key: SigningKey, network_id: bytes, height: int, round_: int,
                  valid_round: int, block: Block,
                  certificates: Iterable[Votes] = ()) -> Proposal:
    """A signed ``Proposal`` of ``block`` for (height, round)."""
    sig = key.sign(proposal_bytes(network_id, height, round_, valid_round, block.hash))
    return Proposal(height, round_, valid_round, block, tuple(certificates),
                    sig.signature.hex())


def verify_proposal(proposal: Proposal, network_id: bytes, proposer: str) -> None:
    """Check a ``Proposal``'s signature by ``proposer`` (the proposer of its height and
    round, SPEC 7.5: the message does not name its signer)."""
    _check(bytes.fromhex(proposer), proposal.signed_bytes(network_id), proposal.signature,
           "Proposal")


def sign_prevote(key: SigningKey, network_id: bytes, height: int, round_: int,
                 block_hash: str | None) -> Prevote:
    """A signed ``Prevote`` for ``block_hash`` (None: nil)."""
    sig = key.sign(bft_bytes(network_id, STEP_PREVOTE, height, round_, block_hash))
    return Prevote(height, round_, block_hash, _pub(key).hex(), sig.signature.hex())


def sign_precommit(key: SigningKey, network_id: bytes, height: int, round_: int,
                   block_hash: str | None) -> Precommit:
    """A signed ``Precommit`` for ``block_hash`` (None: nil)."""
    sig = key.sign(bft_bytes(network_id, STEP_PRECOMMIT, height, round_, block_hash))
    return Precommit(height, round_, block_hash, _pub(key).hex(), sig.signature.hex())


def verify_bft(vote: Prevote | Precommit, network_id: bytes) -> None:
    """Check a ``Prevote``'s or ``Precommit``'s signature by its ``voter``."""
    _check(bytes.fromhex(vote.voter), vote.signed_bytes(network_id), vote.signature, vote.TYPE)


def verify_commit(block: Block, network_id: bytes) -> list[str]:
    """The voters of ``block.commit`` whose precommits for its hash verify; raises
    ``BadSignature`` at the first that does not (whether they make q of the voting
    set is the chain's rule)."""
    voters = []
    for c in block.commit or ():
        _check(bytes.fromhex(c.voter),
               bft_bytes(network_id, STEP_PRECOMMIT, block.height, c.round, block.hash),
               c.signature, "commit")
        voters.append(c.voter)
    return voters
