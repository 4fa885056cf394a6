"""Tendermint consensus for one height: a pure state machine.

The rules are Algorithm 1 of "The latest gossip on BFT consensus" (Buchman,
Kwon, Milosevic, 2018, arXiv 1807.04938), line by line; the comments name the
paper's line numbers. :class:`Consensus` is ``(state, input) → outputs``:
:meth:`Consensus.handle` takes one input (a proposal with the host's verdict
on its value, a vote, a timeout, the value the host built for its own
proposal, a new height) and returns what the host must do, in order:

* :class:`Persist` — write :attr:`Consensus.durable` with fsync *before* any
  following :class:`Broadcast` is signed, so a node killed and restarted
  comes back with its round, step, lock and valid value;
* :class:`Broadcast` — sign (through the node's double-sign guard) and send
  to every validator *including this node*: the paper's broadcast delivers to
  oneself too, and a node's own votes count only once they come back signed;
* :class:`Schedule` — call :meth:`Consensus.handle` with the :class:`Timeout`
  after ``delay`` seconds (real timers, not a broker's redelivery);
* :class:`NeedValue` — build a block for this height and answer with
  :class:`OwnValue`;
* :class:`Decide` — the value decided at this height with the precommits
  that decided it (the commit certificate); the host applies it and starts the
  next height with :class:`NewHeight`;
* :class:`Equivocation` — two conflicting signed votes (or proposals) from
  one validator: evidence to commit on chain.

Choices the paper leaves open, written down here:

* Voting power is equal: quorum is more than two thirds of the validators,
  ``n - (n - 1) // 3`` (4 → 3, 5 → 4, 6 → 5, 7 → 5), and ``f + 1`` is
  ``(n - 1) // 3 + 1``.
* The proposer of ``(height, round)`` is ``validators[(height + round) % n]``
  in the order of the validator ids.
* Timeouts grow linearly with the round: ``base + round × delta``.
* Known pitfalls avoided by following the paper exactly: a lock is never
  released by a polka for nil (only replaced, line 36); a node locked on
  another value prevotes nil for a proposal (line 22), never its own lock;
  ``validValue`` is re-proposed (line 14) so a value some node may have
  locked is proposed again, which ended CometBFT's livelock.
* Memory stays bounded: votes are kept for the height's rounds up to
  ``round + 2`` (line 28 reads an earlier round's prevotes, line 49 any
  round's precommits); of later rounds only each validator's highest round
  is remembered, and line 55 moves to the round that ``f + 1`` validators
  have reached ("``f + 1`` messages of a higher round", one counter per
  validator, so a Byzantine minority cannot push anyone ahead). Messages of
  the next height are buffered (one per validator, round and type) and
  replayed when it starts; others are dropped.

Signatures are the host's business: this machine never sees a private key.
It trusts that every input message was checked against the validator set of
its height (:func:`sign_bytes` is what is signed), and it still copes with
what a Byzantine validator can send with a valid signature: votes for unknown
values, conflicting votes (kept first, reported once), proposals not from the
round's proposer (ignored), far-future rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from . import dagcbor
from .consortium import quorum
from .errors import CodecError

SIGN_LABEL = b"yilian/consensus/v1\x00"
ROUND_WINDOW = 2  # votes are kept for rounds up to round + ROUND_WINDOW


class Step(IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class Kind(IntEnum):
    """What a signed consensus message is; also its order within a round."""

    PROPOSAL = 0
    PREVOTE = 1
    PRECOMMIT = 2


class TimeoutKind(IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


# -- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proposal:
    """``⟨PROPOSAL, h, r, v, vr⟩`` by ``sender``; ``value`` is id(v), the block's CID bytes."""

    height: int
    round: int
    value: bytes
    valid_round: int
    sender: str
    signature: bytes = b""

    kind = Kind.PROPOSAL

    def unsigned(self) -> Proposal:
        return replace(self, signature=b"")


