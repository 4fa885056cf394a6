"""The node KEK: the 32-byte secret that wraps every private key this node keeps.

It belongs to the node, not to any account: users' and institutions' keys
(``accounts.keys``), the node's own signing key (``chain.services``), the
patients' pseudonym secrets and research salts are all wrapped under it. It is
kept in a file outside the database and the repository
(``settings.EMR_KEK_FILE``). In the embedded default it is made at first start
with mode 0600; in production the operator provides the file and the node
refuses to start with one that others can read.
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
