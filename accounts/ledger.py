"""The ``accounts.key_registered`` transaction: publishing public keys on the chain.

DESIGN section 4: public keys are published on the chain, so any node can
wrap a data key for a recipient on another node. Every user and institution
registers its X25519 encryption key and its Ed25519 signing key once, in a
transaction signed by that very signing key (which proves the holder has it).

No personal data goes on chain: the payload is the kind of holder (``user``
or ``institution``), the two public keys and, for an institution, its public
code. A user's name, email, role and id stay in the node's database.

State: ``accounts/key/<signing key hex>`` → ``{kind, enc_public,
institution?, tx}``; ``chain.models.KeyRegistration`` mirrors it.
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


def register() -> None:
    """Called from ``AccountsConfig.ready``."""
    from chain.ledger_registry import StateProjection, register_projection, register_tx_type
    from chain.models import KeyRegistration

    register_tx_type(KEY_REGISTERED)
    register_projection(StateProjection(KEY_PREFIX, KeyRegistration, key_registration_fields))


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
