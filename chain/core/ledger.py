"""The ledger state machine: check transactions, seal blocks, validate blocks.

Everything here is a pure function of its arguments (the clock is a
parameter), so every node that feeds in the same parent, transactions and
state reaches the same verdict and the same state hash.

What a block must satisfy before it is applied (:func:`validate_block`),
cheapest checks first so that a bad block costs little:

1. same chain id as its parent; height = parent + 1; ``parent`` is the
   parent's CID (``wrong-chain``, ``bad-height``, ``broken-link``); no
   genesis data (``bad-genesis``);
2. timestamp not before the parent's, not more than ``max_future_ms`` ahead
   of this node's clock (``bad-timestamp``);
3. the proposer is an authority and signed it; the certificate holds valid
   votes by distinct authorities reaching ``quorum(n)`` (``bad-proposer``,
   ``bad-certificate``); a proposal being voted on needs only the proposer's;
4. at most ``max_block_txs``; the transactions given are the ones the block
   links, in order (``too-many-txs``, ``tx-mismatch``); the merkle root
   matches (``bad-merkle-root``);
5. every transaction in order, against the state as the block's earlier
   transactions left it (:func:`apply_transaction`): size, chain id,
   timestamp not ahead of the block's by more than ``max_future_ms``,
   signature, known type, schema, sequence number exactly the signer's next,
   the type's validator; then its changes are applied to an overlay;
6. the state hash over all changes equals the header's (``bad-state-hash``).

Nothing is written to the caller's state: the result carries the ordered
changes and :meth:`BlockResult.commit` writes them, so a block is applied
entirely or not at all. Transaction timestamps are judged against the
block's timestamp, not the local clock, so the verdict on a block's contents
is the same on every node and at any later replay.

Signatures are verified once per transaction object: a transaction created
or checked by this process remembers it, which is what makes seal + validate
+ apply cost about one Ed25519 verification per transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from . import consensus, crypto
from .block import Block, Genesis, Vote, vote_message
from .cid import CID
from .consortium import (
    BUILTIN_TYPES,
    Authority,
    ChainParams,
    authorities_of,
    authority_set,
    genesis_changes,
    params_of,
    quorum,
)
from .errors import CodecError
from .evidence import EVIDENCE
from .merkle import EMPTY_ROOT, merkle_root
from .reasons import Reason, ValidationError
from .registry import Registry, TxType, check_payload
from .state import (
    INITIAL_STATE_HASH,
    SEQ_PREFIX,
    Overlay,
    State,
    StateChange,
    StateHasher,
    StateView,
    commit,
    last_seq,
    seq_key,
)
from .transaction import Transaction, now_ms

RESERVED_PREFIXES = (SEQ_PREFIX, "chain/")
LEDGER_TYPES = (*BUILTIN_TYPES, EVIDENCE)
_BUILTIN_NAMES = frozenset(t.name for t in LEDGER_TYPES)


@dataclass(frozen=True)
class BlockResult:
    """A validated block and the state changes applying it makes, in order."""

    block: Block
    txs: tuple[Transaction, ...]
    changes: tuple[StateChange, ...]

    def commit(self, state: State) -> None:
        """Write the changes into ``state`` (the caller wraps this in its transaction)."""
        commit(state, self.changes)


@dataclass(frozen=True)
class Rejected:
    """A pending transaction that can never be included, and why."""

    tx: Transaction
    error: ValidationError


@dataclass(frozen=True)
class SealResult:
    """A sealed block, what it applies, and what happened to the other pending txs.

    ``rejected`` transactions can be dropped; ``deferred`` ones are not wrong
    yet (the block was full, or an earlier sequence number is still missing)
    and stay pending.
    """

    block: Block
    result: BlockResult
    rejected: tuple[Rejected, ...]
    deferred: tuple[Transaction, ...]


def default_registry() -> Registry:
    """A registry holding the ledger's own types (``node.joined``, ``node.left``, ``consensus.evidence``)."""
    return Registry(LEDGER_TYPES)


# -- transactions ---------------------------------------------------------------


