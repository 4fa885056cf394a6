"""The consortium: authorities, quorum, chain parameters, membership changes.

Every institution's node is an authority, named by an id and holding an
Ed25519 key. A block is final when ``quorum(n)`` distinct authorities signed
it, with ``quorum(n) = n - (n - 1) // 3``: for ``n = 3f + 1`` that is
``2f + 1``, the smallest number such that two quorums always share at least
``f + 1`` nodes, hence at least one honest node, so two conflicting blocks at
one height cannot both be final while at most ``f`` authorities misbehave.
``quorum(1) = 1``: a node alone is the embedded default.

Membership changes are transactions (``node.joined`` / ``node.left``), each
one authority's approval of the change; the change happens when ``quorum(n)``
distinct current authorities have approved the same change (one authority
cannot add a friend or remove a rival; a lone node's own approval is its
quorum). Pending approvals live under ``chain/membership/<join|leave>/<id>``.
An authority proven to have double-signed (evidence committed on chain) is
removed by ``f + 1`` approvals, and the evidence counts as its reporter's
approval (:func:`removal_threshold`).
A change takes effect from the *next* height: the block that completes it is
certified by the authority set before it, and every node applies a block
before it starts the next height, so all of them use the same set.
The set lives in the state under ``chain/authorities`` (sorted by id) and the
parameters under ``chain/params``, both written by the genesis block; their
encodings are lists and maps, so nothing changes shape as the consortium grows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import crypto
from .errors import CodecError
from .registry import Field, TxType, reject
from .state import StateChange, StateView
from .transaction import Transaction

AUTHORITIES_KEY = "chain/authorities"
PARAMS_KEY = "chain/params"
QUORUM_RULE = "2f+1"
MEMBERSHIP_RULES = (1, 2)
EVIDENCE_COUNTS = 2  # the membership rules from which evidence counts toward removal
MAX_AUTHORITY_ID = 64


def quorum(n: int) -> int:
    """Signatures needed among ``n`` authorities: ``2f + 1`` for ``n = 3f + 1``."""
    if n < 1:
        raise ValueError("a consortium has at least one authority")
    return n - (n - 1) // 3


@dataclass(frozen=True)
class Authority:
    """A node allowed to propose and sign blocks."""

    id: str
    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not 0 < len(self.id) <= MAX_AUTHORITY_ID:
            raise CodecError(f"authority id must be 1..{MAX_AUTHORITY_ID} characters")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != crypto.KEY_SIZE:
            raise CodecError("authority public key must be 32 bytes")

    def to_cbor(self) -> dict[str, Any]:
        return {"id": self.id, "public_key": self.public_key}

    @classmethod
    def from_cbor(cls, value: Any) -> Authority:
        if not isinstance(value, dict) or set(value) != {"id", "public_key"}:
            raise CodecError("an authority is a map {id, public_key}")
        return cls(value["id"], value["public_key"])


def authority_set(authorities: Iterable[Authority]) -> tuple[Authority, ...]:
    """Sorted by id, with ids and keys unique; :class:`CodecError` otherwise."""
    ordered = tuple(sorted(authorities, key=lambda a: a.id))
    if not ordered:
        raise CodecError("the authority set is empty")
    if len({a.id for a in ordered}) != len(ordered):
        raise CodecError("authority ids must be unique")
    if len({a.public_key for a in ordered}) != len(ordered):
        raise CodecError("authority keys must be unique")
    return ordered


@dataclass(frozen=True)
class ChainParams:
    """Chain-wide parameters fixed at genesis."""

    block_interval_ms: int = 1_000
    max_block_txs: int = 5_000
    max_tx_size: int = 64 * 1024
    max_future_ms: int = 10_000
    quorum_rule: str = QUORUM_RULE
    # 1: removing an authority always takes a quorum of approvals. 2: evidence of double-signing
    # counts toward removing the offender (removal_threshold). Fixed at genesis, so a chain is
    # validated by the rules it was made with; encoded only when not 1 (older genesis blocks).
    membership_rules: int = 1

    def __post_init__(self) -> None:
        for name in ("block_interval_ms", "max_block_txs", "max_tx_size", "max_future_ms", "membership_rules"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise CodecError(f"chain parameter {name} must be a non-negative integer")
        if self.quorum_rule != QUORUM_RULE:
            raise CodecError(f"unsupported quorum rule {self.quorum_rule!r}")
        if self.membership_rules not in MEMBERSHIP_RULES:
            raise CodecError(f"unsupported membership rules {self.membership_rules!r}")

    def to_cbor(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "block_interval_ms": self.block_interval_ms,
            "max_block_txs": self.max_block_txs,
            "max_tx_size": self.max_tx_size,
            "max_future_ms": self.max_future_ms,
            "quorum_rule": self.quorum_rule,
        }
        if self.membership_rules != 1:
            value["membership_rules"] = self.membership_rules
        return value

    @classmethod
    def from_cbor(cls, value: Any) -> ChainParams:
        required = set(cls().to_cbor())
        if not isinstance(value, dict) or not required <= set(value) <= required | {"membership_rules"}:
            raise CodecError("chain parameters have missing or unknown fields")
        return cls(**value)


def authorities_of(view: StateView) -> tuple[Authority, ...]:
    """The current authority set, as written by genesis and membership txs."""
    value = view.get(AUTHORITIES_KEY)
    if value is None:
        raise CodecError("the state holds no authority set (genesis not applied?)")
    return tuple(Authority.from_cbor(item) for item in value)


def params_of(view: StateView) -> ChainParams:
    """The chain parameters written by genesis."""
    value = view.get(PARAMS_KEY)
    if value is None:
        raise CodecError("the state holds no chain parameters (genesis not applied?)")
    return ChainParams.from_cbor(value)


def genesis_changes(authorities: Sequence[Authority], params: ChainParams) -> list[StateChange]:
    """The state the genesis block writes."""
    return [
        StateChange(AUTHORITIES_KEY, [a.to_cbor() for a in authorities]),
        StateChange(PARAMS_KEY, params.to_cbor()),
    ]


# -- membership transactions ---------------------------------------------------


def _require_authority_signer(view: StateView, tx: Transaction) -> tuple[Authority, ...]:
    current = authorities_of(view)
    if tx.signer not in {a.public_key for a in current}:
        reject("only a current authority may change the membership")
    return current


MEMBERSHIP_PREFIX = "chain/membership/"
EVIDENCE_PREFIX = "chain/evidence/"  # written by consensus.evidence (chain.core.evidence)


def pending_change(view: StateView, change: str, node_id: str) -> dict[str, Any] | None:
    """The approvals gathered so far for ``change`` ("join" or "leave") of ``node_id``."""
    value = view.get(f"{MEMBERSHIP_PREFIX}{change}/{node_id}")
    return value if isinstance(value, dict) else None


def _approver(view: StateView, tx: Transaction, change: str) -> str:
    """The id of the authority approving, refused if it is none or already approved this change."""
    current = _require_authority_signer(view, tx)
    approver = next(a.id for a in current if a.public_key == tx.signer)
    pending = pending_change(view, change, tx.payload["id"])
    if pending is not None and approver in pending["approvals"]:
        reject(f"{approver!r} has already approved this change")
    return approver


def removal_threshold(view: StateView, node_id: str, *, proven: bool = False) -> int:
    """How many approvals remove ``node_id``: a quorum, or ``f + 1`` once it is proven to have double-signed.

    Evidence on chain (``chain/evidence/<id>``, :mod:`chain.core.evidence`) is
    a proof every node checked, not an opinion, so removing a proven offender
    needs only enough approvals that at least one comes from an honest
    authority: ``n - quorum(n) + 1``. The authorities that misbehave (at most
    ``f``) still cannot remove anyone alone, and cannot forge evidence.
    """
    n = len(authorities_of(view))
    if params_of(view).membership_rules >= EVIDENCE_COUNTS and (proven or view.get(EVIDENCE_PREFIX + node_id)):
        return n - quorum(n) + 1
    return quorum(n)


def _count_approval(
    view: StateView, change: str, node_id: str, approver: str | None, record: dict[str, Any], threshold: int
) -> tuple[bool, StateChange]:
    """Count ``approver``'s approval (None: none new); whether the change now has enough, and the entry's change."""
    key = f"{MEMBERSHIP_PREFIX}{change}/{node_id}"
    approvals = sorted({*((pending_change(view, change, node_id) or {}).get("approvals", [])), approver} - {None})
    if len(approvals) >= threshold:
        return True, StateChange(key, None)
    return False, StateChange(key, {**record, "approvals": approvals})


def removal_changes(view: StateView, node_id: str, approver: str | None, *, proven: bool = False) -> list[StateChange]:
    """``approver``'s approval of removing ``node_id`` (None: recount, the threshold fell), and the removal once due."""
    if approver is None and pending_change(view, "leave", node_id) is None:
        return []
    threshold = removal_threshold(view, node_id, proven=proven)
    done, entry = _count_approval(view, "leave", node_id, approver, {}, threshold)
    if not done:
        return [entry]
    remaining = [a for a in authorities_of(view) if a.id != node_id]
    return [entry, StateChange(AUTHORITIES_KEY, [a.to_cbor() for a in remaining])]