@dataclass(frozen=True)
class Vote:
    """``⟨PREVOTE|PRECOMMIT, h, r, id(v)⟩`` by ``sender``; ``value`` None is nil."""

    kind: Kind
    height: int
    round: int
    value: bytes | None
    sender: str
    signature: bytes = b""

    def unsigned(self) -> Vote:
        return replace(self, signature=b"")


Message = Proposal | Vote


def sign_bytes(chain_id: str, message: Message) -> bytes:
    """The canonical bytes a validator signs: label ‖ DAG-CBOR of every field but the signature."""
    body: dict[str, Any] = {
        "chain_id": chain_id,
        "type": int(message.kind),
        "height": message.height,
        "round": message.round,
        "block": message.value,
        "sender": message.sender,
    }
    if isinstance(message, Proposal):
        body["valid_round"] = message.valid_round
    return SIGN_LABEL + dagcbor.encode(body)


def conflicting(a: Message, b: Message) -> bool:
    """Two messages one validator must never both sign: same height, round and kind, different value."""
    return (
        a.sender == b.sender
        and a.kind == b.kind
        and a.height == b.height
        and a.round == b.round
        and (a.value != b.value or (isinstance(a, Proposal) and a.unsigned() != b.unsigned()))
    )


# -- inputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProposalIn:
    """A signed proposal, the value's bytes, and the host's verdict ``valid(v)``."""

    proposal: Proposal
    block: bytes
    valid: bool


@dataclass(frozen=True)
class VoteIn:
    vote: Vote


@dataclass(frozen=True)
class Timeout:
    kind: TimeoutKind
    height: int
    round: int


@dataclass(frozen=True)
class OwnValue:
    """The host's answer to :class:`NeedValue`: the block this node proposes."""

    height: int
    round: int
    value: bytes
    block: bytes


@dataclass(frozen=True)
class NewHeight:
    """Start ``height`` (after the previous decision was applied) with its validators."""

    height: int
    validators: tuple[str, ...]


Input = ProposalIn | VoteIn | Timeout | OwnValue | NewHeight


# -- outputs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Durable:
    """What must survive a crash: where the node is and what it locked."""

    height: int
    round: int
    step: Step
    locked_round: int = -1
    locked_value: bytes | None = None
    valid_round: int = -1
    valid_value: bytes | None = None
    valid_block: bytes | None = None  # the valid value's bytes: after a restart it is proposed again (line 14)
    # The prevotes that made it valid: forwarded with its re-proposal, so a node that restarted can
    # still show the others the proof of lock they need to prevote it (line 28).
    valid_polka: tuple[Vote, ...] = ()


@dataclass(frozen=True)
class Persist:
    state: Durable


@dataclass(frozen=True)
class Broadcast:
    message: Message
    block: bytes | None = None  # the value's bytes, with a proposal


@dataclass(frozen=True)
class Schedule:
    timeout: Timeout
    delay: float


@dataclass(frozen=True)
class NeedValue:
    height: int
    round: int


@dataclass(frozen=True)
class Decide:
    height: int
    round: int
    value: bytes
    block: bytes
    certificate: tuple[Vote, ...]


@dataclass(frozen=True)
class Equivocation:
    first: Message
    second: Message


Output = Persist | Broadcast | Schedule | NeedValue | Decide | Equivocation


@dataclass(frozen=True)
class Timeouts:
    """Seconds: ``base + round × delta`` for each step."""

    propose: float = 1.0
    propose_delta: float = 0.5
    prevote: float = 0.5
    prevote_delta: float = 0.25
    precommit: float = 0.5
    precommit_delta: float = 0.25

    def of(self, kind: TimeoutKind, round_: int) -> float:
        base, delta = {
            TimeoutKind.PROPOSE: (self.propose, self.propose_delta),
            TimeoutKind.PREVOTE: (self.prevote, self.prevote_delta),
            TimeoutKind.PRECOMMIT: (self.precommit, self.precommit_delta),
        }[kind]
        return base + round_ * delta


def proposer(validators: Sequence[str], height: int, round_: int) -> str:
    """``validators[(height + round) % n]``: each validator proposes in turn."""
    return validators[(height + round_) % len(validators)]


