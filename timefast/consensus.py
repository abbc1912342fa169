"""Block consensus: Tendermint rounds as a sans-I/O state machine (SPEC 7.5).

This is Algorithm 1 of "The latest gossip on BFT consensus" (Buchman, Kwon,
Milosevic, 2018, arXiv 1807.04938), followed line by line; every handler names the
lines of the paper's pseudocode it implements.  The machine owns no socket, clock or
task: the caller feeds it messages (already authenticated: signing and checking
signatures is the caller's job) and fired timeouts, and each call returns an
:class:`Output`: a :class:`Record` to write durably *before* anything else, the
messages to broadcast, the timeouts to schedule, a :class:`Decision` and the
equivocation :class:`Evidence` that call uncovered.

Where SPEC 7 differs from the paper:

* every threshold the paper writes 2f+1 is q = ceil(2n/3)
  (:func:`timefast.rules.quorum`); f+1 (f = floor((n-1)/3),
  :func:`timefast.rules.faults`) is used only to skip to a higher round;
* the proposer of (h, r) is ``sorted(validators)[(h + r) mod n]``
  (:func:`timefast.rules.proposer`);
* a decision ends the height: the caller starts the next one with
  :meth:`Consensus.start_height` when SPEC's block interval says so (the paper's
  line 52-54 would start it at once);
* values are opaque block hashes; the caller keeps the blocks and answers
  ``valid(hash)`` (the paper's valid(v)) and ``get_value(height, round)`` (the
  paper's getValue(); the round is passed because a block names the round it was
  made in);
* the proposer waits timeoutPropose too (line 21), and line 49 decides on q
  precommits for v once ``valid(v)`` (the caller holds the block), without the
  proposal message (:meth:`Consensus.on_block`): both keep a node live that lost
  part of its message log.

Equal voting power: one vote per validator.  A validator that signs two different
votes for one (round, step) is an equivocator: both messages are kept as
:class:`Evidence`, its first vote is the one that counts toward "q votes of any
kind" (lines 34 and 47), and, as for finality votes (SPEC 7.4), each of its votes
counts in the tally of its own value (nil and proposed values always, others up to
:data:`MAX_VOTES_PER_VOTER`).
Safety does not need them discounted (two tallies of q still share an honest
validator, who votes once), and liveness needs them: an honest validator that saw
the equivocator's other vote first could otherwise never see the polka that the
locked validators saw, and the height would stall.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# The thresholds and the proposer's rotation are the chain's rules, which the ledger
# checks blocks and commits against: one definition for both (rules is sans-I/O too).
from timefast import rules

TIMEOUT_PROPOSE = 3.0
TIMEOUT_PREVOTE = 1.0
TIMEOUT_PRECOMMIT = 1.0

# Bounds on what a faulty validator can make a node keep.  An honest proposer sends
# one proposal per round; of an equivocating one's, the first this many are kept,
# and beyond them only values that f+1 validators voted for.
MAX_PROPOSALS_PER_ROUND = 4
# Rounds above the current one for which a validator's messages are kept.  Honest
# validators only move up, so the lowest of them is dropped first.
MAX_FUTURE_ROUNDS_PER_VOTER = 8
# Different votes of one validator for one (round, step) that are counted, besides
# its votes for nil and for values proposed at this height (the only values the
# rules look at, and bounded by the proposals kept).
MAX_VOTES_PER_VOTER = 8
# Messages kept per sender for heights that have not started yet.
MAX_BUFFERED_PER_SENDER = 64
# Evidence kept in memory (every piece is also returned once in an Output).
MAX_EVIDENCE = 1024


class Step(enum.IntEnum):
    """The paper's step_p.  The values of PREVOTE and PRECOMMIT are the ``step``
    byte of the signed vote layout (SPEC 7.5)."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class TimeoutKind(enum.Enum):
    """Which of the paper's three timeouts fired."""

    PROPOSE = "propose"
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"


@dataclass(frozen=True, slots=True)
class Proposal:
    """⟨PROPOSAL, height, round, v, validRound⟩ as signed by ``proposer``."""

    height: int
    round: int
    valid_round: int
    block_hash: str
    proposer: str


