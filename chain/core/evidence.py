"""Evidence of double-signing, committed on chain: ``consensus.evidence``.

Two consensus messages one authority signed for the same height, round and
kind but different blocks (:func:`~chain.core.consensus.conflicting`) prove
it broke the protocol, whoever reports them: the transaction carries both
messages, each with its signature, and every node checks both signatures
against that authority's key before the block is accepted. Anyone may submit
it (a node submits what its consensus loop caught, signed with its own key).

The state keeps, under ``chain/evidence/<authority>``, the list of offences
``[height, round, kind]`` (one entry per offence: the same evidence, or
another pair for the same offence, is refused as already known), which the
explorer shows. Evidence counts toward removing that authority: committed, it
is its reporter's approval of the removal (the first report of an offender,
while no removal of it is pending, when the reporter is an authority),
and a proven offender is removed by ``f + 1`` approvals instead of a quorum
(:func:`chain.core.consortium.removal_threshold`), on chains whose genesis
parameters say so (``membership_rules`` 2; older chains keep their rules).
"""

from __future__ import annotations

from typing import Any

from . import consensus, crypto
from .consortium import (
    EVIDENCE_COUNTS,
    EVIDENCE_PREFIX,
    authorities_of,
    params_of,
    pending_change,
    removal_changes,
)
from .errors import CodecError
from .registry import Field, TxType, reject
from .state import StateChange, StateView
from .transaction import Transaction


def evidence_payload(first: consensus.Message, second: consensus.Message) -> dict[str, Any]:
    return {"first": consensus.message_to_cbor(first), "second": consensus.message_to_cbor(second)}


def offences_of(view: StateView, authority: str) -> list[list[int]]:
    return list(view.get(EVIDENCE_PREFIX + authority) or [])


def _messages(tx: Transaction) -> tuple[consensus.Message, consensus.Message]:
    try:
        return consensus.message_from_cbor(tx.payload["first"]), consensus.message_from_cbor(tx.payload["second"])
    except CodecError as exc:
        reject(f"evidence holds a malformed message: {exc}")


def _validate(view: StateView, tx: Transaction) -> None:
    first, second = _messages(tx)
    if not consensus.conflicting(first.unsigned(), second.unsigned()):
        reject("the two messages do not conflict (same signer, height, round and kind; different blocks)")
    keys = {a.id: a.public_key for a in authorities_of(view)}
    key = keys.get(first.sender)
    if key is None:
        reject(f"{first.sender!r} is not an authority")
    for message in (first, second):
        if not crypto.is_valid_signature(key, message.signature, consensus.sign_bytes(tx.chain_id, message.unsigned())):
            reject(f"a message of the evidence is not signed by {first.sender!r}")
    if [first.height, first.round, int(first.kind)] in offences_of(view, first.sender):
        reject("this offence is already on chain")


def _apply(view: StateView, tx: Transaction) -> list[StateChange]:
    first, _ = _messages(tx)
    offender = first.sender
    offences = [*offences_of(view, offender), [first.height, first.round, int(first.kind)]]
    changes = [StateChange(EVIDENCE_PREFIX + offender, offences)]
    if params_of(view).membership_rules < EVIDENCE_COUNTS:
        return changes  # a chain made before evidence counted toward removal keeps its rules
    current = authorities_of(view)
    reporter = next((a.id for a in current if a.public_key == tx.signer), None)
    approved = (pending_change(view, "leave", offender) or {}).get("approvals", [])
    # Only the first report of an offender, while nobody has approved its removal yet, counts as an
    # approval: every node reports what it sees, and several reports must not remove it on their own.
    approver = reporter if reporter not in (None, offender) and not approved else None
    if len(current) > 1:
        changes += removal_changes(view, offender, approver, proven=True)  # approvals so far may now be enough
    return changes


EVIDENCE = TxType(
    name="consensus.evidence",
    schema={"first": Field(dict), "second": Field(dict)},
    validate=_validate,
    apply=_apply,
    description="Two conflicting consensus messages signed by one authority.",
)
