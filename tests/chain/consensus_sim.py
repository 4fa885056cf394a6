"""A deterministic simulated network for :mod:`chain.core.consensus`: no processes, no sleeping.

One seed fixes everything: message delays, drops, duplicates and reordering
until the network stabilises, partitions that heal, crashes and restarts from
what each node persisted, and (optionally) one Byzantine validator that
equivocates as proposer, double-votes and votes for values nobody proposed.
Honest hosts behave as the node does: they persist before signing, sign
through the double-sign guard, deliver their own messages back to
themselves, build a value on :class:`NeedValue`, apply a decision, start the
next height, and fetch a decided height with its certificate from a peer
when they learn they are behind.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field

from chain.core import consensus as c

CHAIN_ID = "sim"


def value_id(block: bytes) -> bytes:
    return hashlib.sha256(block).digest()


def host_valid(block: bytes) -> bool:
    """The honest hosts' validity predicate: values an honest host builds start with b"ok:"."""
    return block.startswith(b"ok:")


@dataclass
class Node:
    id: str
    byzantine: bool = False
    core: c.Consensus | None = None
    up: bool = True
    durable: c.Durable | None = None  # the persisted consensus state
    last_signed: c.LastSigned | None = None  # the persisted double-sign guard
    decided: dict[int, c.Decide] = field(default_factory=dict)  # the node's "chain store"
    signed: list[c.Message] = field(default_factory=list)  # persisted with the guard, before sending
    blocks: dict[bytes, bytes] = field(default_factory=dict)  # the blocks of its own proposals
    evidence: list[c.Equivocation] = field(default_factory=list)
    incarnation: int = 0


@dataclass(frozen=True)
class Plan:
    """What one seed does to the network before ``stable_at``; after it, delays stay under ``delay_after``."""

    n: int
    heights: int
    byzantine: bool
    stable_at: float
    max_delay: float
    drop: float
    duplicate: float
    partitions: tuple[tuple[float, float, tuple[frozenset[str], ...]], ...]
    crashes: tuple[tuple[str, float, float], ...]  # node, down at, up at (all before stable_at)
    delay_after: float = 0.2


def random_plan(seed: int, n: int, *, heights: int = 3, byzantine: bool | None = None) -> Plan:
    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(n)]
    stable_at = rng.uniform(0, 20)
    f = (n - 1) // 3
    byz = rng.random() < 0.5 if byzantine is None else byzantine
    partitions = []
    for _ in range(rng.randint(0, 2)):
        start = rng.uniform(0, stable_at)
        end = rng.uniform(start, stable_at)
        shuffled = ids[:]
        rng.shuffle(shuffled)
        cut = rng.randint(1, n - 1)
        partitions.append((start, end, (frozenset(shuffled[:cut]), frozenset(shuffled[cut:]))))
    crashes = []
    # Crash-restarts of honest nodes: any number (they persist), but the Byzantine one counts against f.
    honest = ids[1:] if byz else ids
    for node in rng.sample(honest, rng.randint(0, min(len(honest), f + 1))):
        down = rng.uniform(0, stable_at)
        crashes.append((node, down, rng.uniform(down, stable_at)))
    return Plan(
        n=n,
        heights=heights,
        byzantine=byz,
        stable_at=stable_at,
        max_delay=rng.choice([0.05, 0.3, 2.0]),
        drop=rng.choice([0.0, 0.1, 0.3]),
        duplicate=rng.choice([0.0, 0.1]),
        partitions=tuple(partitions),
        crashes=tuple(crashes),
    )