@dataclass(frozen=True, slots=True)
class Prevote:
    """⟨PREVOTE, height, round, id(v)⟩; ``block_hash`` None is nil."""

    height: int
    round: int
    block_hash: str | None
    voter: str


@dataclass(frozen=True, slots=True)
class Precommit:
    """⟨PRECOMMIT, height, round, id(v)⟩; ``block_hash`` None is nil."""

    height: int
    round: int
    block_hash: str | None
    voter: str


Message = Proposal | Prevote | Precommit
Vote = Prevote | Precommit


def sender_of(message: Message) -> str:
    """The validator whose signature a message carries."""
    return message.proposer if isinstance(message, Proposal) else message.voter


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Base durations in seconds (SPEC 7.1); round r waits base + r × base/2."""

    propose: float = TIMEOUT_PROPOSE
    prevote: float = TIMEOUT_PREVOTE
    precommit: float = TIMEOUT_PRECOMMIT

    def seconds(self, kind: TimeoutKind, round: int) -> float:
        """How long the timeout ``kind`` of round ``round`` waits."""
        base = {
            TimeoutKind.PROPOSE: self.propose,
            TimeoutKind.PREVOTE: self.prevote,
            TimeoutKind.PRECOMMIT: self.precommit,
        }[kind]
        return base + round * base / 2


@dataclass(frozen=True, slots=True)
class Timeout:
    """Call ``on_timeout(kind, height, round)`` after ``seconds``."""

    kind: TimeoutKind
    height: int
    round: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Decision:
    """Block ``block_hash`` is committed at ``height``; ``commit`` holds the q
    precommits of ``round`` that decided it, in the order they arrived."""

    height: int
    round: int
    block_hash: str
    commit: tuple[Precommit, ...]


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two different messages signed by one validator for one (height, round, step)."""

    first: Message
    second: Message


@dataclass(frozen=True, slots=True)
class Record:
    """What must be durable before the messages of an Output leave (SPEC 7.5): the
    position (height, round, step), the four lock variables, and this node's own
    messages of the current round.  Restoring it (:meth:`Consensus.restore`) sends
    those messages again and never signs another for the same (height, round, step).
    """

    height: int
    round: int
    step: Step
    locked_value: str | None
    locked_round: int
    valid_value: str | None
    valid_round: int
    proposal: Proposal | None
    prevote: Prevote | None
    precommit: Precommit | None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (str, int, None and nested dicts) for the caller to store."""
        return {
            "height": self.height,
            "round": self.round,
            "step": int(self.step),
            "locked_value": self.locked_value,
            "locked_round": self.locked_round,
            "valid_value": self.valid_value,
            "valid_round": self.valid_round,
            "proposal": None if self.proposal is None else {
                "height": self.proposal.height,
                "round": self.proposal.round,
                "valid_round": self.proposal.valid_round,
                "block_hash": self.proposal.block_hash,
                "proposer": self.proposal.proposer,
            },
            "prevote": _vote_dict(self.prevote),
            "precommit": _vote_dict(self.precommit),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """The inverse of :meth:`to_dict`; ValueError for anything else."""
        try:
            p = d["proposal"]
            proposal = None if p is None else Proposal(
                _int(p["height"]), _int(p["round"]), _int(p["valid_round"]),
                _hash(p["block_hash"]), _str(p["proposer"]),
            )
            pv, pc = d["prevote"], d["precommit"]
            prevote = None if pv is None else Prevote(
                _int(pv["height"]), _int(pv["round"]), _opt_hash(pv["block_hash"]),
                _str(pv["voter"]),
            )
            precommit = None if pc is None else Precommit(
                _int(pc["height"]), _int(pc["round"]), _opt_hash(pc["block_hash"]),
                _str(pc["voter"]),
            )
            return cls(
                height=_int(d["height"]),
                round=_int(d["round"]),
                step=Step(_int(d["step"])),
                locked_value=_opt_hash(d["locked_value"]),
                locked_round=_int(d["locked_round"]),
                valid_value=_opt_hash(d["valid_value"]),
                valid_round=_int(d["valid_round"]),
                proposal=proposal,
                prevote=prevote,
                precommit=precommit,
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad consensus record: {e!r}") from e


def _vote_dict(v: Vote | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"height": v.height, "round": v.round, "block_hash": v.block_hash, "voter": v.voter}


def _int(x: Any) -> int:
    if type(x) is not int:
        raise ValueError(f"not an integer: {x!r}")
    return x


def _str(x: Any) -> str:
    if not isinstance(x, str) or not x:
        raise ValueError(f"not a non-empty string: {x!r}")
    return x


def _hash(x: Any) -> str:
    return _str(x)


def _opt_hash(x: Any) -> str | None:
    return None if x is None else _str(x)


@dataclass(slots=True)
class Output:
    """What one call asks of the caller, in this order: write ``persist`` durably
    (when not None), then send ``messages`` (to every peer, and keep them for
    peers that ask again), schedule ``timeouts``, apply ``decision``, keep and log
    ``evidence``."""

    persist: Record | None = None
    messages: list[Message] = field(default_factory=list)
    timeouts: list[Timeout] = field(default_factory=list)
    decision: Decision | None = None
    evidence: list[Evidence] = field(default_factory=list)


class _Round:
    """The message log of one round of the current height, with running tallies
    (one per voter and value) and the paper's "for the first time" flags."""

    __slots__ = (
        "polka_done",
        "precommit_count",
        "precommit_timer",
        "precommits",
        "prevote_count",
        "prevote_timer",
        "prevotes",
        "proposals",
        "senders",
    )

    def __init__(self) -> None:
        self.proposals: dict[str, Proposal] = {}
        # voter → its votes in arrival order; the first is the one that counts
        # toward "q votes of any kind".
        self.prevotes: dict[str, list[Prevote]] = {}
        self.precommits: dict[str, list[Precommit]] = {}
        self.prevote_count: dict[str | None, int] = {}
        self.precommit_count: dict[str | None, int] = {}
        self.senders: set[str] = set()
        self.prevote_timer = False  # line 34 fired
        self.polka_done = False  # line 36 fired
        self.precommit_timer = False  # line 47 fired