def check_transaction(
    tx: Transaction,
    *,
    state: StateView,
    registry: Registry,
    params: ChainParams,
    chain_id: str,
    now_ms: int,
    next_seq: int | None = None,
) -> None:
    """Everything a block would check about ``tx``, at submission; no writes.

    ``next_seq`` lets a mempool that already holds this signer's earlier
    transactions accept the following number; by default it is the last
    committed number + 1. The validator sees the committed state; to judge a
    transaction after other pending ones, apply those to an :class:`Overlay`
    with :func:`apply_transaction` and check against it.
    """
    txtype = _check_stateless(tx, registry, params, chain_id, now_ms + params.max_future_ms)
    tx.verify_signature()
    _check_seq(tx, last_seq(state, tx.signer) + 1 if next_seq is None else next_seq)
    txtype.validate(state, tx)


def apply_transaction(
    tx: Transaction,
    *,
    overlay: Overlay,
    registry: Registry,
    params: ChainParams,
    chain_id: str,
    latest_ms: int,
    hasher: StateHasher | None = None,
) -> list[StateChange]:
    """Check ``tx`` against ``overlay`` and apply its changes there.

    ``latest_ms`` is the latest timestamp the transaction may carry. On any
    rejection the overlay is left untouched.
    """
    txtype = _check_stateless(tx, registry, params, chain_id, latest_ms)
    tx.verify_signature()
    _check_seq(tx, last_seq(overlay, tx.signer) + 1)
    txtype.validate(overlay, tx)
    changes = [StateChange(seq_key(tx.signer), tx.seq), *txtype.apply(overlay, tx)]
    _check_changes(tx, changes[1:])
    if hasher is not None:
        try:
            hasher.add(changes)
        except CodecError as exc:
            raise ValidationError(
                Reason.REJECTED, f"applying {tx.type} produced a value the chain cannot hold: {exc}"
            ) from None
    for change in changes:
        overlay.set(change.key, change.value)
    return changes


def _check_stateless(
    tx: Transaction, registry: Registry, params: ChainParams, chain_id: str, latest_ms: int
) -> TxType:
    if tx.size > params.max_tx_size:
        raise ValidationError(
            Reason.OVERSIZE, f"transaction is {tx.size} bytes; the limit is {params.max_tx_size}"
        )
    if tx.chain_id != chain_id:
        raise ValidationError(
            Reason.WRONG_CHAIN, f"transaction is for chain {tx.chain_id!r}, not {chain_id!r}"
        )
    if tx.timestamp > latest_ms:
        raise ValidationError(Reason.BAD_TIMESTAMP, "transaction timestamp is in the future")
    txtype = registry.get(tx.type)
    check_payload(txtype.schema, tx.payload)
    return txtype


def _check_seq(tx: Transaction, expected: int) -> None:
    if tx.seq < expected:
        raise ValidationError(
            Reason.REPLAY, f"sequence number {tx.seq} already used (next is {expected})"
        )
    if tx.seq > expected:
        raise ValidationError(
            Reason.BAD_SEQ, f"sequence number {tx.seq} skips ahead (next is {expected})"
        )


def _check_changes(tx: Transaction, changes: Sequence[StateChange]) -> None:
    for change in changes:
        if not isinstance(change, StateChange) or not isinstance(change.key, str):
            raise ValidationError(Reason.REJECTED, f"{tx.type} returned a malformed change")
        reserved = change.key.startswith(RESERVED_PREFIXES)
        if reserved and not (tx.type in _BUILTIN_NAMES and change.key.startswith("chain/")):
            raise ValidationError(
                Reason.REJECTED, f"{tx.type} may not write the ledger's key {change.key!r}"
            )


# -- genesis -------------------------------------------------------------------


def make_genesis(
    *,
    chain_id: str,
    authorities: Sequence[Authority],
    timestamp: int,
    params: ChainParams | None = None,
    proposer: str | None = None,
) -> Block:
    """The unsigned genesis block; the founding authorities then vote on it."""
    members = authority_set(authorities)
    params = params or ChainParams()
    hasher = StateHasher(INITIAL_STATE_HASH)
    hasher.add(genesis_changes(members, params))
    return Block(
        chain_id=chain_id,
        height=0,
        parent=None,
        timestamp=timestamp,
        proposer=proposer or members[0].id,
        tx_root=EMPTY_ROOT,
        txs=(),
        state_hash=hasher.digest(),
        genesis=Genesis(members, params),
    )


