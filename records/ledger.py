"""The records app's transaction types: anchors, access logs, grants, requests, break-glass.

No personal data goes on chain: a record appears under its random
``anchor_id`` (16 bytes, unrelated to its public id or its patient), a
version by the CID of its ciphertext manifest, and a salted commitment
``sha256(salt ‖ patient id ‖ record id ‖ root)`` that lets the patient (who can
be given the salt) prove the anchor is theirs without the chain saying so.
"""

from __future__ import annotations

import hashlib

from chain.core.cid import CID
from chain.core.registry import Field, TxType, reject
from chain.core.state import StateChange, StateView
from chain.core.transaction import Transaction

ANCHORED = "records.anchored"
SUPERSEDED = "records.superseded"
REKEYED = "records.rekeyed"
PREFIX = "rec/"

_SCHEMA = {
    "record": Field(bytes, max_length=16),
    "version": Field(int),
    "root": Field(CID),
    "commitment": Field(bytes, max_length=32),
}
_SUPERSEDE_SCHEMA = {**_SCHEMA, "previous": Field(CID)}


def _key(payload) -> str:
    return PREFIX + payload["record"].hex()


def _validate_anchor(view: StateView, tx: Transaction) -> None:
    payload = tx.payload
    if len(payload["record"]) != 16 or len(payload["commitment"]) != 32:
        reject("record handle must be 16 bytes and commitment 32 bytes")
    if payload["version"] != 1:
        reject("a record's first anchor is version 1; later versions supersede it")
    if view.get(_key(payload)) is not None:
        reject("this record is already anchored")


def _validate_supersede(view: StateView, tx: Transaction) -> None:
    payload = tx.payload
    current = view.get(_key(payload))
    if current is None:
        reject("cannot supersede a record that was never anchored")
    if payload["version"] != current["version"] + 1:
        reject(f"expected version {current['version'] + 1}, got {payload['version']}")
    if payload["previous"] != current["root"]:
        reject("previous root does not match the anchored version")


def _apply(view: StateView, tx: Transaction) -> list[StateChange]:
    payload = tx.payload
    return [StateChange(_key(payload), {"version": payload["version"], "root": payload["root"]})]


ANCHORED_TYPE = TxType(
    name=ANCHORED,
    schema=_SCHEMA,
    validate=_validate_anchor,
    apply=_apply,
    description="A record version's ciphertext exists with this root CID.",
)
SUPERSEDED_TYPE = TxType(
    name=SUPERSEDED,
    schema=_SUPERSEDE_SCHEMA,
    validate=_validate_supersede,
    apply=_apply,
    description="An amendment replaced a record's current version; the old one stays anchored.",
)


def _validate_rekeyed(view: StateView, tx: Transaction) -> None:
    """A re-encryption follows a revocation: the grant is revoked, and by this signer.

    So a re-keyed version is never mistaken for a clinical amendment, and only the
    patient who revoked access (the grant's issuer) re-keys what it covered.
    """
    _validate_supersede(view, tx)
    grant = view.get(grant_state_key(tx.payload["grant"]))
    if grant is None or not grant["revoked"]:
        reject("a re-encryption names a revoked grant")
    if grant["issuer"] != tx.signer:
        reject("only the patient who revoked the grant re-keys the records it covered")


REKEYED_TYPE = TxType(
    name=REKEYED,
    schema={**_SUPERSEDE_SCHEMA, "grant": Field(bytes, max_length=16)},
    validate=_validate_rekeyed,
    apply=_apply,
    description="A record's current version was re-encrypted with new keys after a grant was revoked; "
    "the content is unchanged.",
)


def commitment(*, salt: bytes, patient_id: str, record_id: str, root: str) -> bytes:
    return hashlib.sha256(salt + f"|{patient_id}|{record_id}|{root}".encode()).digest()


# -- access logged: a batch of audit-row digests, signed by a node ----------------------------
ACCESS_LOGGED = "records.access_logged"
ACCESS_BATCH_MAX = 500
DIGEST_SIZE = 32


def _validate_access_logged(view: StateView, tx: Transaction) -> None:
    """Only an authority node logs accesses; each entry is one distinct 32-byte digest.

    The digests are opaque (see ``records.footprint.services.event_digest``): the chain
    learns how many accesses a node logged and when, nothing about whose.
    """
    from chain.core.consortium import authorities_of

    digests = tx.payload["events"]
    if not digests:
        reject("an access batch logs at least one event")
    if any(len(d) != DIGEST_SIZE for d in digests):
        reject("every access digest is 32 bytes")
    if len(set(digests)) != len(digests):
        reject("an access batch lists each digest once")
    if all(a.public_key != tx.signer for a in authorities_of(view)):
        reject("only an authority node logs accesses")


ACCESS_LOGGED_TYPE = TxType(
    name=ACCESS_LOGGED,
    schema={"events": Field(list, max_length=ACCESS_BATCH_MAX, items=bytes)},
    validate=_validate_access_logged,
    description="A node logged a batch of accesses to patient data, each as a salted digest.",
)


