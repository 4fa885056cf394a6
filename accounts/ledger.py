"""The accounts app's transactions: public keys, and the consortium's directory of institutions and staff.

DESIGN section 4: public keys are published on the chain, so any node can
wrap a data key for a recipient on another node. Every user and institution
registers its X25519 encryption key and its Ed25519 signing key once, in a
transaction signed by that very signing key (which proves the holder has it).

No personal data goes on chain: the payload is the kind of holder (``user``
or ``institution``), the two public keys and, for an institution, its public
code. A user's name, email, role and id stay in the node's database.

State: ``accounts/key/<signing key hex>`` → ``{kind, enc_public,
institution?, tx}``; ``chain.models.KeyRegistration`` mirrors it.

The directory (DESIGN section 7): an institution lists itself
(``accounts.institution_listed``: code, public id, kind, names, city and the
node that holds its people), signed by its own key; it lists its staff
(``accounts.staff_listed``: a registered person's key with their public id,
role, names and title, or their removal), signed by the institution's key again. That is
professional information its institution vouches for; patients are never
listed. Every node projects both into ``ListedInstitution`` and
``ListedStaff`` and, from them, keeps a directory row for each institution and
staff member whose home is another node (``accounts.directory``).
"""

from __future__ import annotations

import re
from typing import Any

from chain.core import crypto
from chain.core.registry import Field, TxType, reject
from chain.core.state import StateChange, StateView
from chain.core.transaction import Transaction

TYPE_NAME = "accounts.key_registered"
KEY_PREFIX = "accounts/key/"
KINDS = ("user", "institution")
_CODE = re.compile(r"^[-a-zA-Z0-9_]{1,40}$")  # Institution.code is a SlugField(max_length=40)


def key_state_key(sign_public: bytes) -> str:
    return KEY_PREFIX + sign_public.hex()


def _validate(view: StateView, tx: Transaction) -> None:
    payload = tx.payload
    if payload["kind"] not in KINDS:
        reject(f"kind must be one of {', '.join(KINDS)}")
    if len(payload["enc_public"]) != crypto.KEY_SIZE or len(payload["sign_public"]) != crypto.KEY_SIZE:
        reject("public keys are 32 bytes")
    if payload["sign_public"] != tx.signer:
        reject("a key registration must be signed by the signing key it registers")
    code = payload.get("institution")
    if payload["kind"] == "institution":
        if code is None or not _CODE.match(code):
            reject("an institution's registration carries its code")
    elif code is not None:
        reject("only an institution's registration carries an institution code")
    if view.get(key_state_key(tx.signer)) is not None:
        reject("this signing key is already registered")


def _apply(view: StateView, tx: Transaction) -> list[StateChange]:
    value: dict[str, Any] = {"kind": tx.payload["kind"], "enc_public": tx.payload["enc_public"], "tx": tx.cid}
    if "institution" in tx.payload:
        value["institution"] = tx.payload["institution"]
    return [StateChange(key_state_key(tx.signer), value)]


KEY_REGISTERED = TxType(
    name=TYPE_NAME,
    schema={
        "kind": Field(str, max_length=16),
        "enc_public": Field(bytes, max_length=crypto.KEY_SIZE),
        "sign_public": Field(bytes, max_length=crypto.KEY_SIZE),
        "institution": Field(str, required=False, max_length=40),
    },
    validate=_validate,
    apply=_apply,
    description="A user or institution publishes its public keys.",
)


def key_registration_fields(key: str, value: dict[str, Any]) -> dict[str, Any]:
    """The ``KeyRegistration`` row of one ``accounts/key/`` state entry."""
    return {
        "sign_public": key.removeprefix(KEY_PREFIX),
        "enc_public": value["enc_public"].hex(),
        "kind": value["kind"],
        "institution_code": value.get("institution", ""),
        "tx_cid": str(value["tx"]),
    }


