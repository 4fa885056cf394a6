"""Key material for users and institutions, wrapped by the node KEK (``chain.kek``).

Every private key in the database is AES-256-GCM-wrapped under the KEK with
the owner's label as associated data, so a database dump alone opens nothing.
"""

from __future__ import annotations

from chain.core import crypto
from chain.core.errors import CryptoError
from chain.kek import node_kek


def issue_keys(holder) -> None:
    """Give ``holder`` (a User or Institution, unsaved or saved) fresh key pairs."""
    kek = node_kek()
    owner = holder.key_owner()
    enc = crypto.new_x25519()
    sig = crypto.new_ed25519()
    holder.enc_public = enc.public
    # Each key is bound to its owner *and* its purpose, so swapping the two
    # wrapped blobs of one row fails to unwrap as well.
    holder.enc_private_wrapped = crypto.wrap_private_key(kek, enc.private, owner=f"{owner}/enc")
    holder.sign_public = sig.public
    holder.sign_private_wrapped = crypto.wrap_private_key(kek, sig.private, owner=f"{owner}/sign")


def _unwrap(holder, blob, purpose: str) -> bytes:
    try:
        return crypto.unwrap_private_key(node_kek(), bytes(blob), owner=f"{holder.key_owner()}/{purpose}")
    except CryptoError as exc:
        raise CryptoError(
            f"cannot unwrap the private key of {holder.key_owner()}: {exc} "
            "(is EMR_KEK_FILE the KEK this node's keys were made with?)"
        ) from exc


def encryption_private_key(holder) -> bytes:
    return _unwrap(holder, holder.enc_private_wrapped, "enc")


def signing_private_key(holder) -> bytes:
    return _unwrap(holder, holder.sign_private_wrapped, "sign")