# -- grants: issued and revoked by the patient's own key ------------------------------------------
GRANT_ISSUED = "records.grant_issued"
GRANT_REVOKED = "records.grant_revoked"
GRANT_PREFIX = "grant/"
GRANT_PURPOSE_MAX = 32


def grant_state_key(grant: bytes) -> str:
    return GRANT_PREFIX + grant.hex()


def _registered(view: StateView, sign_public: bytes):
    from accounts.ledger import key_state_key

    return view.get(key_state_key(sign_public))


def _validate_grant_issued(view: StateView, tx: Transaction) -> None:
    """Only a registered user key grants, to a registered grantee key, once per grant id.

    The grant id is random and never reused: a grant replayed after its
    revocation finds its id in the state and is refused (a byte-identical
    replay is already refused by the signer's sequence number).
    """
    payload = tx.payload
    if len(payload["grant"]) != 16:
        reject("a grant id is 16 bytes")
    if len(payload["pseudonym"]) != 32 or len(payload["scope_digest"]) != 32 or len(payload["grantee_key"]) != 32:
        reject("pseudonym, scope digest and grantee key are 32 bytes")
    if payload["not_after"] <= payload["not_before"]:
        reject("a grant ends after it starts")
    signer = _registered(view, tx.signer)
    if signer is None or signer.get("kind") != "user":
        reject("only a registered person's key issues a grant")
    if payload["grantee_key"] == tx.signer:
        reject("a patient does not grant to themselves")
    if _registered(view, payload["grantee_key"]) is None:
        reject("the grantee's key is not registered")
    if view.get(grant_state_key(payload["grant"])) is not None:
        reject("this grant id already exists")


def _apply_grant_issued(view: StateView, tx: Transaction) -> list[StateChange]:
    payload = tx.payload
    value = {
        "issuer": tx.signer,
        "grantee_key": payload["grantee_key"],
        "not_after": payload["not_after"],
        "revoked": False,
    }
    return [StateChange(grant_state_key(payload["grant"]), value)]


def _validate_grant_revoked(view: StateView, tx: Transaction) -> None:
    """Only the key that issued a grant revokes it, and only once."""
    current = view.get(grant_state_key(tx.payload["grant"]))
    if current is None:
        reject("no such grant")
    if current["revoked"]:
        reject("this grant is already revoked")
    if current["issuer"] != tx.signer:
        reject("only the patient who issued a grant revokes it")


def _apply_grant_revoked(view: StateView, tx: Transaction) -> list[StateChange]:
    key = grant_state_key(tx.payload["grant"])
    return [StateChange(key, {**view.get(key), "revoked": True})]


GRANT_ISSUED_TYPE = TxType(
    name=GRANT_ISSUED,
    schema={
        "grant": Field(bytes, max_length=16),
        "pseudonym": Field(bytes, max_length=32),
        "grantee_key": Field(bytes, max_length=32),
        "purpose": Field(str, max_length=GRANT_PURPOSE_MAX),
        "not_before": Field(int),
        "not_after": Field(int),
        "scope_digest": Field(bytes, max_length=32),
    },
    validate=_validate_grant_issued,
    apply=_apply_grant_issued,
    description="A patient (under a per-relationship pseudonym) granted a key holder access.",
)
GRANT_REVOKED_TYPE = TxType(
    name=GRANT_REVOKED,
    schema={"grant": Field(bytes, max_length=16)},
    validate=_validate_grant_revoked,
    apply=_apply_grant_revoked,
    description="The patient revoked a grant.",
)


# -- access requested: a doctor asks, signed by the doctor's own key ----------------------------
ACCESS_REQUESTED = "records.access_requested"
REQUEST_PREFIX = "request/"


def request_state_key(request: bytes) -> str:
    return REQUEST_PREFIX + request.hex()


def _validate_access_requested(view: StateView, tx: Transaction) -> None:
    """A registered person's key asks, once per random request id.

    The patient appears only as the relationship's pseudonym (the same HMAC
    a grant for this requester and purpose carries), never by any identifier.
    """
    payload = tx.payload
    if len(payload["request"]) != 16:
        reject("a request id is 16 bytes")
    if len(payload["pseudonym"]) != 32:
        reject("a pseudonym is 32 bytes")
    signer = _registered(view, tx.signer)
    if signer is None or signer.get("kind") != "user":
        reject("only a registered person's key requests access")
    if view.get(request_state_key(payload["request"])) is not None:
        reject("this request id already exists")


def _apply_access_requested(view: StateView, tx: Transaction) -> list[StateChange]:
    return [StateChange(request_state_key(tx.payload["request"]), {"requester": tx.signer})]


ACCESS_REQUESTED_TYPE = TxType(
    name=ACCESS_REQUESTED,
    schema={
        "request": Field(bytes, max_length=16),
        "pseudonym": Field(bytes, max_length=32),
        "purpose": Field(str, max_length=GRANT_PURPOSE_MAX),
    },
    validate=_validate_access_requested,
    apply=_apply_access_requested,
    description="A key holder asked a patient (under a per-relationship pseudonym) for access.",
)


