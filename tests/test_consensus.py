"""The Tendermint state machine (timefast/consensus.py), without sockets or clocks.

Scenarios of the paper driven message by message, the thresholds of SPEC 7 (q, not
2f+1), restarts from the persisted record, and a seeded random scheduler with
byzantine validators, drops, duplicates, reordering and partitions.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

import pytest

from timefast.consensus import (
    MAX_BUFFERED_PER_SENDER,
    MAX_FUTURE_ROUNDS_PER_VOTER,
    MAX_VOTES_PER_VOTER,
    Consensus,
    Decision,
    Message,
    Output,
    Precommit,
    Prevote,
    Proposal,
    Record,
    Step,
    Timeout,
    TimeoutKind,
    Timeouts,
    sender_of,
)
from timefast.rules import faults, quorum

# Seeds per network size for the random simulation; raise it for a longer search
# (CONSENSUS_SIM_SEEDS=500 pytest tests/test_consensus.py -k random).
SIM_SEEDS = int(os.environ.get("CONSENSUS_SIM_SEEDS", "12"))

PROPOSE, PREVOTE, PRECOMMIT = TimeoutKind.PROPOSE, TimeoutKind.PREVOTE, TimeoutKind.PRECOMMIT


def key(i: int) -> str:
    """Validator i's public key; sorted(keys) is the order of i."""
    return f"{i:02x}" * 32


def value_of(k: str, h: int, r: int) -> str:
    return f"v-{k[:4]}-{h}-{r}"


def is_valid(v: str) -> bool:
    return v.startswith("v-")


def assert_covered(record: Record | None, messages: list[Message]) -> None:
    """What a node sends is covered by the record on disk: never past its
    position, and its messages of that round are the record's (SPEC 7.5)."""
    for m in messages:
        assert record is not None and (m.height, m.round) <= (record.height, record.round)
        if (m.height, m.round) == (record.height, record.round):
            assert m in (record.proposal, record.prevote, record.precommit), (m, record)


class Node:
    """A validator's caller: persists each record before sending, keeps timers."""

    def __init__(
        self, keys: list[str], me: str, cls: type[Consensus] = Consensus, tag: str = ""
    ) -> None:
        self.me = me
        self.tag = tag
        self.gets: list[tuple[int, int]] = []
        self.machine = cls(keys, me, get_value=self._get, valid=is_valid)
        self.records: list[Record] = []
        self.sent: list[Message] = []
        self.timers: list[Timeout] = []
        self.decisions: dict[int, Decision] = {}

    def _get(self, h: int, r: int) -> str:
        self.gets.append((h, r))
        return value_of(self.me, h, r) + self.tag

    def take(self, out: Output) -> list[Message]:
        if out.persist is not None:
            self.records.append(out.persist)  # durable before anything leaves
        assert_covered(self.records[-1] if self.records else None, out.messages)
        for m in out.messages:
            assert sender_of(m) == self.me
        self.sent.extend(out.messages)
        self.timers.extend(out.timeouts)
        if out.decision is not None:
            assert out.decision.height not in self.decisions
            self.decisions[out.decision.height] = out.decision
        return out.messages

    def restore(self, record: Record) -> Output:
        """Come back from a crash with ``record`` on disk; returns the Output."""
        self.records = [record]
        out = self.machine.restore(record)
        self.take(out)
        return out

    def fire(self, kind: TimeoutKind) -> list[Message]:
        """Fire this node's pending timers of ``kind`` (as their time passes)."""
        due = [t for t in self.timers if t.kind is kind]
        self.timers = [t for t in self.timers if t.kind is not kind]
        sent: list[Message] = []
        for t in due:
            sent += self.take(self.machine.on_timeout(t.kind, t.height, t.round))
        return sent

    def votes(self, cls: type, round: int | None = None) -> list[Message]:
        return [m for m in self.sent if isinstance(m, cls) and round in (None, m.round)]


class Cluster:
    """n validators with a network the test controls: ``deliver`` hands messages to
    chosen nodes; nothing moves by itself."""

    def __init__(self, n: int, cls: type[Consensus] = Consensus) -> None:
        self.keys = [key(i) for i in range(n)]
        self.nodes = {k: Node(self.keys, k, cls) for k in self.keys}
        self.wire: list[Message] = []

    def __getitem__(self, i: int) -> Node:
        return self.nodes[self.keys[i]]

    def start(self, h: int, among: Iterable[int] | None = None) -> None:
        for i in self._idx(among):
            self.wire += self[i].take(self[i].machine.start_height(h))

    def deliver(
        self, messages: Iterable[Message], to: Iterable[int] | None = None
    ) -> list[Message]:
        sent: list[Message] = []
        for m in list(messages):
            for i in self._idx(to):
                if self.keys[i] != sender_of(m):
                    sent += self[i].take(self[i].machine.on_message(m))
        self.wire += sent
        return sent

    def flush(self, among: Iterable[int] | None = None) -> None:
        """Deliver everything on the wire from and to ``among`` until it is quiet."""
        idx = set(self._idx(among))
        keys = {self.keys[i] for i in idx}
        done = 0
        while done < len(self.wire):
            m = self.wire[done]
            done += 1
            if sender_of(m) in keys:
                self.deliver([m], idx)

    def fire(self, kind: TimeoutKind, among: Iterable[int] | None = None) -> None:
        for i in self._idx(among):
            self.wire += self[i].fire(kind)

    def _idx(self, among: Iterable[int] | None) -> list[int]:
        return list(range(len(self.keys))) if among is None else list(among)