# -- the directory: institutions list themselves, and list their staff ------------------------------
INSTITUTION_LISTED = "accounts.institution_listed"
STAFF_LISTED = "accounts.staff_listed"
INSTITUTION_PREFIX = "accounts/institution/"
STAFF_PREFIX = "accounts/staff/"
INSTITUTION_KINDS = ("hospital", "clinic", "research")
STAFF_ROLES = ("clinician", "researcher", "institution_admin")
_NODE = re.compile(r"^[-a-zA-Z0-9_.]{1,64}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def institution_state_key(code: str) -> str:
    return INSTITUTION_PREFIX + code


def staff_state_key(sign_public: bytes) -> str:
    return STAFF_PREFIX + sign_public.hex()


def _institution_of_signer(view: StateView, signer: bytes) -> str:
    """The code of the institution whose registered key ``signer`` is; rejects anyone else."""
    registered = view.get(key_state_key(signer))
    if registered is None or registered.get("kind") != "institution":
        reject("only an institution's registered key lists in the directory")
    return registered["institution"]


def _validate_institution_listed(view: StateView, tx: Transaction) -> None:
    """An institution lists (or updates) itself under the code its key was registered with.

    A code belongs to the first key that lists it: another institution cannot
    take over a name the consortium already knows.
    """
    payload = tx.payload
    code = _institution_of_signer(view, tx.signer)
    if payload["code"] != code:
        reject("an institution lists itself under the code its key was registered with")
    if payload["kind"] not in INSTITUTION_KINDS:
        reject(f"kind must be one of {', '.join(INSTITUTION_KINDS)}")
    if not payload["name"].strip():
        reject("an institution has a name")
    if not _UUID.match(payload["id"]):
        reject("an institution's id is its public UUID")
    if not _NODE.match(payload["node"]):
        reject("the node id is 1 to 64 letters, digits, '-', '_' or '.'")
    current = view.get(institution_state_key(code))
    if current is not None and current["key"] != tx.signer:
        reject("this institution code is listed by another key")


def _apply_institution_listed(view: StateView, tx: Transaction) -> list[StateChange]:
    payload = tx.payload
    value = {
        "key": tx.signer,
        "id": payload["id"],
        "kind": payload["kind"],
        "name": payload["name"],
        "name_en": payload["name_en"],
        "city": payload["city"],
        "node": payload["node"],
        "tx": tx.cid,
    }
    return [StateChange(institution_state_key(payload["code"]), value)]


def _validate_staff_listed(view: StateView, tx: Transaction) -> None:
    """A listed institution lists a registered person as staff, or removes them.

    A person is staff of one institution at a time: another institution lists
    them only after the first has removed them.
    """
    payload = tx.payload
    code = _institution_of_signer(view, tx.signer)
    listed = view.get(institution_state_key(code))
    if listed is None or listed["key"] != tx.signer:
        reject("an institution lists itself before it lists staff")
    person = view.get(key_state_key(payload["person"]))
    if person is None or person.get("kind") != "user":
        reject("staff are listed by a registered person's key")
    if not _UUID.match(payload["id"]):
        reject("a staff member's id is their public UUID")
    if payload["role"] not in STAFF_ROLES:
        reject(f"role must be one of {', '.join(STAFF_ROLES)}")
    if payload["listed"] and not payload["name"].strip():
        reject("a listed staff member has a name")
    current = view.get(staff_state_key(payload["person"]))
    if current is not None and current["listed"] and current["institution"] != code:
        reject("this person is listed as staff of another institution")


def _apply_staff_listed(view: StateView, tx: Transaction) -> list[StateChange]:
    payload = tx.payload
    value = {
        "institution": _institution_of_signer(view, tx.signer),
        "id": payload["id"],
        "role": payload["role"],
        "name": payload["name"],
        "name_en": payload["name_en"],
        "title": payload["title"],
        "listed": payload["listed"],
        "tx": tx.cid,
    }
    return [StateChange(staff_state_key(payload["person"]), value)]


INSTITUTION_LISTED_TYPE = TxType(
    name=INSTITUTION_LISTED,
    schema={
        "code": Field(str, max_length=40),
        "id": Field(str, max_length=36),
        "kind": Field(str, max_length=16),
        "name": Field(str, max_length=200),
        "name_en": Field(str, max_length=200),
        "city": Field(str, max_length=100),
        "node": Field(str, max_length=64),
    },
    validate=_validate_institution_listed,
    apply=_apply_institution_listed,
    description="An institution lists itself in the consortium's directory, with the node that holds its people.",
)
STAFF_LISTED_TYPE = TxType(
    name=STAFF_LISTED,
    schema={
        "person": Field(bytes, max_length=crypto.KEY_SIZE),
        "id": Field(str, max_length=36),
        "role": Field(str, max_length=20),
        "name": Field(str, max_length=150),
        "name_en": Field(str, max_length=150),
        "title": Field(str, max_length=100),
        "listed": Field(bool),
    },
    validate=_validate_staff_listed,
    apply=_apply_staff_listed,
    description="An institution lists a member of its staff (professional information only), or removes them.",
)


def listed_institution_fields(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "code": key.removeprefix(INSTITUTION_PREFIX),
        "public_id": value["id"],
        "sign_public": value["key"].hex(),
        "kind": value["kind"],
        "name": value["name"],
        "name_en": value["name_en"],
        "city": value["city"],
        "node": value["node"],
        "tx_cid": str(value["tx"]),
    }


def listed_staff_fields(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "sign_public": key.removeprefix(STAFF_PREFIX),
        "public_id": value["id"],
        "institution_code": value["institution"],
        "role": value["role"],
        "name": value["name"],
        "name_en": value["name_en"],
        "title": value["title"],
        "listed": value["listed"],
        "tx_cid": str(value["tx"]),
    }


def register() -> None:
    """Called from ``AccountsConfig.ready``."""
    from accounts.models import ListedInstitution, ListedStaff
    from chain.ledger_registry import StateProjection, register_commit_hook, register_projection, register_tx_type
    from chain.models import KeyRegistration

    register_tx_type(KEY_REGISTERED)
    register_tx_type(INSTITUTION_LISTED_TYPE)
    register_tx_type(STAFF_LISTED_TYPE)
    register_projection(StateProjection(KEY_PREFIX, KeyRegistration, key_registration_fields))
    register_projection(StateProjection(INSTITUTION_PREFIX, ListedInstitution, listed_institution_fields))
    register_projection(StateProjection(STAFF_PREFIX, ListedStaff, listed_staff_fields))
    register_commit_hook("accounts.directory", (INSTITUTION_PREFIX, STAFF_PREFIX), _directory_changed)


def _directory_changed(keys: list[str]) -> None:
    from accounts import directory

    directory.directory_sync(
        codes=[k.removeprefix(INSTITUTION_PREFIX) for k in keys if k.startswith(INSTITUTION_PREFIX)],
        people=[k.removeprefix(STAFF_PREFIX) for k in keys if k.startswith(STAFF_PREFIX)],
    )


def key_registration_submit(holder: Any, *, kind: str) -> Any:
    """Submit ``holder``'s key registration, signed by its own key (inside the caller's transaction).

    ``holder`` is a saved ``User`` or ``Institution`` with keys.
    """
    from accounts.keys import signing_private_key
    from chain.ledger_services import tx_sign_and_submit

    payload: dict[str, Any] = {
        "kind": kind,
        "enc_public": bytes(holder.enc_public),
        "sign_public": bytes(holder.sign_public),
    }
    if kind == "institution":
        payload["institution"] = holder.code
    return tx_sign_and_submit(private_key=signing_private_key(holder), type=TYPE_NAME, payload=payload)


def institution_listing_submit(institution: Any) -> Any:
    """List ``institution`` (this node's own) in the consortium directory, signed by its key."""
    from django.conf import settings

    from accounts.keys import signing_private_key
    from chain.ledger_services import tx_sign_and_submit

    payload = {
        "code": institution.code,
        "id": str(institution.public_id),
        "kind": institution.kind,
        "name": institution.name,
        "name_en": institution.name_en,
        "city": institution.city,
        "node": settings.NODE_ID,
    }
    return tx_sign_and_submit(private_key=signing_private_key(institution), type=INSTITUTION_LISTED, payload=payload)


def staff_listing_submit(member: Any, *, listed: bool) -> Any:
    """List ``member`` (staff of this node's institution) in the directory, or remove them."""
    from accounts.keys import signing_private_key
    from chain.ledger_services import tx_sign_and_submit

    payload = {
        "person": bytes(member.sign_public),
        "id": str(member.public_id),
        "role": member.role,
        "name": member.name if listed else "",
        "name_en": member.name_en if listed else "",
        "title": member.staff_title if listed else "",
        "listed": listed,
    }
    return tx_sign_and_submit(
        private_key=signing_private_key(member.institution), type=STAFF_LISTED, payload=payload
    )