def weak_quorum(n: int) -> int:
    """``f + 1``: enough validators that at least one is honest."""
    return (n - 1) // 3 + 1


# -- the state machine -----------------------------------------------------------------------------
# A validator's votes of one round and kind, by value: normally one; more only when it equivocated.
_Slot = dict[bytes | None, Vote]
MAX_VALUES_PER_SLOT = 3


@dataclass
class _Round:
    proposal: Proposal | None = None
    prevotes: dict[str, _Slot] = field(default_factory=dict)
    precommits: dict[str, _Slot] = field(default_factory=dict)
    fired: set[str] = field(default_factory=set)  # the "for the first time" rules already run


class Consensus:
    """One node's consensus (see the module docstring).

    ``me`` is this node's validator id, or None for a node that follows
    without voting. ``restored`` is the last :class:`Durable` persisted at
    this height, after a restart.
    """

    def __init__(
        self,
        me: str | None,
        height: int,
        validators: Sequence[str],
        *,
        timeouts: Timeouts | None = None,
        restored: Durable | None = None,
    ) -> None:
        self.me = me
        self.timeouts = timeouts or Timeouts()
        self._future: dict[tuple[str, int, int], Input] = {}  # next height's messages, one per slot
        self._reset(height, tuple(validators))
        if restored is not None and restored.height == height:
            self.round = restored.round
            self.locked_round, self.locked_value = restored.locked_round, restored.locked_value
            self.valid_round, self.valid_value = restored.valid_round, restored.valid_value
            if restored.valid_value is not None and restored.valid_block is not None:
                self._blocks[restored.valid_value] = restored.valid_block
                self._valid[restored.valid_value] = True  # it passed this node's validity check before
                for vote in restored.valid_polka:
                    self._round(vote.round).prevotes.setdefault(vote.sender, {})[vote.value] = vote
            else:
                self.valid_round, self.valid_value = -1, None
        self._persisted_key: tuple | None = self._durable_key() if restored is not None else None

    # -- public ---------------------------------------------------------------------------------------
    @property
    def durable(self) -> Durable:
        return Durable(
            self.height,
            self.round,
            self.step,
            self.locked_round,
            self.locked_value,
            self.valid_round,
            self.valid_value,
            self._blocks.get(self.valid_value) if self.valid_value is not None else None,
            tuple(self.votes_for(self.valid_round, Kind.PREVOTE, self.valid_value)) if self.valid_value else (),
        )

    def _durable_key(self) -> tuple:
        """What :attr:`durable` holds, cheaply comparable (ids, not block bytes)."""
        valid = self._rounds.get(self.valid_round)
        polka = self._count(valid.prevotes, self.valid_value) if valid and self.valid_value else 0
        return (
            self.height,
            self.round,
            int(self.step),
            self.locked_round,
            self.locked_value,
            self.valid_round,
            self.valid_value,
            polka,
        )

    def start(self) -> list[Output]:
        """``upon start do StartRound(round)`` (round 0, or the restored round)."""
        return self._run(lambda out: self._start_round(self.round, out))

    def handle(self, event: Input) -> list[Output]:
        """Feed one input; the outputs to carry out, in order."""
        return self._run(lambda out: self._dispatch(event, out))

    def votes_for(self, round_: int, kind: Kind, value: bytes | None) -> list[Vote]:
        """The votes of ``round_`` and ``kind`` for ``value``, one per validator: a polka to forward
        with a proposal that names it as its valid round, or a commit certificate."""
        rnd = self._rounds.get(round_)
        if rnd is None:
            return []
        box = rnd.prevotes if kind == Kind.PREVOTE else rnd.precommits
        return sorted((slot[value] for slot in box.values() if value in slot), key=lambda v: v.sender)

    def recent(self) -> list[Message]:
        """What to re-send to peers now and then: the proposals and every vote (anyone's: they are
        signed by their senders) of the previous and current rounds, and the valid value's proof of
        lock. Point-to-point links are not gossip; this is what makes them behave like it: a message
        any honest node acted on reaches every honest node once the network is stable."""
        messages: list[Message] = []
        for r in (self.round - 1, self.round):
            rnd = self._rounds.get(r)
            if rnd is None:
                continue
            if rnd.proposal is not None:
                messages.append(rnd.proposal)
            for box in (rnd.prevotes, rnd.precommits):
                messages.extend(vote for slot in box.values() for vote in slot.values())
        if self.valid_value is not None and self.valid_round < self.round - 1:
            messages.extend(self.votes_for(self.valid_round, Kind.PREVOTE, self.valid_value))
        return messages

    def block_of(self, value: bytes) -> bytes | None:
        return self._blocks.get(value)

    # -- the loop ------------------------------------------------------------------------------------
    def _reset(self, height: int, validators: tuple[str, ...]) -> None:
        if not validators or list(validators) != sorted(set(validators)):
            raise ValueError("validators must be unique and sorted")
        self.height = height
        self.validators = validators
        self.quorum = quorum(len(validators))
        self.weak = weak_quorum(len(validators))
        self.round = 0
        self.step = Step.PROPOSE
        self.locked_round, self.locked_value = -1, None
        self.valid_round, self.valid_value = -1, None
        self.decided: Decide | None = None
        self._rounds: dict[int, _Round] = {}
        self._blocks: dict[bytes, bytes] = {}  # id(v) → v, for proposals seen at this height
        self._valid: dict[bytes, bool] = {}  # id(v) → valid(v), the host's verdicts
        self._highest: dict[str, int] = {}  # validator → highest round it sent anything in
        self._reported: set[tuple[str, int, int]] = set()  # equivocations already reported

    def _run(self, step: Callable[[list[Output]], None]) -> list[Output]:
        out: list[Output] = []
        step(out)
        self._apply_rules(out)
        key = self._durable_key()
        if key != self._persisted_key and any(isinstance(o, Broadcast) for o in out):
            self._persisted_key = key
            out.insert(0, Persist(self.durable))
        return out

    def _dispatch(self, event: Input, out: list[Output]) -> None:
        if isinstance(event, NewHeight):
            self._new_height(event, out)
        elif isinstance(event, Timeout):
            self._on_timeout(event, out)
        elif isinstance(event, OwnValue):
            rnd = self._round(self.round)
            current = event.height == self.height and event.round == self.round and self.step == Step.PROPOSE
            if current and self._is_my_turn() and "answered" not in rnd.fired and self.valid_value is None:
                rnd.fired.add("answered")  # one proposal per round, however often the host answers
                self._broadcast_proposal(event.value, event.block, -1, out)
        elif isinstance(event, ProposalIn):
            self._on_proposal(event, out)
        elif isinstance(event, VoteIn):
            self._on_vote(event.vote, out)

    def _new_height(self, event: NewHeight, out: list[Output]) -> None:
        if event.height <= self.height:
            return
        buffered = list(self._future.values()) if event.height == self.height + 1 else []
        self._future.clear()
        self._reset(event.height, tuple(event.validators))
        self._start_round(0, out)
        for message in buffered:
            self._dispatch(message, out)

    # -- StartRound (lines 11–21) --------------------------------------------------------------------
    def _start_round(self, round_: int, out: list[Output]) -> None:
        self.round = round_
        self.step = Step.PROPOSE
        if self._is_my_turn():
            self._round(round_).fired.add("proposed")
            if self.valid_value is not None:  # line 14
                block = self._blocks[self.valid_value]
                self._broadcast_proposal(self.valid_value, block, self.valid_round, out)
            else:
                out.append(NeedValue(self.height, round_))  # line 17: getValue()
        # The paper schedules this for non-proposers only; a proposer whose host never
        # answers NeedValue must not stall its round either.
        self._schedule(TimeoutKind.PROPOSE, out)

    def _is_my_turn(self) -> bool:
        return self.me is not None and proposer(self.validators, self.height, self.round) == self.me

    def _broadcast_proposal(self, value: bytes, block: bytes, valid_round: int, out: list[Output]) -> None:
        if self.me is None:
            return
        self._blocks.setdefault(value, block)
        out.append(Broadcast(Proposal(self.height, self.round, value, valid_round, self.me), block))

    def _vote(self, kind: Kind, value: bytes | None, out: list[Output]) -> None:
        if self.me is not None and self.me in self.validators:
            out.append(Broadcast(Vote(kind, self.height, self.round, value, self.me)))

    def _schedule(self, kind: TimeoutKind, out: list[Output]) -> None:
        out.append(Schedule(Timeout(kind, self.height, self.round), self.timeouts.of(kind, self.round)))

    # -- receiving --------------------------------------------------------------------------------------
    def _accept(self, message: Message, event: Input) -> bool:
        """Whether to keep ``message``: this height, a validator, a round we keep votes for."""
        if message.sender not in self.validators and message.height == self.height:
            return False
        if message.height == self.height + 1:
            key = (message.sender, message.round, int(message.kind))
            if len(self._future) < 64 * max(1, len(self.validators)):
                self._future.setdefault(key, event)
            return False
        if message.height != self.height or message.round < 0:
            return False
        if message.round > self._highest.get(message.sender, -1):
            self._highest[message.sender] = message.round
        return message.round <= self.round + ROUND_WINDOW

    def _on_proposal(self, event: ProposalIn, out: list[Output]) -> None:
        p = event.proposal
        if not self._accept(p, event):
            return
        if p.sender != proposer(self.validators, p.height, p.round) or not -1 <= p.valid_round < p.round:
            return
        rnd = self._round(p.round)
        if rnd.proposal is not None:
            if conflicting(rnd.proposal, p):
                self._report(rnd.proposal, p, out)
            return
        rnd.proposal = p
        self._blocks.setdefault(p.value, event.block)
        self._valid.setdefault(p.value, event.valid)

    def _on_vote(self, vote: Vote, out: list[Output]) -> None:
        if vote.kind not in (Kind.PREVOTE, Kind.PRECOMMIT) or not self._accept(vote, VoteIn(vote)):
            return
        rnd = self._round(vote.round)
        box = rnd.prevotes if vote.kind == Kind.PREVOTE else rnd.precommits
        slot = box.setdefault(vote.sender, {})
        if vote.value in slot:
            return
        if slot:
            self._report(next(iter(slot.values())), vote, out)
            # An equivocator's other votes still count, each for its own value (safety already assumes a
            # Byzantine validator may vote for both): otherwise a proof of lock that holds its vote for one
            # value could never be completed by a node that first heard the other. Kept only for values
            # that can matter here, so a flood of votes for random values costs nothing.
            if len(slot) >= MAX_VALUES_PER_SLOT or (vote.value is not None and vote.value not in self._blocks):
                return
        slot[vote.value] = vote

    def _report(self, first: Message, second: Message, out: list[Output]) -> None:
        key = (first.sender, first.round, int(first.kind))
        if key not in self._reported:
            self._reported.add(key)
            out.append(Equivocation(first, second))

    # -- the upon rules, evaluated until none fires -----------------------------------------------------
    def _apply_rules(self, out: list[Output]) -> None:
        while self._one_rule(out):
            pass

    def _one_rule(self, out: list[Output]) -> bool:
        if self.decided is not None:
            return False
        return (
            self._line49_decide(out)
            or self._line55_skip(out)
            or self._line22_prevote(out)
            or self._line28_prevote_pol(out)
            or self._line34_prevote_timeout(out)
            or self._line36_lock(out)
            or self._line44_precommit_nil(out)
            or self._line47_precommit_timeout(out)
        )

    def _count(self, box: dict[str, _Slot], value: bytes | None) -> int:
        return sum(1 for slot in box.values() if value in slot)

    def _line22_prevote(self, out: list[Output]) -> bool:
        rnd = self._rounds.get(self.round)
        p = rnd.proposal if rnd else None
        if self.step != Step.PROPOSE or p is None or p.valid_round != -1:
            return False
        ok = self._valid.get(p.value, False) and (self.locked_round == -1 or self.locked_value == p.value)
        self._vote(Kind.PREVOTE, p.value if ok else None, out)
        self.step = Step.PREVOTE
        return True

    def _line28_prevote_pol(self, out: list[Output]) -> bool:
        rnd = self._rounds.get(self.round)
        p = rnd.proposal if rnd else None
        if self.step != Step.PROPOSE or p is None or not 0 <= p.valid_round < self.round:
            return False
        pol = self._rounds.get(p.valid_round)
        if pol is None or self._count(pol.prevotes, p.value) < self.quorum:
            return False
        ok = self._valid.get(p.value, False) and (self.locked_round <= p.valid_round or self.locked_value == p.value)
        self._vote(Kind.PREVOTE, p.value if ok else None, out)
        self.step = Step.PREVOTE
        return True

    def _line34_prevote_timeout(self, out: list[Output]) -> bool:
        rnd = self._rounds.get(self.round)
        if self.step != Step.PREVOTE or rnd is None or "34" in rnd.fired or len(rnd.prevotes) < self.quorum:
            return False
        rnd.fired.add("34")
        self._schedule(TimeoutKind.PREVOTE, out)
        return True

    def _line36_lock(self, out: list[Output]) -> bool:
        rnd = self._rounds.get(self.round)
        p = rnd.proposal if rnd else None
        if rnd is None or p is None or "36" in rnd.fired or self.step < Step.PREVOTE:
            return False
        if not self._valid.get(p.value, False) or self._count(rnd.prevotes, p.value) < self.quorum:
            return False
        rnd.fired.add("36")
        if self.step == Step.PREVOTE:
            self.locked_value, self.locked_round = p.value, self.round
            self._vote(Kind.PRECOMMIT, p.value, out)
            self.step = Step.PRECOMMIT
        self.valid_value, self.valid_round = p.value, self.round
        return True

    def _line44_precommit_nil(self, out: list[Output]) -> bool:
        rnd = self._rounds.get(self.round)
        if self.step != Step.PREVOTE or rnd is None or self._count(rnd.prevotes, None) < self.quorum:
            return False
        self._vote(Kind.PRECOMMIT, None, out)
        self.step = Step.PRECOMMIT
        return True

    def _line47_precommit_timeout(self, out: list[Output]) -> bool:
        rnd = self._rounds.get(self.round)
        if rnd is None or "47" in rnd.fired or len(rnd.precommits) < self.quorum:
            return False
        rnd.fired.add("47")
        self._schedule(TimeoutKind.PRECOMMIT, out)
        return True

    def _line49_decide(self, out: list[Output]) -> bool:
        for r, rnd in sorted(self._rounds.items()):
            p = rnd.proposal
            if p is None or not self._valid.get(p.value, False):
                continue
            certificate = [slot[p.value] for slot in rnd.precommits.values() if p.value in slot]
            if len(certificate) >= self.quorum:
                self.decided = Decide(
                    self.height,
                    r,
                    p.value,
                    self._blocks[p.value],
                    tuple(sorted(certificate, key=lambda v: v.sender)),
                )
                out.append(self.decided)
                return True
        return False

    def _line55_skip(self, out: list[Output]) -> bool:
        ahead = sorted((r for r in self._highest.values() if r > self.round), reverse=True)
        if len(ahead) < self.weak:
            return False
        self._start_round(ahead[self.weak - 1], out)
        return True

    # -- timeouts (lines 57–67) ------------------------------------------------------------------------
    def _on_timeout(self, t: Timeout, out: list[Output]) -> None:
        if t.height != self.height or t.round != self.round or self.decided is not None:
            return
        if t.kind == TimeoutKind.PROPOSE and self.step == Step.PROPOSE:
            self._vote(Kind.PREVOTE, None, out)
            self.step = Step.PREVOTE
        elif t.kind == TimeoutKind.PREVOTE and self.step == Step.PREVOTE:
            self._vote(Kind.PRECOMMIT, None, out)
            self.step = Step.PRECOMMIT
        elif t.kind == TimeoutKind.PRECOMMIT:
            self._start_round(self.round + 1, out)

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _round(self, round_: int) -> _Round:
        rnd = self._rounds.get(round_)
        if rnd is None:
            rnd = self._rounds[round_] = _Round()
        return rnd