# -- thresholds, rotation, timeouts --


def test_the_machine_s_thresholds_are_the_rules() -> None:
    # q and f are timefast.rules' (tests/test_rules.py holds their table).
    keys = [key(i) for i in range(7)]
    m = Consensus(keys, keys[0], get_value=lambda h, r: "v-x", valid=is_valid)
    assert (m.q, m.f) == (quorum(7), faults(7)) == (5, 2)


def test_proposer_rotates_over_the_sorted_keys() -> None:
    keys = [key(i) for i in (3, 0, 2, 1)]
    m = Consensus(keys, keys[0], get_value=lambda h, r: "v-x", valid=is_valid)
    assert m.validators == tuple(sorted(keys))
    assert [m.proposer(5, r) for r in range(4)] == [key(1), key(2), key(3), key(0)]
    assert m.proposer(6, 0) == key(2)


def test_timeouts_grow_with_the_round() -> None:
    t = Timeouts()
    assert [t.seconds(PROPOSE, r) for r in (0, 1, 2)] == [3.0, 4.5, 6.0]
    assert [t.seconds(PREVOTE, r) for r in (0, 3)] == [1.0, 2.5]
    assert [t.seconds(PRECOMMIT, r) for r in (0, 2)] == [1.0, 2.0]
    c = Cluster(4)
    c.start(1, [0])  # key(0) is not the proposer of (1, 0): it waits timeoutPropose(0)
    assert c[0].timers == [Timeout(PROPOSE, 1, 0, 3.0)]


def test_a_voting_set_must_hold_this_node() -> None:
    with pytest.raises(ValueError):
        Consensus([key(1)], key(0), get_value=lambda h, r: "v", valid=is_valid)
    with pytest.raises(ValueError):
        Consensus([], key(0), get_value=lambda h, r: "v", valid=is_valid)


# -- n = 1 and the happy path for every size --


def test_a_single_validator_decides_each_height_by_itself() -> None:
    node = Node([key(0)], key(0))
    for h in (1, 2, 3):
        out = node.machine.start_height(h)
        v = value_of(key(0), h, 0)
        assert out.persist is not None and out.persist.prevote == Prevote(h, 0, v, key(0))
        assert out.messages == [
            Proposal(h, 0, -1, v, key(0)),
            Prevote(h, 0, v, key(0)),
            Precommit(h, 0, v, key(0)),
        ]
        assert out.decision == Decision(h, 0, v, (Precommit(h, 0, v, key(0)),))
        assert out.timeouts == []  # the height is over: no timer left to fire
        node.take(out)
    assert sorted(node.decisions) == [1, 2, 3]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 9])
def test_every_validator_decides_the_proposal_of_round_0(n: int) -> None:
    c = Cluster(n)
    c.start(7)
    c.flush()
    proposer = c[0].machine.proposer(7, 0)
    for node in c.nodes.values():
        d = node.decisions[7]
        assert (d.round, d.block_hash) == (0, value_of(proposer, 7, 0))
        assert len(d.commit) == quorum(n)
        assert len({p.voter for p in d.commit}) == quorum(n)
        assert all(p == Precommit(7, 0, d.block_hash, p.voter) for p in d.commit)


# -- the paper's scenarios --


def test_a_crashed_proposer_is_replaced_in_the_next_round() -> None:
    c = Cluster(4)
    up = [0, 2, 3]  # key(1) proposes (1, 0) and is down
    c.start(1, up)
    c.flush(up)
    assert all(not c[i].sent for i in up)  # nothing to vote on before timeoutPropose
    c.fire(PROPOSE, up)  # lines 57-60: prevote nil
    c.flush(up)  # lines 44-46: q nil prevotes → precommit nil; line 47 schedules
    assert all(c[i].votes(Precommit) == [Precommit(1, 0, None, key(i))] for i in up)
    c.fire(PRECOMMIT, up)  # lines 65-67: round 1, proposed by key(2)
    c.flush(up)
    for i in up:
        d = c[i].decisions[1]
        assert (d.round, d.block_hash) == (1, value_of(key(2), 1, 1))


def pick(wire: list[Message], cls: type, round: int, sender: str | None = None) -> Message:
    """The message of type ``cls`` and ``round`` on ``wire`` (from ``sender``)."""
    return next(m for m in wire if isinstance(m, cls) and m.round == round
                and sender in (None, sender_of(m)))