class Simulation:
    def __init__(self, seed: int, plan: Plan, *, timeouts: c.Timeouts | None = None) -> None:
        self.seed = seed
        self.plan = plan
        self.rng = random.Random(seed * 7919 + 1)
        self.timeouts = timeouts or c.Timeouts()
        self.ids = tuple(f"n{i}" for i in range(plan.n))
        self.nodes = {i: Node(i, byzantine=plan.byzantine and i == "n0") for i in self.ids}
        self.now = 0.0
        self._queue: list[tuple[float, int, str, int, object]] = []
        self._seq = 0
        self.proposed: set[bytes] = set()  # every value id any node proposed
        self.steps = 0
        self.at_stable: dict[str, tuple[int, int]] = {}  # node → (height, round) when the network stabilised

    # -- the event queue ------------------------------------------------------------------------------
    def _push(self, at: float, node: str, event: object, *, incarnation: int | None = None) -> None:
        self._seq += 1
        inc = self.nodes[node].incarnation if incarnation is None else incarnation
        heapq.heappush(self._queue, (at, self._seq, node, inc, event))

    def _connected(self, a: str, b: str) -> bool:
        for start, end, groups in self.plan.partitions:
            if start <= self.now < end and not any(a in g and b in g for g in groups):
                return False
        return True

    def _send(self, sender: str, to: str, event: object) -> None:
        if sender == to:
            self._push(self.now, to, event)
            return
        stable = self.now >= self.plan.stable_at
        if not stable and (not self._connected(sender, to) or self.rng.random() < self.plan.drop):
            return
        delay = self.rng.uniform(0, self.plan.delay_after if stable else self.plan.max_delay)
        self._push(self.now + delay, to, event)
        if not stable and self.rng.random() < self.plan.duplicate:
            self._push(self.now + self.rng.uniform(0, self.plan.max_delay), to, event)

    # -- running ------------------------------------------------------------------------------------------
    def run(self, *, limit: float = 400.0) -> None:
        for node in self.nodes.values():
            self._boot(node)
        for node, down, up in self.plan.crashes:
            self._push(down, node, ("crash",), incarnation=-1)
            self._push(up, node, ("restart",), incarnation=-1)
        # Honest nodes re-send their latest signed messages (point-to-point is not gossip).
        for node in self.ids:
            self._push(1.0, node, ("resend",), incarnation=-1)
        while self._queue and not self.done():
            at, _seq, node_id, inc, event = heapq.heappop(self._queue)
            if at > limit:
                break
            self.now = at
            if at >= self.plan.stable_at and not self.at_stable:
                self.at_stable = {n.id: (n.core.height, n.core.round) for n in self.nodes.values() if n.core}
            node = self.nodes[node_id]
            if inc == -1:
                self._control(node, event)
            elif node.up and inc == node.incarnation:
                self._deliver(node, event)
            self.steps += 1

    def done(self) -> bool:
        return all(
            len(n.decided) >= self.plan.heights for n in self.nodes.values() if not n.byzantine and n.up
        ) and all(n.up for n in self.nodes.values() if not n.byzantine)

    def _boot(self, node: Node) -> None:
        height = len(node.decided) + 1
        restored = node.durable if node.durable is not None and node.durable.height == height else None
        node.core = c.Consensus(node.id, height, self.ids, timeouts=self.timeouts, restored=restored)
        if not node.byzantine:  # what it signed at this height comes back first, so it counts its own votes
            for message in [m for m in node.signed if m.height == height]:
                if isinstance(message, c.Proposal):
                    block = node.blocks[message.value]
                    self._carry_out(node, node.core.handle(c.ProposalIn(message, block, host_valid(block))))
                else:
                    self._carry_out(node, node.core.handle(c.VoteIn(message)))
        self._carry_out(node, node.core.start())

    def _control(self, node: Node, event: tuple) -> None:
        if event[0] == "crash" and node.up:
            node.up = False
            node.incarnation += 1  # whatever was in flight to the old process is lost
        elif event[0] == "restart" and not node.up:
            node.up = True
            node.incarnation += 1
            self._boot(node)
        elif event[0] == "resend":
            if node.up and not node.byzantine and node.core is not None:
                for message in node.core.recent():
                    for to in self.ids:
                        if to != node.id:
                            self._send(node.id, to, self._as_input(message, node))
            self._push(self.now + 1.0, node.id, ("resend",), incarnation=-1)

    def _as_input(self, message: c.Message, node: Node) -> object:
        if isinstance(message, c.Proposal):
            assert node.core is not None
            block = node.core.block_of(message.value) or b""
            return ("proposal", message, block)
        return c.VoteIn(message)

    def _deliver(self, node: Node, event: object) -> None:
        assert node.core is not None
        if isinstance(event, tuple) and event[0] == "proposal":
            _tag, proposal, block = event
            if value_id(block) != proposal.value:
                return  # the host checks the block against the id before asking the core
            event = c.ProposalIn(proposal, block, host_valid(block))
        if isinstance(event, tuple) and event[0] == "sync":
            self._sync(node, event[1])
            return
        message = getattr(event, "vote", None) or getattr(event, "proposal", None)
        if message is not None and message.height > node.core.height:
            self._ask_for_blocks(node)
        self._carry_out(node, node.core.handle(event))

    def _ask_for_blocks(self, node: Node) -> None:
        """Block sync: a peer that decided this node's height sends the block and its certificate."""
        height = node.core.height if node.core else 0
        for peer in self.nodes.values():
            if peer is not node and not peer.byzantine and peer.up and height in peer.decided:
                self._send(peer.id, node.id, ("sync", peer.decided[height]))
                return

    def _sync(self, node: Node, decision: c.Decide) -> None:
        assert node.core is not None
        if decision.height != node.core.height or decision.height in node.decided:
            return
        # The host verifies the certificate against the validators of that height.
        voters = {v.sender for v in decision.certificate if v.value == decision.value and v.kind == c.Kind.PRECOMMIT}
        assert len(voters) >= node.core.quorum and voters <= set(self.ids)
        self._decided(node, decision)

    def _decided(self, node: Node, decision: c.Decide) -> None:
        node.decided[decision.height] = decision
        assert node.core is not None
        self._carry_out(node, node.core.handle(c.NewHeight(decision.height + 1, self.ids)))

    def _carry_out(self, node: Node, outputs: list[c.Output]) -> None:
        for out in outputs:
            if isinstance(out, c.Persist):
                node.durable = out.state
            elif isinstance(out, c.Broadcast):
                if node.byzantine:
                    self._byzantine_broadcast(node, out)
                else:
                    self._sign_and_send(node, out.message, out.block)
            elif isinstance(out, c.Schedule):
                self._push(self.now + out.delay, node.id, out.timeout)
            elif isinstance(out, c.NeedValue):
                block = b"ok:%s:%d:%d:%d" % (node.id.encode(), out.height, out.round, self._seq)
                self._push(self.now, node.id, c.OwnValue(out.height, out.round, value_id(block), block))
            elif isinstance(out, c.Decide):
                assert out.height == len(node.decided) + 1, (out.height, sorted(node.decided))
                self._decided(node, out)
            elif isinstance(out, c.Equivocation):
                node.evidence.append(out)

    def _sign_and_send(self, node: Node, message: c.Message, block: bytes | None) -> None:
        data = c.sign_bytes(CHAIN_ID, message)
        verdict = c.may_sign(node.last_signed, message, data)
        if verdict == "refuse":
            return
        if verdict == "sign":
            signature = hashlib.sha256(node.id.encode() + data).digest()
            node.last_signed = c.LastSigned(message.height, message.round, message.kind, data, signature)
        signed = _with_signature(message, node.last_signed.signature)  # type: ignore[union-attr]
        node.signed.append(signed)
        if isinstance(signed, c.Proposal):
            assert block is not None
            node.blocks[signed.value] = block
            self.proposed.add(signed.value)
            for to in self.ids:
                self._send(node.id, to, ("proposal", signed, block))
        else:
            for to in self.ids:
                self._send(node.id, to, c.VoteIn(signed))
        self._forward_polka(node, signed)

    def _forward_polka(self, node: Node, message: c.Message) -> None:
        """Forward the prevotes acted on: the proof of lock of a re-proposal, the polka behind a precommit."""
        assert node.core is not None
        if isinstance(message, c.Proposal) and message.valid_round >= 0:
            polka = node.core.votes_for(message.valid_round, c.Kind.PREVOTE, message.value)
        elif isinstance(message, c.Vote) and message.kind == c.Kind.PRECOMMIT and message.value is not None:
            polka = node.core.votes_for(message.round, c.Kind.PREVOTE, message.value)
        else:
            return
        for vote in polka:
            for to in self.ids:
                if to != node.id:
                    self._send(node.id, to, c.VoteIn(vote))

    def _byzantine_broadcast(self, node: Node, out: c.Broadcast) -> None:
        """Say different things to different nodes, with valid signatures."""
        message = out.message
        others = [i for i in self.ids if i != node.id]
        self.rng.shuffle(others)
        half = len(others) // 2
        if isinstance(message, c.Proposal):
            alt_block = b"ok:byz:%d:%d:%d" % (message.height, message.round, self._seq)
            bad_block = b"bad:%d" % self._seq
            variants = [(message, out.block), (_with_value(message, value_id(alt_block)), alt_block)]
            if self.rng.random() < 0.3:
                variants.append((_with_value(message, value_id(bad_block)), bad_block))
            for k, to in enumerate([node.id, *others]):
                proposal, block = variants[k % len(variants)] if to != node.id else variants[0]
                self.proposed.add(proposal.value)
                self._send(node.id, to, ("proposal", _signed(node, proposal), block))
            return
        unknown = hashlib.sha256(b"unknown%d" % self._seq).digest()
        choices = [message.value, None, unknown]
        for k, to in enumerate([node.id, *others]):
            value = message.value if to == node.id else choices[(k + (k > half)) % len(choices)]
            self._send(node.id, to, c.VoteIn(_signed(node, _with_value(message, value))))