def validate_genesis(block: Block, *, expected_cid: CID | None = None) -> BlockResult:
    """Check block 0 and return the state it founds.

    ``expected_cid`` is the genesis CID the node is configured to trust; a
    node joining an existing consortium must pass it, since a genesis block
    is otherwise only checked against itself.
    """
    if block.height != 0 or block.parent is not None:
        raise ValidationError(Reason.BAD_HEIGHT, "genesis must be height 0 with no parent")
    if block.genesis is None:
        raise ValidationError(Reason.BAD_GENESIS, "block 0 carries no genesis data")
    if expected_cid is not None and block.cid != expected_cid:
        raise ValidationError(
            Reason.BAD_GENESIS, f"genesis is {block.cid}, this node expects {expected_cid}"
        )
    if block.txs or block.tx_root != EMPTY_ROOT:
        raise ValidationError(Reason.BAD_GENESIS, "genesis carries no transactions")
    check_certificate(block, block.genesis.authorities)
    changes = genesis_changes(block.genesis.authorities, block.genesis.params)
    hasher = StateHasher(INITIAL_STATE_HASH)
    hasher.add(changes)
    if hasher.digest() != block.state_hash:
        raise ValidationError(Reason.BAD_STATE_HASH, "genesis state hash does not match its data")
    return BlockResult(block, (), tuple(changes))


# -- certificates -----------------------------------------------------------------


def check_certificate(
    block: Block, authorities: Sequence[Authority], *, require_quorum: bool = True
) -> None:
    """The proposer is an authority and voted; every vote is a valid, distinct
    authority's; with ``require_quorum``, there are ``quorum(n)`` of them.

    Every entry must be valid, not merely enough of them: the certificate is
    kept as the proof of finality, so it holds nothing unproven.
    """
    keys = {a.id: a.public_key for a in authorities}
    if block.proposer not in keys:
        raise ValidationError(Reason.BAD_PROPOSER, f"{block.proposer!r} is not an authority")
    voters = [vote.authority for vote in block.certificate]
    rounds = {vote.round for vote in block.certificate}
    if rounds - {None}:
        # A decided block's certificate: precommits of one round (the proposer need not be among them).
        if len(rounds) != 1:
            raise ValidationError(Reason.BAD_CERTIFICATE, "the precommits are not all of one round")
    elif block.proposer not in voters:
        raise ValidationError(Reason.BAD_PROPOSER, "the proposer did not sign the block")
    if len(set(voters)) != len(voters):
        raise ValidationError(Reason.BAD_CERTIFICATE, "an authority voted twice")
    needed = quorum(len(keys))
    if require_quorum and len(voters) < needed:
        raise ValidationError(
            Reason.BAD_CERTIFICATE, f"{len(voters)} of {len(keys)} votes; {needed} needed"
        )
    for vote in block.certificate:
        message = _vote_message(block, vote)
        if vote.authority not in keys:
            raise ValidationError(
                Reason.BAD_CERTIFICATE, f"vote by {vote.authority!r}, not an authority"
            )
        if not crypto.is_valid_signature(keys[vote.authority], vote.signature, message):
            raise ValidationError(Reason.BAD_CERTIFICATE, f"invalid vote by {vote.authority!r}")


def precommit_message(block: Block, authority: str, round_: int) -> bytes:
    """What a precommit for ``block`` at ``round_`` signs: the consensus bytes of that round."""
    precommit = consensus.Vote(
        consensus.Kind.PRECOMMIT, block.height, round_, block.cid.to_bytes(), authority
    )
    return consensus.sign_bytes(block.chain_id, precommit)


def _vote_message(block: Block, vote: Vote) -> bytes:
    if vote.round is None:
        return vote_message(block.cid)
    return precommit_message(block, vote.authority, vote.round)


# -- blocks ---------------------------------------------------------------------------