def test_a_round_without_a_polka_times_out_on_prevotes() -> None:
    c = Cluster(4)
    c.start(1)
    proposal = pick(c.wire, Proposal, 0)
    c.wire.remove(proposal)  # key(1)'s proposal reaches key(2) only
    c.deliver([proposal], [2])
    c.fire(PROPOSE, [0, 3])  # the other two give up on it
    c.flush()  # prevotes 2 × v, 2 × nil: no polka; line 34 schedules timeoutPrevote
    for node in c.nodes.values():
        assert node.machine.step == Step.PREVOTE
        assert [t for t in node.timers if t.kind is PREVOTE] == [Timeout(PREVOTE, 1, 0, 1.0)]
    c.fire(PREVOTE)  # lines 61-64
    c.flush()
    for node in c.nodes.values():
        assert node.machine.step == Step.PRECOMMIT and node.machine.locked == (None, -1)
    c.fire(PRECOMMIT)
    # Round 1 waits longer (SPEC 7.1): 3 + 1 × 1.5 s for the proposal.
    assert Timeout(PROPOSE, 1, 1, 4.5) in c[0].timers
    c.flush()
    assert {n.decisions[1].block_hash for n in c.nodes.values()} == {value_of(key(2), 1, 1)}
    assert {n.decisions[1].round for n in c.nodes.values()} == {1}


def test_a_lock_holds_across_rounds_until_a_newer_polka() -> None:
    c = Cluster(4)  # proposers of height 1: round 0 key(1), 1 key(2), 2 key(3), 3 key(0)
    c.start(1)
    v = value_of(key(1), 1, 0)
    wire, c.wire = c.wire, []
    c.deliver([pick(wire, Proposal, 0)], [0, 2, 3])  # everyone prevotes v
    prevotes0 = [pick(wire, Prevote, 0), *c.wire]
    assert [m.block_hash for m in prevotes0] == [v] * 4
    # Only key(0) sees the polka: it locks v (lines 36-41); the others' prevote
    # timers fire before the votes reach them.
    c.wire = []
    c.deliver(prevotes0, [0])
    assert c[0].machine.locked == (v, 0)
    assert c[0].votes(Precommit, 0) == [Precommit(1, 0, v, key(0))]
    for i in (1, 2, 3):
        c.wire += c[i].take(c[i].machine.on_timeout(PREVOTE, 1, 0))
    c.flush()  # precommits v, nil, nil, nil: timeoutPrecommit (line 47)
    c.fire(PRECOMMIT)
    # Round 1: key(2) never saw the polka and proposes a new value w; key(3) misses it.
    w = value_of(key(2), 1, 1)
    wire, c.wire = c.wire, []
    assert pick(wire, Proposal, 1) == Proposal(1, 1, -1, w, key(2))
    c.deliver([pick(wire, Proposal, 1)], [0, 1])
    assert c[0].votes(Prevote, 1) == [Prevote(1, 1, None, key(0))]  # locked on v: nil
    assert c[1].votes(Prevote, 1) == [Prevote(1, 1, w, key(1))]
    c.wire.append(pick(wire, Prevote, 1, key(2)))
    c.fire(PROPOSE, [3])
    c.flush()  # prevotes w, w, nil, nil: no polka
    c.fire(PREVOTE)
    c.flush()
    c.fire(PRECOMMIT)
    assert c[0].machine.locked == (v, 0) and c[0].machine.round == 2
    # Round 2: key(3) proposes x; key(0), still locked on v, prevotes nil again.
    x = value_of(key(3), 1, 2)
    c.flush()
    assert c[0].votes(Prevote, 2) == [Prevote(1, 2, None, key(0))]
    assert all(c[i].votes(Prevote, 2) == [Prevote(1, 2, x, key(i))] for i in (1, 2, 3))
    # The newer polka for x (round 2 > lockedRound 0) frees the lock (lines 36-41).
    assert c[0].machine.locked == (x, 2)
    assert c[0].votes(Precommit, 2) == [Precommit(1, 2, x, key(0))]
    assert {n.decisions[1].block_hash for n in c.nodes.values()} == {x}
    # While locked on v, key(0) prevoted v or nil only.
    assert [p.block_hash for p in c[0].votes(Prevote)] == [v, None, None]


def test_a_valid_value_is_proposed_again_with_its_valid_round() -> None:
    c = Cluster(4)
    c.start(1)
    v = value_of(key(1), 1, 0)
    wire, c.wire = c.wire, []
    c.deliver([pick(wire, Proposal, 0)], [0, 2])
    c.fire(PROPOSE, [3])  # key(3) missed the proposal: nil
    prevotes = {sender_of(m): m for m in [*wire, *c.wire] if isinstance(m, Prevote)}
    assert len(prevotes) == 4
    c.wire = []
    c.deliver(prevotes.values(), [0, 2])  # key(0) and key(2) see the polka and lock
    assert c[0].machine.locked == (v, 0) and c[2].machine.valid == (v, 0)
    c.deliver([prevotes[key(3)], prevotes[key(0)]], [1])
    c.deliver([prevotes[key(1)], prevotes[key(0)]], [3])
    c.fire(PREVOTE, [1, 3])  # three prevotes each, no polka seen: nil precommits
    c.flush()
    c.fire(PRECOMMIT)
    assert pick(c.wire, Proposal, 1) == Proposal(1, 1, 0, v, key(2))  # lines 15-16, 19
    assert (1, 1) not in c[2].gets
    # key(3) prevoted nil in round 0 and is not locked: line 28 needs the polka of
    # round 0, which reaches it now.
    c.deliver([prevotes[key(2)]], [1, 3])
    c.flush()
    assert c[3].votes(Prevote, 1) == [Prevote(1, 1, v, key(3))]
    assert {(n.decisions[1].round, n.decisions[1].block_hash) for n in c.nodes.values()} == {
        (1, v)
    }


