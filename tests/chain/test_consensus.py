"""The Tendermint state machine (chain.core.consensus): its rules one by one, then thousands of
seeded schedules on a simulated network (tests/chain/consensus_sim.py) checked for agreement,
validity, no double-signing and termination once the network is stable."""

from __future__ import annotations

import hashlib

import pytest

from chain.core import consensus as c
from chain.core.consensus import Kind, Step
from tests.chain.consensus_sim import Simulation, check, random_plan, value_id

V4 = ("a", "b", "c", "d")


def block(name: str) -> tuple[bytes, bytes]:
    data = b"ok:" + name.encode()
    return value_id(data), data


def vote(kind: Kind, sender: str, value: bytes | None, *, height: int = 1, round_: int = 0) -> c.VoteIn:
    return c.VoteIn(c.Vote(kind, height, round_, value, sender, signature=b"s" + sender.encode()))


def proposal(value: bytes, data: bytes, *, round_: int = 0, valid_round: int = -1, valid: bool = True) -> c.ProposalIn:
    sender = c.proposer(V4, 1, round_)
    return c.ProposalIn(c.Proposal(1, round_, value, valid_round, sender, b"sig"), data, valid)


def broadcasts(outputs: list[c.Output]) -> list[c.Message]:
    return [o.message for o in outputs if isinstance(o, c.Broadcast)]


def deliver_own(core: c.Consensus, outputs: list[c.Output]) -> list[c.Output]:
    """What a host does with its own broadcasts: they come back signed."""
    more: list[c.Output] = []
    for message in broadcasts(outputs):
        if isinstance(message, c.Vote):
            more += core.handle(c.VoteIn(message))
    return more


# -- figures the paper leaves to us --------------------------------------------------------------------
def test_quorum_is_more_than_two_thirds_and_the_proposer_rotates():
    assert [c.quorum(n) for n in (1, 4, 5, 6, 7)] == [1, 3, 4, 5, 5]
    assert [c.weak_quorum(n) for n in (1, 4, 7)] == [1, 2, 3]
    assert [c.proposer(V4, 1, r) for r in range(5)] == ["b", "c", "d", "a", "b"]
    assert c.proposer(V4, 2, 0) == "c"
    assert c.Timeouts().of(c.TimeoutKind.PROPOSE, 0) == 1.0 and c.Timeouts().of(c.TimeoutKind.PROPOSE, 2) == 2.0


def test_sign_bytes_name_chain_type_height_round_and_block():
    v, _ = block("x")
    prevote = c.Vote(Kind.PREVOTE, 5, 2, v, "a")
    assert c.sign_bytes("yilian", prevote) != c.sign_bytes("other", prevote)
    assert c.sign_bytes("yilian", prevote) != c.sign_bytes("yilian", c.Vote(Kind.PRECOMMIT, 5, 2, v, "a"))
    assert c.sign_bytes("yilian", prevote) != c.sign_bytes("yilian", c.Vote(Kind.PREVOTE, 5, 3, v, "a"))
    assert c.sign_bytes("yilian", prevote) != c.sign_bytes("yilian", c.Vote(Kind.PREVOTE, 5, 2, None, "a"))
    assert c.sign_bytes("yilian", prevote).startswith(c.SIGN_LABEL)


# -- one node's rules -------------------------------------------------------------------------------------
def test_a_single_validator_decides_at_once():
    core = c.Consensus("a", 1, ("a",))
    out = core.start()
    need = [o for o in out if isinstance(o, c.NeedValue)]
    assert need == [c.NeedValue(1, 0)]
    v, data = block("one")
    out = core.handle(c.OwnValue(1, 0, v, data))
    (prop,) = broadcasts(out)
    out = core.handle(c.ProposalIn(prop, data, True))
    decided = []
    while out:
        decided += [o for o in out if isinstance(o, c.Decide)]
        out = deliver_own(core, out)
    (decision,) = decided
    assert (decision.height, decision.round, decision.value, decision.block) == (1, 0, v, data)
    assert [vote.sender for vote in decision.certificate] == ["a"]


def test_every_signature_is_preceded_by_persisting_the_state():
    core = c.Consensus("a", 1, V4)
    core.start()
    v, data = block("x")
    out = core.handle(proposal(v, data))
    assert isinstance(out[0], c.Persist) and out[0].state.step == Step.PREVOTE
    assert broadcasts(out) == [c.Vote(Kind.PREVOTE, 1, 0, v, "a")]


def test_an_invalid_proposal_gets_a_nil_prevote():
    core = c.Consensus("a", 1, V4)
    core.start()
    v, data = block("x")
    assert broadcasts(core.handle(proposal(v, data, valid=False))) == [c.Vote(Kind.PREVOTE, 1, 0, None, "a")]