# -- never sign twice --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LastSigned:
    """The last message a validator signed: what its double-sign guard persists before signing."""

    height: int
    round: int
    kind: Kind
    sign_bytes: bytes
    signature: bytes

    @property
    def position(self) -> tuple[int, int, int]:
        return (self.height, self.round, int(self.kind))


def may_sign(last: LastSigned | None, message: Message, message_bytes: bytes) -> str:
    """``"sign"`` a message past the last signed one, ``"again"`` for the very same bytes (return the
    saved signature: a restart re-broadcasting its vote), ``"refuse"`` anything else at or before it.

    Positions order by (height, round, kind), kinds in the order proposal, prevote, precommit, so a
    validator signs at most one message per (height, round, kind), and never goes back.
    """
    if last is None:
        return "sign"
    position = (message.height, message.round, int(message.kind))
    if position > last.position:
        return "sign"
    if position == last.position and message_bytes == last.sign_bytes:
        return "again"
    return "refuse"


# -- encodings: the wire and the node's own log ------------------------------------------------------
def message_to_cbor(message: Message) -> dict[str, Any]:
    """A signed message as a DAG-CBOR map (the signature included)."""
    value: dict[str, Any] = {
        "type": int(message.kind),
        "height": message.height,
        "round": message.round,
        "block": message.value,
        "sender": message.sender,
        "signature": message.signature,
    }
    if isinstance(message, Proposal):
        value["valid_round"] = message.valid_round
    return value