def test_an_equivocating_proposer_and_voter_leave_evidence_and_no_fork() -> None:
    c = Cluster(4)
    honest = [0, 2, 3]
    bad = key(1)  # proposer of (1, 0), byzantine
    c.start(1, honest)
    v, w = "v-evil-1", "v-evil-2"
    pv, pw = Proposal(1, 0, -1, v, bad), Proposal(1, 0, -1, w, bad)
    bv, bw = Prevote(1, 0, v, bad), Prevote(1, 0, w, bad)
    c.deliver([pv, bv], [0, 2])
    c.deliver([pw, bw], [3])
    c.flush(honest)
    assert c[3].votes(Prevote, 0) == [Prevote(1, 0, w, key(3))]
    # key(0) and key(2) count v from themselves and bad: a polka, they lock v.
    assert c[0].machine.locked == (v, 0) and c[2].machine.locked == (v, 0)
    assert c[3].machine.locked == (None, -1)
    # Gossip then carries everything everywhere: each honest node holds both
    # proposals and both prevotes of the equivocator.
    c.deliver([pv, pw, bv, bw], honest)
    c.flush(honest)
    for _ in range(10):
        if all(1 in c[i].decisions for i in honest):
            break
        for kind in (PROPOSE, PREVOTE, PRECOMMIT):
            c.fire(kind, honest)
            c.flush(honest)
    assert {c[i].decisions[1].block_hash for i in honest} == {v}
    for i in honest:
        pairs = {(e.first, e.second) for e in c[i].machine.evidence}
        assert pairs & {(pv, pw), (pw, pv)}
        assert pairs & {(bv, bw), (bw, bv)}


def test_an_equivocators_votes_count_once_per_value_and_leave_evidence() -> None:
    node = Node([key(i) for i in range(4)], key(0))
    m = node.machine
    node.take(m.start_height(1))
    b = "v-b"
    node.take(m.on_message(Proposal(1, 0, -1, b, key(1))))
    assert node.sent == [Prevote(1, 0, b, key(0))]
    first, second = Prevote(1, 0, "v-a", key(2)), Prevote(1, 0, b, key(2))
    assert m.on_message(first).evidence == []
    out = m.on_message(second)
    assert [(e.first, e.second) for e in out.evidence] == [(first, second)]
    assert m.on_message(second).evidence == [] and len(m.evidence) == 1  # recorded once
    # Two validators have prevoted, not three: no timeoutPrevote (line 34) yet.
    assert out.timeouts == [] and m.step == Step.PREVOTE
    out = m.on_message(Prevote(1, 0, "v-a", key(3)))
    assert [t.kind for t in out.timeouts] == [PREVOTE]
    # key(2)'s second vote counts for b: with key(1)'s it is a polka (lines 36-41).
    out = m.on_message(Prevote(1, 0, b, key(1)))
    assert out.messages == [Precommit(1, 0, b, key(0))] and m.locked == (b, 0)


def test_a_node_that_missed_the_proposal_decides_once_it_holds_the_block() -> None:
    known: set[str] = set()
    m = Consensus([key(i) for i in range(4)], key(0), get_value=lambda h, r: "v-0",
                  valid=lambda v: v in known)
    m.start_height(1)
    commit = tuple(Precommit(1, 0, "v-x", key(i)) for i in (1, 2, 3))
    for c in commit:
        assert m.on_message(c).decision is None  # the block is unknown
    known.add("v-x")  # fetched from a peer by its hash
    out = m.on_block("v-x")
    assert out.decision == Decision(1, 0, "v-x", commit)
    assert m.on_block("v-x").decision is None  # decided once


# -- q, not 2f+1 --


class PaperThresholds(Consensus):
    """The paper's 2f+1 where SPEC 7 reads q: what must not be shipped."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.q = 2 * self.f + 1


def _partition_run(n: int, cls: type[Consensus]) -> dict[str, str]:
    """Honest validators split in two sides that never hear each other; each of the
    f byzantine validators runs one honest-looking machine per side (so it signs
    conflicting messages).  Returns each honest validator's decision of height 1."""
    keys = [key(i) for i in range(n)]
    f = faults(n)
    byz = keys[1 : 1 + f]  # key(1) proposes (1, 0)
    honest = [k for k in keys if k not in byz]
    half = (len(honest) + 1) // 2
    sides = [honest[:half], honest[half:]]
    decided: dict[str, str] = {}
    for j, side in enumerate(sides):
        nodes = {k: Node(keys, k, cls, tag=f"-side{j}" if k in byz else "") for k in side + byz}
        wire: list[Message] = []
        for node in nodes.values():
            wire += node.take(node.machine.start_height(1))
        for _ in range(40):
            while wire:
                m = wire.pop(0)
                for k, node in nodes.items():
                    if k != sender_of(m):
                        wire += node.take(node.machine.on_message(m))
            if all(1 in nodes[k].decisions for k in side):
                break
            for node in nodes.values():
                for kind in (PROPOSE, PREVOTE, PRECOMMIT):
                    wire += node.fire(kind)
        decided.update({k: nodes[k].decisions[1].block_hash for k in side
                        if 1 in nodes[k].decisions})
    return decided