def test_a_proposal_from_anyone_but_the_rounds_proposer_is_ignored():
    core = c.Consensus("a", 1, V4)
    core.start()
    v, data = block("x")
    forged = c.ProposalIn(c.Proposal(1, 0, v, -1, "d", b"sig"), data, True)
    assert broadcasts(core.handle(forged)) == []
    assert core.step == Step.PROPOSE


def locked_on(value: bytes, data: bytes) -> c.Consensus:
    """Node "a" locked on ``value`` in round 0 (a polka it saw), then moved to round 1."""
    core = c.Consensus("a", 1, V4)
    core.start()
    core.handle(proposal(value, data))
    for sender in ("a", "b", "c"):
        core.handle(vote(Kind.PREVOTE, sender, value))
    assert core.locked_value == value and core.locked_round == 0 and core.step == Step.PRECOMMIT
    for sender in ("a", "b", "c"):
        core.handle(vote(Kind.PRECOMMIT, sender, None))
    core.handle(c.Timeout(c.TimeoutKind.PRECOMMIT, 1, 0))
    assert core.round == 1
    return core


def test_locked_on_one_value_a_node_prevotes_nil_for_another():
    v, data = block("locked")
    w, other = block("other")
    core = locked_on(v, data)
    assert broadcasts(core.handle(proposal(w, other, round_=1))) == [c.Vote(Kind.PREVOTE, 1, 1, None, "a")]


def test_a_polka_for_nil_does_not_unlock():
    v, data = block("locked")
    w, other = block("other")
    core = locked_on(v, data)
    core.handle(c.Timeout(c.TimeoutKind.PROPOSE, 1, 1))
    for sender in ("b", "c", "d"):
        core.handle(vote(Kind.PREVOTE, sender, None, round_=1))
    assert core.locked_value == v and core.locked_round == 0
    for sender in ("b", "c", "d"):
        core.handle(vote(Kind.PRECOMMIT, sender, None, round_=1))
    core.handle(c.Timeout(c.TimeoutKind.PRECOMMIT, 1, 1))
    assert broadcasts(core.handle(proposal(w, other, round_=2))) == [c.Vote(Kind.PREVOTE, 1, 2, None, "a")]


def test_a_proof_of_lock_from_a_later_round_lets_a_locked_node_prevote_the_new_value():
    v, data = block("locked")
    w, other = block("other")
    core = locked_on(v, data)  # locked in round 0; now in round 1
    for sender in ("b", "c", "d"):
        core.handle(vote(Kind.PREVOTE, sender, w, round_=1))
    core.handle(c.Timeout(c.TimeoutKind.PROPOSE, 1, 1))
    for sender in ("b", "c", "d"):
        core.handle(vote(Kind.PRECOMMIT, sender, None, round_=1))
    core.handle(c.Timeout(c.TimeoutKind.PRECOMMIT, 1, 1))
    # Round 2 re-proposes w with its proof of lock from round 1 >= the lock's round 0 (line 28).
    assert broadcasts(core.handle(proposal(w, other, round_=2, valid_round=1))) == [c.Vote(Kind.PREVOTE, 1, 2, w, "a")]


def test_the_proposer_proposes_its_valid_value_again_with_its_round():
    v, data = block("valid")
    core = c.Consensus("d", 1, V4)  # d proposes round 2 at height 1
    core.start()
    core.handle(proposal(v, data))
    for sender in ("a", "b", "c"):
        core.handle(vote(Kind.PREVOTE, sender, v))
    assert (core.valid_value, core.valid_round) == (v, 0)
    for r in (0, 1):
        for sender in ("a", "b", "c"):
            core.handle(vote(Kind.PRECOMMIT, sender, None, round_=r))
        out = core.handle(c.Timeout(c.TimeoutKind.PRECOMMIT, 1, r))
    assert broadcasts(out) == [c.Proposal(1, 2, v, 0, "d")]
    assert not any(isinstance(o, c.NeedValue) for o in out)


def test_f_plus_one_validators_in_a_later_round_move_a_node_there_but_one_does_not():
    core = c.Consensus("a", 1, V4)
    core.start()
    core.handle(vote(Kind.PREVOTE, "b", None, round_=7))
    assert core.round == 0
    core.handle(vote(Kind.PRECOMMIT, "c", None, round_=9))
    assert core.round == 7  # b reached 7, c 9: two validators are at round 7 or later


def test_conflicting_votes_are_evidence_reported_once():
    v, _ = block("x")
    w, _ = block("y")
    core = c.Consensus("a", 1, V4)
    core.start()
    core.handle(vote(Kind.PREVOTE, "b", v))
    out = core.handle(vote(Kind.PREVOTE, "b", w))
    (evidence,) = [o for o in out if isinstance(o, c.Equivocation)]
    assert evidence.first.value == v and evidence.second.value == w and c.conflicting(evidence.first, evidence.second)
    assert not [o for o in core.handle(vote(Kind.PREVOTE, "b", None)) if isinstance(o, c.Equivocation)]
    assert core.handle(vote(Kind.PREVOTE, "b", v)) == []  # a duplicate is nothing