class Consensus:
    """One validator's Tendermint state machine for a fixed voting set.

    ``validators``: the public keys (hex) of the voting set, ``me`` one of them.
    ``get_value(height, round)`` returns the hash of a new block this node proposes
    (the caller builds and keeps the block); ``valid(hash)`` says whether the block
    with that hash is valid (False when the caller does not have it).  A positive
    answer is remembered for the height, a negative one until the round changes.

    Each public method returns an :class:`Output`.
    """

    def __init__(
        self,
        validators: Iterable[str],
        me: str,
        *,
        get_value: Callable[[int, int], str],
        valid: Callable[[str], bool],
        timeouts: Timeouts | None = None,
    ) -> None:
        self.validators: tuple[str, ...] = tuple(sorted(set(validators)))
        if not self.validators:
            raise ValueError("the voting set is empty")
        if me not in self.validators:
            raise ValueError("this node is not in the voting set")
        self.me = me
        self.n = len(self.validators)
        self.q = rules.quorum(self.n)  # the votes that make a polka, a lock or a commit
        self.f = rules.faults(self.n)
        self._members = frozenset(self.validators)
        self._get_value = get_value
        self._valid_fn = valid
        self.timeouts = timeouts or Timeouts()
        # The paper's variables (lines 2-9); _height None: no height started yet.
        self._height: int | None = None
        self._round = 0
        self._step = Step.PROPOSE
        self._locked_value: str | None = None
        self._locked_round = -1
        self._valid_value: str | None = None
        self._valid_round = -1
        self._decision: Decision | None = None
        self._rounds: dict[int, _Round] = {}
        self._own: dict[tuple[int, type], Message] = {}
        self._adopted: set[tuple[int, type]] = set()
        self._future_rounds: dict[str, set[int]] = {}
        self._valid_yes: set[str] = set()
        self._valid_no: dict[str, int] = {}
        # Values proposed at this height -> in how many rounds the log holds them.
        self._proposed: dict[str, int] = {}
        self._buffer: dict[int, dict[Message, None]] = {}
        self._buffered: dict[str, int] = {}
        self._evidence_keys: set[tuple[int, type, str]] = set()
        self.evidence: deque[Evidence] = deque(maxlen=MAX_EVIDENCE)
        self._dirty: set[int] = set()
        self._out = Output()
        self._last_record: Record | None = None
        self._last_state: tuple[Any, ...] = ()

    # -- what the node shows (getinfo's consensus {height, round, step}) --

    @property
    def height(self) -> int | None:
        """The height being decided (None before the first ``start_height``)."""
        return self._height

    @property
    def round(self) -> int:
        """round_p."""
        return self._round

    @property
    def step(self) -> Step:
        """step_p."""
        return self._step

    @property
    def decision(self) -> Decision | None:
        """The decision of the current height, once made."""
        return self._decision

    @property
    def locked(self) -> tuple[str | None, int]:
        """(lockedValue, lockedRound)."""
        return self._locked_value, self._locked_round

    @property
    def valid(self) -> tuple[str | None, int]:
        """(validValue, validRound)."""
        return self._valid_value, self._valid_round

    def proposer(self, height: int, round: int) -> str:
        """proposer(h, r) = sorted(validators)[(h + r) mod n] (SPEC 7.5)."""
        return rules.proposer(self.validators, height, round)

    def record(self) -> Record | None:
        """The state :class:`Output.persist` would hold now (None before a height)."""
        if self._height is None:
            return None
        r = self._round
        proposal = self._own.get((r, Proposal))
        prevote = self._own.get((r, Prevote))
        precommit = self._own.get((r, Precommit))
        assert proposal is None or isinstance(proposal, Proposal)
        assert prevote is None or isinstance(prevote, Prevote)
        assert precommit is None or isinstance(precommit, Precommit)
        return Record(
            self._height, r, self._step,
            self._locked_value, self._locked_round, self._valid_value, self._valid_round,
            proposal, prevote, precommit,
        )

    # -- inputs --

    def start_height(self, height: int) -> Output:
        """Start deciding ``height`` (lines 10, 52-54 and StartRound(0)): the locks and
        the message log are reset, messages kept for this height are applied."""
        if height < 0 or (self._height is not None and height <= self._height):
            raise ValueError(f"height {height} does not follow {self._height}")
        self._begin()
        self._reset(height)
        self._apply_buffer()
        self._start_round(0)
        self._run()
        return self._finish()

    def restore(self, record: Record) -> Output:
        """Resume from the last persisted record after a restart: the same position
        and locks, and this node's messages of that round sent again (the Output
        lists them), never different ones.  Use it only while the ledger does not hold
        the block of ``record.height`` yet (else start the next height)."""
        if self._height is not None and record.height < self._height:
            raise ValueError("the record is older than the current height")
        own = [m for m in (record.proposal, record.prevote, record.precommit) if m is not None]
        for m in own:
            if (m.height, m.round, sender_of(m)) != (record.height, record.round, self.me):
                raise ValueError("the record holds a message that is not this node's own")
        if record.round < 0 or max(record.locked_round, record.valid_round) > record.round:
            raise ValueError("the record's rounds are inconsistent")
        self._begin()
        self._reset(record.height)
        self._round = record.round
        self._step = record.step
        self._locked_value, self._locked_round = record.locked_value, record.locked_round
        self._valid_value, self._valid_round = record.valid_value, record.valid_round
        for m in own:
            self._own[(m.round, type(m))] = m
            self._add(m)
            self._out.messages.append(m)
        self._apply_buffer()
        if self._step == Step.PROPOSE:
            if record.proposal is None and self.proposer(record.height, record.round) == self.me:
                # Nothing was proposed in this round yet: StartRound may sign now.
                self._start_round(record.round)
            else:
                # The timer of line 21 died with the process.
                self._schedule(TimeoutKind.PROPOSE)
        self._dirty.update(self._rounds)
        self._last_record = record
        self._run()
        return self._finish()

    def on_message(self, message: Message) -> Output:
        """Take a Proposal, Prevote or Precommit (its signature already checked)."""
        self._begin()
        if self._height is None or message.height > self._height:
            self._keep_for_later(message)
        elif message.height == self._height and self._decision is None and self._add(message):
            self._run()
        return self._finish()

    on_proposal = on_message

    # -- what the caller asks before and after handing a message over --

    def admits(self, message: Message) -> bool:
        """Whether ``on_message`` would keep ``message`` now: from a member, of this
        height (not decided) or a later one, within the bounds (see the module
        docstring), not held already.  Changes nothing; the caller asks it before it
        checks the signature, so what would be dropped is dropped unread."""
        sender = sender_of(message)
        if sender not in self._members or message.round < 0:
            return False
        if self._height is None or message.height > self._height:
            kept = self._buffer.get(message.height, {})
            return message not in kept and \
                self._buffered.get(sender, 0) < MAX_BUFFERED_PER_SENDER
        return message.height == self._height and self._decision is None \
            and self._admissible(message)

    def held(self, message: Message) -> int:
        """How many messages of ``message``'s signer for its (height, round, step) the
        log holds (proposals: of its round), or keeps for a later height."""
        sender = sender_of(message)
        if self._height is None or message.height > self._height:
            return sum(1 for x in self._buffer.get(message.height, ())
                       if type(x) is type(message) and x.round == message.round
                       and sender_of(x) == sender)
        if message.height != self._height:
            return 0
        rd = self._rounds.get(message.round)
        if rd is None:
            return 0
        if isinstance(message, Proposal):
            return len(rd.proposals)
        log = rd.prevotes if isinstance(message, Prevote) else rd.precommits
        return len(log.get(sender, ()))

    def holds(self, message: Message) -> bool:
        """Whether the log holds ``message`` (or keeps it for a later height)."""
        if self._height is None or message.height > self._height:
            return message in self._buffer.get(message.height, {})
        rd = self._rounds.get(message.round) if message.height == self._height else None
        if rd is None:
            return False
        if isinstance(message, Proposal):
            return rd.proposals.get(message.block_hash) == message
        log = rd.prevotes if isinstance(message, Prevote) else rd.precommits
        return message in log.get(sender_of(message), ())

    def wanted(self) -> set[str]:
        """The values whose blocks the rules of this height can still use: the
        locked and valid values, the first proposal of the current round and of each
        later one, and every value with f+1 prevotes or precommits in a round (a
        polka or a commit needs q, so f+1 first).  The caller may drop other blocks
        (a later need is met by fetching them, :meth:`on_block`)."""
        out = {v for v in (self._locked_value, self._valid_value) if v is not None}
        for r, rd in self._rounds.items():
            if r >= self._round and rd.proposals:
                out.add(next(iter(rd.proposals)))
            for count in (rd.prevote_count, rd.precommit_count):
                out.update(v for v, n in count.items() if v is not None and n > self.f)
        return out

    def support(self, value: str) -> int:
        """The most prevotes or precommits ``value`` has in one round of this height."""
        return max((max(rd.prevote_count.get(value, 0), rd.precommit_count.get(value, 0))
                    for rd in self._rounds.values()), default=0)
    on_prevote = on_message
    on_precommit = on_message

    def on_block(self, block_hash: str) -> Output:
        """The caller now holds the block ``block_hash`` (fetched by hash after its
        proposal was missed): an earlier negative ``valid`` answer is forgotten and
        the rules are applied again, so q precommits for it decide it."""
        self._begin()
        if self._height is not None and self._decision is None:
            self._valid_no.pop(block_hash, None)
            self._dirty.update(self._rounds)
            self._run()
        return self._finish()

    def on_timeout(self, kind: TimeoutKind, height: int, round: int) -> Output:
        """A timeout scheduled by an earlier Output fired (lines 57-67)."""
        self._begin()
        if height == self._height and round == self._round and self._decision is None:
            if kind is TimeoutKind.PROPOSE and self._step == Step.PROPOSE:
                # Lines 57-60 (the paper's line 58 reads step_p = propose).
                self._broadcast(Prevote(height, round, None, self.me))
                self._step = Step.PREVOTE
            elif kind is TimeoutKind.PREVOTE and self._step == Step.PREVOTE:
                # Lines 61-64.
                self._broadcast(Precommit(height, round, None, self.me))
                self._step = Step.PRECOMMIT
            elif kind is TimeoutKind.PRECOMMIT:
                # Lines 65-67.
                self._start_round(round + 1)
            self._run()
        return self._finish()

    # -- the algorithm --

    def _start_round(self, round: int) -> None:
        """Lines 11-21: StartRound(round)."""
        assert self._height is not None
        self._round = round
        self._step = Step.PROPOSE
        self._dirty.add(round)
        if self.proposer(self._height, round) == self.me:
            if self._valid_value is not None:
                value, valid_round = self._valid_value, self._valid_round  # lines 15-16
            else:
                value, valid_round = self._get_value(self._height, round), -1  # line 18
            self._broadcast(Proposal(self._height, round, valid_round, value, self.me))  # 19
        # Line 21, for the proposer too (as CometBFT does): a proposer whose log lost
        # the polka of its own validRound (a restart) cannot prevote its proposal by
        # line 28, and without this timer the round would wait for it forever.
        self._schedule(TimeoutKind.PROPOSE)

    def _run(self) -> None:
        """Apply the upon-rules until none fires.  Each rule fires at most once per
        (round, step), and rounds only grow, so this ends."""
        while self._decision is None:
            dirty, self._dirty = self._dirty, set()
            skip_to = -1
            for r in sorted(dirty):
                if self._rule_decide(r):
                    return
                rd = self._rounds.get(r)
                if r > self._round and rd is not None and len(rd.senders) >= self.f + 1:
                    skip_to = r
            if skip_to > self._round:
                # Lines 55-56: f+1 validators are in a higher round.
                self._start_round(skip_to)
                continue
            if not self._round_rules() and not self._dirty:
                return

    def _round_rules(self) -> bool:
        """The rules about the current round (lines 22-48); True when one changed the
        step or sent a message."""
        assert self._height is not None
        h, r = self._height, self._round
        rd = self._round_log(r)
        if self._step == Step.PROPOSE:
            for p in list(rd.proposals.values()):
                v, vr = p.block_hash, p.valid_round
                if vr == -1:
                    # Lines 22-27.
                    ok = self._valid(v) and (self._locked_round == -1 or self._locked_value == v)
                    self._broadcast(Prevote(h, r, v if ok else None, self.me))
                    self._step = Step.PREVOTE
                    return True
                polka = self._rounds.get(vr)
                if 0 <= vr < r and polka is not None and polka.prevote_count.get(v, 0) >= self.q:
                    # Lines 28-33.
                    ok = self._valid(v) and (self._locked_round <= vr or self._locked_value == v)
                    self._broadcast(Prevote(h, r, v if ok else None, self.me))
                    self._step = Step.PREVOTE
                    return True
        if self._step == Step.PREVOTE and not rd.prevote_timer and len(rd.prevotes) >= self.q:
            # Lines 34-35.
            rd.prevote_timer = True
            self._schedule(TimeoutKind.PREVOTE)
        if self._step >= Step.PREVOTE and not rd.polka_done:
            for p in list(rd.proposals.values()):
                v = p.block_hash
                if rd.prevote_count.get(v, 0) >= self.q and self._valid(v):
                    # Lines 36-43.
                    rd.polka_done = True
                    if self._step == Step.PREVOTE:
                        self._locked_value, self._locked_round = v, r
                        self._broadcast(Precommit(h, r, v, self.me))
                        self._step = Step.PRECOMMIT
                    self._valid_value, self._valid_round = v, r
                    return True
        if self._step == Step.PREVOTE and rd.prevote_count.get(None, 0) >= self.q:
            # Lines 44-46.
            self._broadcast(Precommit(h, r, None, self.me))
            self._step = Step.PRECOMMIT
            return True
        if not rd.precommit_timer and len(rd.precommits) >= self.q:
            # Lines 47-48.
            rd.precommit_timer = True
            self._schedule(TimeoutKind.PRECOMMIT)
        return False

    def _rule_decide(self, r: int) -> bool:
        """Lines 49-54 for round r: q precommits for v decide v once v is known and
        valid.  The paper asks for the proposal of v here only to have v; with values
        that are block hashes, ``valid(v)`` (False for a block the caller does not
        hold) stands for it, so a node that missed the proposal (a faulty proposer's
        or one dropped over MAX_PROPOSALS_PER_ROUND) decides once it fetched the
        block (:meth:`on_block`).  Safe: q precommits for v hold f+1 honest ones,
        each made after a proposal and a polka for v."""
        assert self._height is not None
        rd = self._rounds.get(r)
        if rd is None:
            return False
        for v, count in list(rd.precommit_count.items()):
            if v is not None and count >= self.q and self._valid(v):
                commit = tuple(
                    c for votes in rd.precommits.values() for c in votes if c.block_hash == v
                )
                self._decision = Decision(self._height, r, v, commit[: self.q])
                self._out.decision = self._decision
                return True
        return False

    # -- the message log --

    def _admissible(self, m: Message) -> bool:
        """Whether the log of the current height would take ``m`` (a member's, well
        formed, within the bounds, not held yet).  Changes nothing."""
        sender = sender_of(m)
        if sender not in self._members or m.round < 0:
            return False
        if isinstance(m, Proposal) and (
            not m.block_hash
            or not -1 <= m.valid_round < m.round
            or sender != self.proposer(m.height, m.round)
        ):
            return False
        if m.round > self._round and not self._fits_ahead(sender, m.round):
            return False
        rd = self._rounds.get(m.round)
        if rd is None:
            return True
        if isinstance(m, Proposal):
            if m.block_hash in rd.proposals:
                return False
            # Over the bound, only a value that some honest validator voted for (f+1
            # votes) is kept: at most 2n/(f+1) such values per round.
            return len(rd.proposals) < MAX_PROPOSALS_PER_ROUND or max(
                rd.prevote_count.get(m.block_hash, 0), rd.precommit_count.get(m.block_hash, 0)
            ) >= self.f + 1
        votes = (rd.prevotes if isinstance(m, Prevote) else rd.precommits).get(sender, ())
        if m in votes:
            return False
        # Past the bound only the values the rules look at: nil and proposed ones.
        return len(votes) < MAX_VOTES_PER_VOTER or m.block_hash is None \
            or m.block_hash in self._proposed

    def _add(self, m: Message) -> bool:
        """Put a message of the current height in the log; False when it is ignored
        (an outsider, a duplicate, malformed, over a bound)."""
        assert self._height is not None
        if not self._admissible(m):
            return False
        sender = sender_of(m)
        if m.round > self._round:
            self._room_ahead(sender, m.round)
        rd = self._round_log(m.round)
        if isinstance(m, Proposal):
            if rd.proposals:
                self._equivocation(next(iter(rd.proposals.values())), m)
            rd.proposals[m.block_hash] = m
            self._proposed[m.block_hash] = self._proposed.get(m.block_hash, 0) + 1
        else:
            log: dict[str, Any] = rd.prevotes if isinstance(m, Prevote) else rd.precommits
            count = rd.prevote_count if isinstance(m, Prevote) else rd.precommit_count
            votes = log.setdefault(sender, [])
            if votes:
                self._equivocation(votes[0], m)
            votes.append(m)
            count[m.block_hash] = count.get(m.block_hash, 0) + 1
        rd.senders.add(sender)
        self._dirty.add(m.round)
        if sender == self.me and (m.round, type(m)) not in self._own:
            # Signed by this node in an earlier life (a restore from an old backup,
            # a crash before its record was written): it binds this node all the
            # same, so it is adopted and nothing different is signed for that
            # (round, step).  SPEC 7.5 has the caller fetch these from peers first.
            self._own[(m.round, type(m))] = m
            self._adopted.add((m.round, type(m)))
        return True

    def _fits_ahead(self, sender: str, round: int) -> bool:
        """Whether ``sender`` may have messages kept for ``round``, above the current
        one: one of its kept rounds ahead, or room for another, or higher than the
        lowest (which ``_room_ahead`` then drops)."""
        rounds = [x for x in self._future_rounds.get(sender, ()) if x > self._round]
        return round in rounds or len(rounds) < MAX_FUTURE_ROUNDS_PER_VOTER \
            or round > min(rounds)

    def _room_ahead(self, sender: str, round: int) -> bool:
        """Bound the rounds above the current one a sender can fill; drop its lowest
        such round when it moves higher (honest validators only move up)."""
        rounds = {x for x in self._future_rounds.get(sender, ()) if x > self._round}
        self._future_rounds[sender] = rounds
        if round in rounds:
            return True
        if len(rounds) >= MAX_FUTURE_ROUNDS_PER_VOTER:
            lowest = min(rounds)
            if round < lowest:
                return False
            rounds.discard(lowest)
            self._forget(sender, lowest)
        rounds.add(round)
        return True

    def _forget(self, sender: str, round: int) -> None:
        rd = self._rounds.get(round)
        if rd is None:
            return
        for hash_, p in list(rd.proposals.items()):
            if p.proposer == sender:
                del rd.proposals[hash_]
                self._proposed[hash_] -= 1
                if not self._proposed[hash_]:
                    del self._proposed[hash_]
        for votes, count in ((rd.prevotes, rd.prevote_count), (rd.precommits, rd.precommit_count)):
            for v in votes.pop(sender, ()):
                count[v.block_hash] -= 1
        rd.senders.discard(sender)
        if not rd.senders:
            # A round ahead that only this sender filled: nothing of it stays, so a
            # sender climbing rounds one by one leaves no empty logs behind.
            del self._rounds[round]

    def _equivocation(self, first: Message, second: Message) -> None:
        # One piece per (height, step, validator) proves it byzantine: a validator
        # that equivocates in round after round leaves no more (each piece is logged
        # and stored by the caller).
        key = (first.height, type(first), sender_of(first))
        if key in self._evidence_keys:
            return
        self._evidence_keys.add(key)
        ev = Evidence(first, second)
        self.evidence.append(ev)
        self._out.evidence.append(ev)

    def _keep_for_later(self, m: Message) -> None:
        """Messages for a height not started yet wait for it (SPEC 7.5), bounded per
        sender; validity is checked when the height starts."""
        sender = sender_of(m)
        if sender not in self._members or m.round < 0:
            return
        kept = self._buffer.setdefault(m.height, {})
        if m in kept or self._buffered.get(sender, 0) >= MAX_BUFFERED_PER_SENDER:
            return
        kept[m] = None
        self._buffered[sender] = self._buffered.get(sender, 0) + 1

    def _apply_buffer(self) -> None:
        assert self._height is not None
        for h in [h for h in self._buffer if h <= self._height]:
            kept = self._buffer.pop(h)
            for m in kept:
                self._buffered[sender_of(m)] -= 1
                if h == self._height:
                    self._add(m)

    def _round_log(self, r: int) -> _Round:
        rd = self._rounds.get(r)
        if rd is None:
            rd = self._rounds[r] = _Round()
        return rd

    # -- helpers --

    def _reset(self, height: int) -> None:
        """Line 53: locks to their initial values and an empty message log."""
        self._height = height
        self._round = 0
        self._step = Step.PROPOSE
        self._locked_value, self._locked_round = None, -1
        self._valid_value, self._valid_round = None, -1
        self._decision = None
        self._rounds = {}
        self._own = {}
        self._adopted = set()
        self._future_rounds = {}
        self._valid_yes = set()
        self._valid_no = {}
        self._proposed = {}
        self._evidence_keys = set()
        self._dirty = set()

    def _valid(self, v: str) -> bool:
        if v in self._valid_yes:
            return True
        if self._valid_no.get(v) == self._round:
            return False
        if self._valid_fn(v):
            self._valid_yes.add(v)
            return True
        self._valid_no[v] = self._round
        return False

    def _broadcast(self, m: Message) -> None:
        """Sign-and-send: the message goes out and into this node's own log.  The
        invariant that makes restarts safe: never two different messages for one
        (height, round, step)."""
        key = (m.round, type(m))
        old = self._own.get(key)
        if old is not None and old != m:
            if key in self._adopted:
                return  # the adopted message stands; the step moves on all the same
            raise AssertionError(f"would sign {m!r} after {old!r}")
        self._own[key] = m
        self._out.messages.append(m)
        self._add(m)

    def _schedule(self, kind: TimeoutKind) -> None:
        assert self._height is not None
        self._out.timeouts.append(
            Timeout(kind, self._height, self._round, self.timeouts.seconds(kind, self._round))
        )

    def _begin(self) -> None:
        self._out = Output()

    def _finish(self) -> Output:
        out = self._out
        self._out = Output()
        # What a Record holds, cheaply: own messages are only ever added.
        state = (
            self._height, self._round, self._step, self._locked_value, self._locked_round,
            self._valid_value, self._valid_round, len(self._own),
        )
        if state != self._last_state:
            self._last_state = state
            record = self.record()
            if record is not None and record != self._last_record:
                out.persist = record
                self._last_record = record
        if out.decision is not None:
            # The height is over: its timers would only be ignored.
            out.timeouts = [t for t in out.timeouts if t.height != out.decision.height]
        return out