@pytest.mark.parametrize("n", [3, 5, 6, 8, 9])
def test_2f_plus_1_would_fork_where_q_does_not(n: int) -> None:
    forked = _partition_run(n, PaperThresholds)
    assert len(set(forked.values())) == 2, forked  # the paper's 2f+1 read literally
    safe = _partition_run(n, Consensus)
    assert len(set(safe.values())) <= 1, safe


# -- what is ignored, what waits --


def _machine(n: int = 4, me: int = 0) -> Consensus:
    return Consensus([key(i) for i in range(n)], key(me),
                     get_value=lambda h, r: f"v-{h}-{r}", valid=is_valid)


def test_outsiders_duplicates_wrong_proposers_and_old_heights_are_ignored() -> None:
    m = _machine()
    m.start_height(5)
    before = m.record()
    outsider = "ff" * 32
    for msg in (
        Prevote(5, 1, "v-a", outsider),
        Precommit(5, 1, "v-a", outsider),
        Proposal(5, 0, -1, "v-a", key(2)),  # (5, 0) is key(1)'s to propose
        Prevote(4, 3, "v-a", key(1)),
        Prevote(5, -1, "v-a", key(1)),
        Proposal(5, 0, 0, "v-a", m.proposer(5, 0)),  # valid_round must be < round
    ):
        out = m.on_message(msg)
        assert out.messages == [] and out.persist is None
    # Outsiders do not count toward f+1 for a round skip either (f+1 = 2 here).
    m.on_message(Prevote(5, 3, None, key(2)))
    m.on_message(Prevote(5, 3, None, outsider))
    m.on_message(Prevote(5, 3, None, key(2)))  # a duplicate
    assert m.record() == before and m.round == 0
    m.on_message(Precommit(5, 3, None, key(3)))  # a second validator in round 3
    assert m.round == 3


def test_messages_for_a_later_height_wait_for_it_bounded() -> None:
    m = _machine()
    m.start_height(1)
    p = Proposal(2, 0, -1, "v-next", m.proposer(2, 0))
    assert m.on_message(p).messages == []
    assert m.on_message(Prevote(1, 0, "v-x", outsider := "ff" * 32)).messages == []
    assert m.on_message(Prevote(3, 0, "v-x", outsider)).messages == []
    for r in range(MAX_BUFFERED_PER_SENDER * 4):  # a flood from one sender is capped
        m.on_message(Prevote(2, r, None, key(3)))
    assert sum(len(kept) for kept in m._buffer.values()) <= MAX_BUFFERED_PER_SENDER + 1
    out = m.start_height(2)  # the proposal waited for its height
    assert Prevote(2, 0, "v-next", key(0)) in out.messages
    assert m.round == 0  # key(3) alone is not f+1 = 2 validators of a higher round
    assert not m._buffer


def test_one_voter_s_flood_of_one_round_and_step_is_bounded_and_admits_says_so() -> None:
    # An equivocating voter signs 50 different prevotes for (1, 0): the log keeps
    # MAX_VOTES_PER_VOTER of them, admits() answers beforehand exactly what
    # on_message then does (so the caller drops the rest unread), and changes nothing.
    m = _machine()
    m.start_height(1)
    nil = Prevote(1, 0, None, key(2))
    for i in range(50):
        v = Prevote(1, 0, f"v-junk-{i}", key(2))
        before = (m.record(), m.held(v))
        admitted = m.admits(v)
        assert (m.record(), m.held(v)) == before
        m.on_message(v)
        assert m.holds(v) == admitted
        assert not m.admits(v)  # a duplicate, once held
    assert m.held(nil) == MAX_VOTES_PER_VOTER
    assert len(m.evidence) == 1  # one piece proves it
    # Past the bound the values the rules look at still count: nil and a proposed one.
    assert m.admits(nil)
    m.on_message(Proposal(1, 0, -1, "v-p", key(1)))
    assert m.admits(Prevote(1, 0, "v-p", key(2)))
    assert not m.admits(Prevote(1, 0, "v-other", key(2)))
    assert not m.admits(Prevote(1, 0, "v-p", "ff" * 32))  # an outsider


def test_a_voter_climbing_rounds_is_kept_for_its_highest_rounds_only() -> None:
    # A member signs two prevotes (equivocating) for each of 1,000 rounds ahead: the
    # log keeps its messages of its MAX_FUTURE_ROUNDS_PER_VOTER highest rounds, lower
    # ones are refused unread, no empty round logs stay behind, and one piece of
    # evidence stands for all.  The f+1 round skip still works on what is kept.
    m = _machine()
    m.start_height(1)
    top = 1000
    for r in range(1, top + 1):
        for value in (f"v-{r}", None):
            m.on_message(Prevote(1, r, value, key(2)))
    kept = [r for r in range(1, top + 1) if m.held(Prevote(1, r, None, key(2)))]
    assert kept == list(range(top - MAX_FUTURE_ROUNDS_PER_VOTER + 1, top + 1))
    assert not m.admits(Prevote(1, 5, None, key(2)))
    assert m.admits(Prevote(1, top + 1, None, key(2)))  # higher: its lowest goes
    assert len(m._rounds) <= 1 + MAX_FUTURE_ROUNDS_PER_VOTER
    assert len(m.evidence) == 1
    assert m.round == 0
    m.on_message(Prevote(1, top, None, key(3)))  # f+1 = 2 validators in round 1000
    assert m.round == top