def _validate_joined(view: StateView, tx: Transaction) -> None:
    current = _require_authority_signer(view, tx)
    node_id, key = tx.payload["id"], tx.payload["public_key"]
    if not node_id:
        reject("node id is empty")
    if len(key) != crypto.KEY_SIZE:
        reject("node public key must be 32 bytes")
    if any(a.id == node_id for a in current):
        reject(f"node {node_id!r} is already an authority")
    if any(a.public_key == key for a in current):
        reject("that public key already belongs to an authority")
    pending = pending_change(view, "join", node_id)
    if pending is not None and pending["public_key"] != key:
        reject(f"another key is being approved for {node_id!r}")
    _approver(view, tx, "join")


def _apply_joined(view: StateView, tx: Transaction) -> list[StateChange]:
    approver, threshold = _approver(view, tx, "join"), quorum(len(authorities_of(view)))
    done, entry = _count_approval(
        view, "join", tx.payload["id"], approver, {"public_key": tx.payload["public_key"]}, threshold
    )
    if not done:
        return [entry]
    joined = Authority(tx.payload["id"], tx.payload["public_key"])
    updated = authority_set([*authorities_of(view), joined])
    return [entry, StateChange(AUTHORITIES_KEY, [a.to_cbor() for a in updated])]


def _validate_left(view: StateView, tx: Transaction) -> None:
    current = _require_authority_signer(view, tx)
    node_id = tx.payload["id"]
    if all(a.id != node_id for a in current):
        reject(f"node {node_id!r} is not an authority")
    if len(current) == 1:
        reject("the last authority cannot leave")
    _approver(view, tx, "leave")


def _apply_left(view: StateView, tx: Transaction) -> list[StateChange]:
    return removal_changes(view, tx.payload["id"], _approver(view, tx, "leave"))


NODE_JOINED = TxType(
    name="node.joined",
    schema={
        "id": Field(str, max_length=MAX_AUTHORITY_ID),
        "public_key": Field(bytes, max_length=crypto.KEY_SIZE),
    },
    validate=_validate_joined,
    apply=_apply_joined,
    description="An authority approves admitting a node; a quorum of approvals admits it.",
)

NODE_LEFT = TxType(
    name="node.left",
    schema={"id": Field(str, max_length=MAX_AUTHORITY_ID)},
    validate=_validate_left,
    apply=_apply_left,
    description="An authority approves removing a node; a quorum of approvals removes it.",
)

BUILTIN_TYPES = (NODE_JOINED, NODE_LEFT)