def test_messages_it_cannot_use_change_nothing():
    core = c.Consensus("a", 5, V4)
    core.start()
    before = core.durable
    v, _ = block("x")
    for stray in (
        vote(Kind.PREVOTE, "z", v, height=5),  # not a validator
        vote(Kind.PREVOTE, "b", v, height=3),  # an old height
        vote(Kind.PREVOTE, "b", v, height=9),  # far in the future
        vote(Kind.PREVOTE, "b", v, height=5, round_=-1),
        c.Timeout(c.TimeoutKind.PREVOTE, 5, 0),  # a timeout for a step it is not in
        c.Timeout(c.TimeoutKind.PRECOMMIT, 4, 0),  # of another height
    ):
        assert core.handle(stray) == []
    assert core.durable == before


def test_the_next_heights_messages_wait_for_it():
    v, data = block("x")
    core = c.Consensus("a", 1, V4)
    core.start()
    early = c.Proposal(2, 0, v, -1, c.proposer(V4, 2, 0), b"sig")
    assert core.handle(c.ProposalIn(early, data, True)) == []
    out = core.handle(c.NewHeight(2, V4))
    assert c.Vote(Kind.PREVOTE, 2, 0, v, "a") in broadcasts(out)


def test_a_restart_restores_round_lock_and_valid_value_with_its_proof():
    v, data = block("locked")
    core = locked_on(v, data)
    restored = c.Consensus("a", 1, V4, restored=core.durable)
    assert (restored.round, restored.locked_value, restored.valid_value) == (1, v, v)
    assert restored.block_of(v) == data
    assert len(restored.votes_for(0, Kind.PREVOTE, v)) == 3


# -- the double-sign guard -----------------------------------------------------------------------------------
def test_the_guard_signs_forward_repeats_the_same_bytes_and_refuses_the_rest():
    v, _ = block("x")
    prevote = c.Vote(Kind.PREVOTE, 3, 1, v, "a")
    data = c.sign_bytes("y", prevote)
    assert c.may_sign(None, prevote, data) == "sign"
    last = c.LastSigned(3, 1, Kind.PREVOTE, data, b"sig")
    assert c.may_sign(last, prevote, data) == "again"
    nil = c.Vote(Kind.PREVOTE, 3, 1, None, "a")
    assert c.may_sign(last, nil, c.sign_bytes("y", nil)) == "refuse"
    for message in (
        c.Proposal(3, 1, v, -1, "a"),
        c.Vote(Kind.PRECOMMIT, 3, 0, v, "a"),
        c.Vote(Kind.PREVOTE, 2, 9, v, "a"),
    ):
        assert c.may_sign(last, message, c.sign_bytes("y", message)) == "refuse"
    for message in (
        c.Vote(Kind.PRECOMMIT, 3, 1, v, "a"),
        c.Vote(Kind.PREVOTE, 3, 2, None, "a"),
        c.Proposal(4, 0, v, -1, "a"),
    ):
        assert c.may_sign(last, message, c.sign_bytes("y", message)) == "sign"


# -- the simulated network ------------------------------------------------------------------------------------
def test_without_faults_every_height_is_decided_in_round_zero():
    plan = random_plan(0, 4, byzantine=False)
    calm = type(plan)(
        n=4, heights=5, byzantine=False, stable_at=0, max_delay=0.1, drop=0, duplicate=0, partitions=(), crashes=()
    )
    sim = Simulation(1, calm)
    sim.run()
    check(sim)
    assert {d.round for n in sim.nodes.values() for d in n.decided.values()} == {0}


def test_a_byzantine_validator_is_caught_equivocating():
    caught = 0
    for seed in range(40):
        sim = Simulation(seed, random_plan(seed, 4, byzantine=True))
        sim.run()
        check(sim)
        caught += any(e.first.sender == "n0" for n in sim.nodes.values() if not n.byzantine for e in n.evidence)
    assert caught >= 30


@pytest.mark.slow
@pytest.mark.parametrize(("n", "seeds"), [(4, 3000), (7, 600)])
def test_thousands_of_seeded_schedules_agree_and_terminate(n, seeds):
    """Delays, drops, duplicates, reordering, healing partitions, crash-restarts and (in half the
    seeds) a Byzantine validator. On failure the message names the seed; replay it with
    ``Simulation(seed, random_plan(seed, n)).run()``."""
    for seed in range(seeds):
        sim = Simulation(seed, random_plan(seed, n))
        sim.run()
        check(sim, max_rounds=n + 3)


def test_the_seed_replays_the_same_run():
    first, second = (Simulation(42, random_plan(42, 4)) for _ in range(2))
    first.run()
    second.run()
    assert first.steps == second.steps
    decided = [
        hashlib.sha256(repr([sorted(n.decided.items()) for n in sim.nodes.values()]).encode()).hexdigest()
        for sim in (first, second)
    ]
    assert decided[0] == decided[1]