def test_the_blocks_wanted_are_the_locks_the_current_proposals_and_f_plus_1_values(
        ) -> None:
    m = _machine()
    m.start_height(1)
    m.on_message(Proposal(1, 0, -1, "v-first", key(1)))
    m.on_message(Proposal(1, 0, -1, "v-second", key(1)))  # equivocation
    assert m.wanted() == {"v-first"}  # this node prevoted it (not locked yet)
    assert m.support("v-second") == 0
    m.on_message(Prevote(1, 0, "v-second", key(2)))
    m.on_message(Prevote(1, 0, "v-second", key(3)))
    assert m.support("v-second") == 2 and m.wanted() == {"v-first", "v-second"}
    # Round 1 starts (precommits of f+1 validators there): round 0's first proposal
    # is no longer wanted, the value with f+1 prevotes still is.
    for i in (2, 3):
        m.on_message(Precommit(1, 1, None, key(i)))
    assert m.round == 1 and m.wanted() == {"v-second"}


# -- restarts from the persisted record --


def _prevoted_node() -> tuple[Node, Record, str]:
    """key(0) of four, having prevoted key(1)'s proposal v in (1, 0)."""
    node = Node([key(i) for i in range(4)], key(0))
    node.take(node.machine.start_height(1))
    v = value_of(key(1), 1, 0)
    node.take(node.machine.on_message(Proposal(1, 0, -1, v, key(1))))
    assert node.sent == [Prevote(1, 0, v, key(0))]
    return node, node.records[-1], v


def test_a_restored_node_sends_the_same_prevote_and_never_another() -> None:
    _, record, v = _prevoted_node()
    assert record.prevote == Prevote(1, 0, v, key(0)) and record.step == Step.PREVOTE
    again = Node([key(i) for i in range(4)], key(0))
    out = again.restore(Record.from_dict(record.to_dict()))
    assert out.messages == [Prevote(1, 0, v, key(0))]
    # The proposer equivocates, the proposal timer fires: nothing new is signed.
    assert again.machine.on_message(Proposal(1, 0, -1, "v-other", key(1))).messages == []
    assert again.machine.on_timeout(PROPOSE, 1, 0).messages == []
    # The round goes on from where it was, once peers send what the crash lost.
    again.take(again.machine.on_message(Proposal(1, 0, -1, v, key(1))))
    assert again.sent == [Prevote(1, 0, v, key(0))]
    for i in (1, 2):
        again.take(again.machine.on_message(Prevote(1, 0, v, key(i))))
    assert again.sent[-1] == Precommit(1, 0, v, key(0))
    for i in (1, 2):
        again.take(again.machine.on_message(Precommit(1, 0, v, key(i))))
    assert again.decisions[1].block_hash == v
    assert [m for m in again.sent if isinstance(m, Prevote)] == [Prevote(1, 0, v, key(0))]


def test_a_restored_proposer_sends_the_same_proposal() -> None:
    node = Node([key(i) for i in range(4)], key(1))
    node.take(node.machine.start_height(1))  # key(1) proposes (1, 0)
    v = value_of(key(1), 1, 0)
    assert node.sent == [Proposal(1, 0, -1, v, key(1)), Prevote(1, 0, v, key(1))]
    again = Node([key(i) for i in range(4)], key(1))
    out = again.restore(node.records[-1])
    assert out.messages == node.sent and again.gets == []  # getValue is not asked again


def test_a_lock_survives_a_restart() -> None:
    node, _, v = _prevoted_node()
    for i in (1, 2):
        node.take(node.machine.on_message(Prevote(1, 0, v, key(i))))
    assert node.machine.locked == (v, 0)
    record = node.records[-1]
    assert (record.locked_value, record.locked_round, record.step) == (v, 0, Step.PRECOMMIT)
    again = Node([key(i) for i in range(4)], key(0))
    again.restore(record)
    assert again.sent == [Prevote(1, 0, v, key(0)), Precommit(1, 0, v, key(0))]
    # f+1 = 2 validators in round 1: key(0) follows (lines 55-56), then refuses
    # round 1's new value because it is locked on v.
    again.take(again.machine.on_message(Prevote(1, 1, None, key(3))))
    again.take(again.machine.on_message(Proposal(1, 1, -1, "v-w", key(2))))
    assert again.machine.round == 1
    assert again.sent[-1] == Prevote(1, 1, None, key(0))


def test_a_restore_while_waiting_for_a_proposal_waits_again() -> None:
    node = Node([key(i) for i in range(4)], key(0))
    node.take(node.machine.start_height(3))  # key(3) proposes (3, 0)
    record = node.records[-1]
    assert (record.step, record.prevote) == (Step.PROPOSE, None)
    out = Node([key(i) for i in range(4)], key(0)).machine.restore(record)
    assert out.messages == [] and out.timeouts == [Timeout(PROPOSE, 3, 0, 3.0)]