# -- break-glass: a clinician opens emergency access; a reviewer closes it ----------------------------
BREAK_GLASS_OPENED = "records.break_glass_opened"
BREAK_GLASS_CLOSED = "records.break_glass_closed"
BREAK_GLASS_PREFIX = "breakglass/"
BREAK_GLASS_MAX_MS = 12 * 3600 * 1000
BREAK_GLASS_REASONS = frozenset({"unconscious", "life_threatening", "urgent_treatment", "transfer", "other"})
BREAK_GLASS_OUTCOMES = frozenset({"justified", "not_justified"})


def break_glass_state_key(session: bytes) -> str:
    return BREAK_GLASS_PREFIX + session.hex()


def _validate_break_glass_opened(view: StateView, tx: Transaction) -> None:
    """A registered person's key opens a session once, for at most 12 hours from the transaction's time.

    The patient appears only under the pseudonym of the (clinician, break-glass)
    relationship; the reason is a code from a fixed list, the free text never
    goes on chain.
    """
    payload = tx.payload
    if len(payload["session"]) != 16:
        reject("a break-glass session id is 16 bytes")
    if len(payload["pseudonym"]) != 32:
        reject("a pseudonym is 32 bytes")
    if payload["reason"] not in BREAK_GLASS_REASONS:
        reject("unknown break-glass reason")
    if not 0 < payload["not_after"] - tx.timestamp <= BREAK_GLASS_MAX_MS:
        reject("break-glass access ends after it starts and lasts at most 12 hours")
    signer = _registered(view, tx.signer)
    if signer is None or signer.get("kind") != "user":
        reject("only a registered person's key opens break-glass access")
    if view.get(break_glass_state_key(payload["session"])) is not None:
        reject("this break-glass session already exists")


def _apply_break_glass_opened(view: StateView, tx: Transaction) -> list[StateChange]:
    value = {"opener": tx.signer, "not_after": tx.payload["not_after"], "closed": False}
    return [StateChange(break_glass_state_key(tx.payload["session"]), value)]


def _validate_break_glass_closed(view: StateView, tx: Transaction) -> None:
    """A registered person other than the opener closes a session, once, with a review outcome."""
    current = view.get(break_glass_state_key(tx.payload["session"]))
    if current is None:
        reject("no such break-glass session")
    if current["closed"]:
        reject("this break-glass session is already closed")
    if tx.payload["outcome"] not in BREAK_GLASS_OUTCOMES:
        reject("unknown review outcome")
    if current["opener"] == tx.signer:
        reject("the clinician who broke the glass does not review it")
    signer = _registered(view, tx.signer)
    if signer is None or signer.get("kind") != "user":
        reject("only a registered person's key closes break-glass access")


def _apply_break_glass_closed(view: StateView, tx: Transaction) -> list[StateChange]:
    key = break_glass_state_key(tx.payload["session"])
    return [StateChange(key, {**view.get(key), "closed": True, "outcome": tx.payload["outcome"]})]


BREAK_GLASS_OPENED_TYPE = TxType(
    name=BREAK_GLASS_OPENED,
    schema={
        "session": Field(bytes, max_length=16),
        "pseudonym": Field(bytes, max_length=32),
        "reason": Field(str, max_length=20),
        "not_after": Field(int),
    },
    validate=_validate_break_glass_opened,
    apply=_apply_break_glass_opened,
    description="A clinician opened time-boxed emergency access to a patient (under a pseudonym).",
)
BREAK_GLASS_CLOSED_TYPE = TxType(
    name=BREAK_GLASS_CLOSED,
    schema={"session": Field(bytes, max_length=16), "outcome": Field(str, max_length=16)},
    validate=_validate_break_glass_closed,
    apply=_apply_break_glass_closed,
    description="An institution's administrator reviewed and closed emergency access.",
)


def register() -> None:
    from chain.ledger_registry import register_pin_intent, register_tx_type

    # What the consortium keeps replicas of: every anchored version's root; a re-keyed version's
    # old ciphertext is let go (an amendment keeps the previous version: it is the record's history).
    register_pin_intent(ANCHORED, pins="root")
    register_pin_intent(SUPERSEDED, pins="root")
    register_pin_intent(REKEYED, pins="root", releases="previous")

    register_tx_type(ANCHORED_TYPE)
    register_tx_type(SUPERSEDED_TYPE)
    register_tx_type(REKEYED_TYPE)
    register_tx_type(ACCESS_LOGGED_TYPE)
    register_tx_type(GRANT_ISSUED_TYPE)
    register_tx_type(GRANT_REVOKED_TYPE)
    register_tx_type(ACCESS_REQUESTED_TYPE)
    register_tx_type(BREAK_GLASS_OPENED_TYPE)
    register_tx_type(BREAK_GLASS_CLOSED_TYPE)