def _with_value(message, value):
    from dataclasses import replace

    return replace(message, value=value)


def _with_signature(message, signature: bytes):
    from dataclasses import replace

    return replace(message, signature=signature)


def _signed(node: Node, message):
    signature = hashlib.sha256(node.id.encode() + c.sign_bytes(CHAIN_ID, message)).digest()
    signed = _with_signature(message, signature)
    node.signed.append(signed)
    return signed


# -- invariants -------------------------------------------------------------------------------------------
def rounds_after_stable(sim: Simulation) -> int:
    """The most rounds any honest node spent on a height it decided after the network stabilised
    (counted from the round it was in at that moment for the height it was on)."""
    worst = 0
    for node in sim.nodes.values():
        if node.byzantine:
            continue
        height, round_ = sim.at_stable.get(node.id, (1, 0))
        for h, decision in node.decided.items():
            if h >= height:
                start = round_ if h == height else 0
                worst = max(worst, decision.round - start + 1)
    return worst


def check(sim: Simulation, *, max_rounds: int | None = None) -> None:
    honest = [n for n in sim.nodes.values() if not n.byzantine]
    heights = {h for n in honest for h in n.decided}
    for h in heights:
        values = {n.decided[h].value for n in honest if h in n.decided}
        assert len(values) == 1, f"seed {sim.seed}: honest nodes decided different values at height {h}"
        decision = next(n.decided[h] for n in honest if h in n.decided)
        assert decision.value in sim.proposed, f"seed {sim.seed}: height {h} decided a value never proposed"
        assert host_valid(decision.block), f"seed {sim.seed}: height {h} decided an invalid value"
        assert value_id(decision.block) == decision.value
    for node in honest:
        seen: dict[tuple[int, int, int], c.Message] = {}
        for message in node.signed:
            key = (message.height, message.round, int(message.kind))
            first = seen.setdefault(key, message)
            assert not c.conflicting(first, message), f"seed {sim.seed}: honest {node.id} signed conflicting {key}"
    if max_rounds is not None:
        used = rounds_after_stable(sim)
        assert used <= max_rounds, f"seed {sim.seed}: a height took {used} rounds after the network stabilised"
    for node in honest:
        assert len(node.decided) >= sim.plan.heights, (
            f"seed {sim.seed}: {node.id} decided {len(node.decided)} of {sim.plan.heights} heights by "
            f"t={sim.now:.1f}s (network stable from t={sim.plan.stable_at:.1f}s); plan {sim.plan}"
        )
