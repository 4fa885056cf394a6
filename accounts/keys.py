"""Key material for users and institutions, wrapped by the node KEK.

The KEK is a 32-byte secret kept in a file outside the database and the
repository (``settings.EMR_KEK_FILE``). In the embedded default it is made at
first start with mode 0600; in production the operator provides the file and
the node refuses to start with one that others can read. Every private key in
the database is AES-256-GCM-wrapped under it with the owner's label as
associated data, so a database dump alone opens nothing.
"""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from chain.core import crypto
from chain.core.errors import CryptoError

_lock = threading.Lock()
_cache: dict[Path, bytes] = {}


class KekError(ImproperlyConfigured):
    """The node KEK is missing, unreadable, too open or not a KEK."""


def _create_kek(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(crypto.new_kek()) + b"\n")
    try:
        os.link(tmp, path)  # atomic: two first starts agree on one KEK
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def load_kek(path: Path) -> bytes:
    """Read and check the KEK file; create it on first start outside production."""
    if not path.exists():
        if settings.PRODUCTION:
            raise KekError(f"EMR_KEK_FILE {path} does not exist; provision the node KEK first.")
        _create_kek(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KekError(f"EMR_KEK_FILE {path} has mode {mode:o}; it must be 0600 (chmod 600).")
    try:
        kek = base64.b64decode(path.read_bytes().strip(), validate=True)
    except ValueError:
        raise KekError(f"EMR_KEK_FILE {path} is not a base64-encoded key.") from None
    if len(kek) != 32:
        raise KekError(f"EMR_KEK_FILE {path} holds {len(kek)} bytes; a KEK is 32 bytes.")
    return kek


def node_kek() -> bytes:
    path = Path(settings.EMR_KEK_FILE)
    with _lock:
        if path not in _cache:
            _cache[path] = load_kek(path)
        return _cache[path]


def forget_kek() -> None:
    """Drop cached KEKs (tests switch KEK files)."""
    with _lock:
        _cache.clear()


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