def test_a_node_from_an_old_backup_adopts_its_own_messages_from_peers() -> None:
    """A record older than what the node signed: the votes it finds signed by itself
    bind it, and it never signs a different one for that (round, step)."""
    node = Node([key(i) for i in range(4)], key(0))
    node.take(node.machine.start_height(1))
    old = node.records[-1]  # before it prevoted
    v = value_of(key(1), 1, 0)
    node.take(node.machine.on_message(Proposal(1, 0, -1, v, key(1))))
    lost = node.sent[-1]
    assert lost == Prevote(1, 0, v, key(0))
    again = Node([key(i) for i in range(4)], key(0))
    again.restore(old)
    again.take(again.machine.on_message(lost))  # a peer sends it back
    # An equivocating proposer's other block would be prevoted by lines 22-27:
    out = again.machine.on_message(Proposal(1, 0, -1, "v-other", key(1)))
    assert out.messages == [] and again.machine.step == Step.PREVOTE
    assert out.persist is not None and out.persist.prevote == lost


def test_a_record_that_is_not_this_nodes_own_is_refused() -> None:
    _, record, _ = _prevoted_node()
    with pytest.raises(ValueError):
        _machine(me=2).restore(record)
    d = record.to_dict()
    d["prevote"]["round"] = "0"
    with pytest.raises(ValueError):
        Record.from_dict(d)
    with pytest.raises(ValueError):
        Record.from_dict({"height": 1})


# -- a randomized network --