def validate_block(
    block: Block,
    *,
    parent: Block,
    txs: Sequence[Transaction],
    state: StateView,
    registry: Registry,
    authorities: Sequence[Authority] | None = None,
    params: ChainParams | None = None,
    now_ms: int | None = None,
    max_future_ms: int | None = None,
    require_quorum: bool = True,
    threads: int = 1,
) -> BlockResult:
    """Check ``block`` on top of ``parent`` and ``state`` (the state after ``parent``).

    ``authorities`` and ``params`` default to those recorded in ``state``.
    ``require_quorum=False`` checks a proposal before voting on it. Raises
    :class:`ValidationError`; returns the changes to commit. See the module
    docstring for the order of checks.
    """
    authorities = authorities_of(state) if authorities is None else authorities
    params = params_of(state) if params is None else params
    clock = _now() if now_ms is None else now_ms
    future = params.max_future_ms if max_future_ms is None else max_future_ms
    _check_link(block, parent)
    if block.timestamp < parent.timestamp:
        raise ValidationError(Reason.BAD_TIMESTAMP, "block is older than its parent")
    if block.timestamp > clock + future:
        raise ValidationError(Reason.BAD_TIMESTAMP, "block timestamp is too far in the future")
    check_certificate(block, authorities, require_quorum=require_quorum)
    _check_tx_list(block, txs, params)
    verify_signatures(txs, threads)
    overlay = Overlay(state)
    hasher = StateHasher(parent.state_hash)
    for index, tx in enumerate(txs):
        try:
            apply_transaction(
                tx,
                overlay=overlay,
                registry=registry,
                params=params,
                chain_id=block.chain_id,
                latest_ms=block.timestamp + params.max_future_ms,
                hasher=hasher,
            )
        except ValidationError as exc:
            raise ValidationError(
                exc.reason, f"transaction {index} ({tx.cid}): {exc.message}"
            ) from None
    if hasher.digest() != block.state_hash:
        raise ValidationError(Reason.BAD_STATE_HASH, "state hash differs after applying the block")
    return BlockResult(block, tuple(txs), tuple(overlay.changes))


def _check_link(block: Block, parent: Block) -> None:
    if block.chain_id != parent.chain_id:
        raise ValidationError(
            Reason.WRONG_CHAIN, f"block is for chain {block.chain_id!r}, not {parent.chain_id!r}"
        )
    if block.height != parent.height + 1:
        raise ValidationError(
            Reason.BAD_HEIGHT, f"height {block.height} does not follow {parent.height}"
        )
    if block.parent != parent.cid:
        raise ValidationError(Reason.BROKEN_LINK, f"parent link is not {parent.cid}")
    if block.genesis is not None:
        raise ValidationError(Reason.BAD_GENESIS, "only block 0 carries genesis data")


def _check_tx_list(block: Block, txs: Sequence[Transaction], params: ChainParams) -> None:
    if len(block.txs) > params.max_block_txs:
        raise ValidationError(
            Reason.TOO_MANY_TXS, f"{len(block.txs)} transactions; at most {params.max_block_txs}"
        )
    if len(txs) != len(block.txs) or any(
        tx.cid != cid for tx, cid in zip(txs, block.txs, strict=True)
    ):
        raise ValidationError(Reason.TX_MISMATCH, "the transactions are not the ones linked")
    if merkle_root(block.txs) != block.tx_root:
        raise ValidationError(Reason.BAD_MERKLE_ROOT, "tx_root is not the root of the tx CIDs")


def verify_signatures(txs: Sequence[Transaction], threads: int) -> None:
    """Verify the not-yet-verified signatures in one batch (possibly threaded).

    Each transaction that passes is marked checked; a failure is reported by
    the check that follows (``apply_transaction``, ``check_transaction``).
    """
    todo = [tx for tx in txs if not tx.signature_checked]
    _mark_checked(todo, crypto.verify_many(_signed(todo), threads=threads))


@dataclass(frozen=True)
class SignatureCheck:
    """Signatures being verified elsewhere (:func:`start_signature_check`)."""

    txs: tuple[Transaction, ...]
    parts: tuple[Future[list[bool]], ...]

    def wait(self) -> None:
        """Wait for the verdicts and mark the transactions whose signature verified."""
        _mark_checked(self.txs, [ok for part in self.parts for ok in part.result()])


def start_signature_check(txs: Sequence[Transaction], pool: Executor, *, parts: int) -> SignatureCheck:
    """Start verifying the unchecked signatures of ``txs`` in ``pool``, while the caller goes on.

    As with :func:`verify_signatures`, a failure is not raised: the
    transaction stays unchecked and the validation that follows reports it.
    """
    todo = tuple(tx for tx in txs if not tx.signature_checked)
    return SignatureCheck(todo, tuple(crypto.verify_many_in(pool, _signed(todo), parts=parts)))


def _signed(txs: Sequence[Transaction]) -> list[tuple[bytes, bytes, bytes]]:
    return [(tx.signer, tx.signature, tx.signing_bytes) for tx in txs]