def message_from_cbor(value: Any) -> Message:
    """Parse :func:`message_to_cbor` output; ``CodecError`` for anything malformed."""
    common = {"type", "height", "round", "block", "sender", "signature"}
    if not isinstance(value, dict):
        raise CodecError("a consensus message is a map")
    kind = value.get("type")
    expected = common | {"valid_round"} if kind == Kind.PROPOSAL else common
    if set(value) != expected or kind not in (0, 1, 2):
        raise CodecError("a consensus message has missing or unknown fields")
    height, round_, block, sender, signature = (value[k] for k in ("height", "round", "block", "sender", "signature"))
    if type(height) is not int or type(round_) is not int or height < 0 or round_ < 0:
        raise CodecError("height and round are natural numbers")
    if not isinstance(sender, str) or not 0 < len(sender) <= 64 or not isinstance(signature, bytes):
        raise CodecError("bad sender or signature")
    if not (block is None or (isinstance(block, bytes) and len(block) <= 64)):
        raise CodecError("a block id is at most 64 bytes, or null")
    if kind == Kind.PROPOSAL:
        valid_round = value["valid_round"]
        if block is None or type(valid_round) is not int or not -1 <= valid_round < round_:
            raise CodecError("a proposal names a block and a valid round below its own")
        return Proposal(height, round_, block, valid_round, sender, signature)
    return Vote(Kind(kind), height, round_, block, sender, signature)


def durable_to_cbor(state: Durable) -> dict[str, Any]:
    return {
        "height": state.height,
        "round": state.round,
        "step": int(state.step),
        "locked_round": state.locked_round,
        "locked_value": state.locked_value,
        "valid_round": state.valid_round,
        "valid_value": state.valid_value,
        "valid_block": state.valid_block,
        "valid_polka": [message_to_cbor(v) for v in state.valid_polka],
    }


def durable_from_cbor(value: Any) -> Durable:
    if not isinstance(value, dict):
        raise CodecError("persisted consensus state is a map")
    try:
        polka = tuple(message_from_cbor(v) for v in value["valid_polka"])
        if not all(isinstance(v, Vote) for v in polka):
            raise CodecError("a proof of lock holds votes")
        return Durable(
            value["height"],
            value["round"],
            Step(value["step"]),
            value["locked_round"],
            value["locked_value"],
            value["valid_round"],
            value["valid_value"],
            value["valid_block"],
            polka,  # type: ignore[arg-type]
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CodecError(f"persisted consensus state: {exc}") from None