class Sim:
    """n validators, up to f byzantine (silent, or signing conflicting proposals and
    votes for whoever they like), on a network that delays, reorders, duplicates and
    drops messages, with honest validators crashing and restarting from their last
    persisted record.  Timeouts fire in any order.  Then the partition heals: every
    message is delivered again, messages arrive before timeouts, and every honest
    validator must decide every height."""

    def __init__(self, seed: int, n: int, heights: int = 3) -> None:
        self.seed = seed
        self.rng = rng = random.Random(seed)
        self.keys = [key(i) for i in range(n)]
        self.heights = heights
        self.byz = set(rng.sample(self.keys, rng.randint(0, faults(n))))
        self.liars = {b for b in self.byz if rng.random() < 0.7}  # the rest are silent
        self.honest = [k for k in self.keys if k not in self.byz]
        self.machines: dict[str, Consensus] = {}
        self.disk: dict[str, Record | None] = {k: None for k in self.honest}
        self.timers: dict[str, list[Timeout]] = {k: [] for k in self.honest}
        self.decided: dict[str, dict[int, Decision]] = {k: {} for k in self.honest}
        self.signed: dict[tuple[str, int, int, type], Message] = {}
        self.pending: list[tuple[str, Message]] = []
        self.dropped: list[tuple[str, Message]] = []
        self.history: dict[Message, None] = {}
        self.agreed: dict[int, Decision] = {}
        self.crash_rate = 0.01  # a crash between persisting and sending
        self.relayed: set[Message] = set()
        self.to_start: list[str] = []
        self.values: list[str | None] = [None, "bad-1", "v-evil-1", "v-evil-2"]
        for k in self.honest:
            self.machines[k] = self._machine(k)
            self._take(k, self.machines[k].start_height(1))

    def _machine(self, k: str) -> Consensus:
        return Consensus(self.keys, k, get_value=lambda h, r: value_of(k, h, r), valid=is_valid)

    def fail(self, what: str) -> str:
        return f"seed={self.seed} n={len(self.keys)} byz={len(self.byz)}: {what}"

    def _take(self, k: str, out: Output, crash_after_persist: bool = False) -> None:
        if out.persist is not None:
            self.disk[k] = out.persist
        assert_covered(self.disk[k], out.messages)
        if crash_after_persist:
            self._restart(k)  # what was persisted survives; what was to be sent does not
            return
        for m in out.messages:
            slot = (k, m.height, m.round, type(m))
            assert self.signed.setdefault(slot, m) == m, self.fail(f"{k[:4]} signed two {slot}")
            self._broadcast(m)
        self.timers[k] += out.timeouts
        if out.decision is not None:
            d = out.decision
            self._check_decision(d)
            self.decided[k][d.height] = d
            if d.height < self.heights:
                self.to_start.append(k)

    def _broadcast(self, m: Message) -> None:
        self.history[m] = None
        self.pending += [(to, m) for to in self.honest if to != sender_of(m)]

    def _restart(self, k: str) -> None:
        """Crash k and start it again: its log, timers and buffers are gone."""
        self.machines[k] = machine = self._machine(k)
        self.timers[k] = []
        self.to_start = [x for x in self.to_start if x != k]
        done = max(self.decided[k], default=0)
        record = self.disk[k]
        if record is not None and record.height > done:
            self._take(k, machine.restore(record))
        elif done < self.heights:
            self._take(k, machine.start_height(done + 1))
        # Peers answer its GetPending: the messages it lost come again, its own
        # of earlier rounds included.
        self.pending += [(k, m) for m in self.history]

    def _lie(self) -> None:
        b = self.rng.choice(sorted(self.liars))
        busy = [m for m in self.machines.values() if m.height is not None]
        h = self.rng.choice(busy).height or 1
        r = max(0, max(m.round for m in busy) + self.rng.choice([-1, 0, 0, 1]))
        value = self.rng.choice(self.values)
        kind = self.rng.choice([Proposal, Prevote, Precommit])
        m: Message
        if kind is Proposal:
            m = Proposal(h, r, self.rng.randint(-1, r - 1), value or "v-evil-3",
                         self.machines[self.honest[0]].proposer(h, r))
            if m.proposer != b:
                return
        else:
            m = kind(h, r, value, b)
        self.history[m] = None
        for to in self.rng.sample(self.honest, self.rng.randint(1, len(self.honest))):
            self.pending.append((to, m))

    def _deliver(self, i: int) -> None:
        self.pending[i], self.pending[-1] = self.pending[-1], self.pending[i]
        to, m = self.pending.pop()
        if sender_of(m) in self.byz and m not in self.relayed:
            # Gossip: what an honest node received, every honest node gets.
            self.relayed.add(m)
            self.pending += [(x, m) for x in self.honest if x != to]
        crash = self.rng.random() < self.crash_rate
        self._take(to, self.machines[to].on_message(m), crash_after_persist=crash)
        if sender_of(m) not in self.byz and m.block_hash not in self.values:
            self.values.append(m.block_hash)  # liars vote for honest values too

    def _fire(self, k: str, t: Timeout) -> None:
        self.timers[k].remove(t)
        self._take(k, self.machines[k].on_timeout(t.kind, t.height, t.round))

    def _start_next(self, k: str) -> None:
        self.to_start.remove(k)
        h = max(self.decided[k]) + 1
        if self.machines[k].height is not None and self.machines[k].height < h:
            self._take(k, self.machines[k].start_height(h))

    def chaos(self, steps: int) -> None:
        rng = self.rng
        for _ in range(steps):
            x = rng.random()
            if x < 0.55 and self.pending:
                i = rng.randrange(len(self.pending))
                if rng.random() < 0.1:
                    self.pending.append(self.pending[i])  # delivered twice
                self._deliver(i)
            elif x < 0.65 and self.pending:
                self.dropped.append(self.pending.pop(rng.randrange(len(self.pending))))
            elif x < 0.8:
                k = rng.choice(self.honest)
                if self.timers[k]:
                    self._fire(k, rng.choice(self.timers[k]))
            elif x < 0.88 and self.liars:
                self._lie()
            elif x < 0.95 and self.to_start:
                self._start_next(rng.choice(self.to_start))
            elif x < 0.96:
                self._restart(rng.choice(self.honest))

    def heal(self, max_events: int = 200_000) -> None:
        rng = self.rng
        self.crash_rate = 0.0  # a stable period: no crashes, nothing lost
        self.pending += self.dropped
        self.dropped = []
        for k in self.honest:
            self.pending += [(k, m) for m in self.history]
        lies = 30
        for _ in range(max_events):
            if all(len(self.decided[k]) == self.heights for k in self.honest):
                return
            if self.pending:
                self._deliver(rng.randrange(len(self.pending)))
                if self.liars and lies and rng.random() < 0.01:
                    lies -= 1
                    self._lie()
            elif self.to_start:
                self._start_next(rng.choice(self.to_start))
            else:
                due = [(t.seconds, k, t) for k in self.honest for t in self.timers[k]]
                assert due, self.fail("stuck: no message, no timer, not decided")
                first = min(s for s, _, _ in due)
                _, k, t = rng.choice([d for d in due if d[0] == first])
                self._fire(k, t)
        pytest.fail(self.fail(f"no termination: {self.progress()}"))

    def progress(self) -> dict[str, tuple[int | None, int, int]]:
        return {k[:4]: (m.height, m.round, m.step) for k, m in self.machines.items()}

    def _check_decision(self, d: Decision) -> None:
        """Agreement, validity and a well-formed commit, at the moment of deciding."""
        first = self.agreed.setdefault(d.height, d)
        assert d.block_hash == first.block_hash, self.fail(f"fork: {first} and {d}")
        assert is_valid(d.block_hash), self.fail(f"decided an invalid block: {d}")
        assert len({c.voter for c in d.commit}) == quorum(len(self.keys)), self.fail(f"{d}")
        assert all(
            (c.height, c.round, c.block_hash) == (d.height, d.round, d.block_hash)
            for c in d.commit
        ), self.fail(f"commit {d}")

    def check_agreement(self) -> None:
        """Every honest validator decided every height (the same block, checked as
        each decided), and no honest validator is named by evidence."""
        for k in self.honest:
            assert sorted(self.decided[k]) == list(range(1, self.heights + 1)), self.fail(k)
        for m in self.machines.values():
            for e in m.evidence:
                assert sender_of(e.first) in self.byz, self.fail(f"honest equivocated: {e}")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9])
@pytest.mark.parametrize("seed", range(SIM_SEEDS))
def test_random_network_agrees_and_terminates(n: int, seed: int) -> None:
    sim = Sim(seed * 1000 + n, n)
    sim.chaos(sim.rng.randint(100, 1500))
    sim.heal()
    sim.check_agreement()


@pytest.mark.parametrize(
    ("seed", "n"),
    [
        (8008, 8),  # a proposer without the polka of its own validRound waited forever
        (148006, 6),  # the decided block's proposal was over the bound at one node
    ],
)
def test_random_network_seeds_that_once_failed(seed: int, n: int) -> None:
    sim = Sim(seed, n)
    sim.chaos(sim.rng.randint(100, 1500))
    sim.heal()
    sim.check_agreement()