def _mark_checked(txs: Sequence[Transaction], results: Sequence[bool]) -> None:
    for tx, ok in zip(txs, results, strict=True):
        if ok:
            tx.mark_signature_checked()
    # Failures are reported by apply_transaction, in block order, with their index.


# -- sealing ------------------------------------------------------------------------------


def seal_block(
    *,
    parent: Block,
    pending: Sequence[Transaction],
    state: StateView,
    registry: Registry,
    node_id: str,
    node_key: bytes,
    now_ms: int | None = None,
    authorities: Sequence[Authority] | None = None,
    params: ChainParams | None = None,
    threads: int = 1,
) -> SealResult:
    """Build, apply (to an overlay) and sign the next block from ``pending``.

    Transactions are taken in the given order. One whose sequence number
    skips ahead waits until the missing number is included in this block;
    one that can never be valid is reported in ``rejected``. Nothing in the
    block is unvalidated, so the block passes :func:`validate_block` on every
    node that has the same state.
    """
    authorities = authorities_of(state) if authorities is None else authorities
    params = params_of(state) if params is None else params
    _check_sealer(node_id, node_key, authorities)
    timestamp = max(_now() if now_ms is None else now_ms, parent.timestamp)
    verify_signatures(pending[: params.max_block_txs], threads)
    sealer = _Sealer(parent, state, registry, params, timestamp + params.max_future_ms)
    for tx in pending:
        sealer.offer(tx)
    block = Block(
        chain_id=parent.chain_id,
        height=parent.height + 1,
        parent=parent.cid,
        timestamp=timestamp,
        proposer=node_id,
        tx_root=merkle_root([tx.cid for tx in sealer.included]),
        txs=tuple(tx.cid for tx in sealer.included),
        state_hash=sealer.hasher.digest(),
    )
    block = block.with_votes([block.vote(node_id, node_key)])
    result = BlockResult(block, tuple(sealer.included), tuple(sealer.overlay.changes))
    deferred = [*sealer.deferred, *sealer.waiting.values()]
    return SealResult(block, result, tuple(sealer.rejected), tuple(deferred))


def _check_sealer(node_id: str, node_key: bytes, authorities: Sequence[Authority]) -> None:
    keys = {a.id: a.public_key for a in authorities}
    if node_id not in keys:
        raise ValidationError(Reason.BAD_PROPOSER, f"{node_id!r} is not an authority")
    if crypto.ed25519_public(node_key) != keys[node_id]:
        raise ValidationError(Reason.BAD_PROPOSER, f"the key given is not {node_id!r}'s")


class _Sealer:
    """The mutable bookkeeping of one :func:`seal_block` call."""

    def __init__(
        self,
        parent: Block,
        state: StateView,
        registry: Registry,
        params: ChainParams,
        latest_ms: int,
    ) -> None:
        self.chain_id = parent.chain_id
        self.registry = registry
        self.params = params
        self.latest_ms = latest_ms
        self.overlay = Overlay(state)
        self.hasher = StateHasher(parent.state_hash)
        self.included: list[Transaction] = []
        self.rejected: list[Rejected] = []
        self.deferred: list[Transaction] = []
        self.waiting: dict[tuple[bytes, int], Transaction] = {}

    def offer(self, tx: Transaction) -> None:
        if len(self.included) >= self.params.max_block_txs:
            self.deferred.append(tx)
            return
        if not self._admit(tx):
            return
        # Admitting seq n may unblock the same signer's n + 1, n + 2, …
        key = (tx.signer, tx.seq + 1)
        while key in self.waiting and len(self.included) < self.params.max_block_txs:
            follower = self.waiting.pop(key)
            if not self._admit(follower):
                break
            key = (tx.signer, follower.seq + 1)

    def _admit(self, tx: Transaction) -> bool:
        try:
            apply_transaction(
                tx,
                overlay=self.overlay,
                registry=self.registry,
                params=self.params,
                chain_id=self.chain_id,
                latest_ms=self.latest_ms,
                hasher=self.hasher,
            )
        except ValidationError as exc:
            if exc.reason is Reason.BAD_SEQ:
                if (tx.signer, tx.seq) in self.waiting:
                    self.deferred.append(tx)
                else:
                    self.waiting[(tx.signer, tx.seq)] = tx
            else:
                self.rejected.append(Rejected(tx, exc))
            return False
        self.included.append(tx)
        return True


def _now() -> int:
    return now_ms()
