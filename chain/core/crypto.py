"""Key pairs, signatures, private-key wrapping and key envelopes.

Every primitive comes from the ``cryptography`` package; this module only
chooses them, fixes their byte formats and binds the context each one is used
in. The argument, choice by choice:

* **Ed25519 signatures** (:func:`sign`, :func:`verify`). Deterministic
  signing (no per-signature randomness to get wrong), 32-byte keys and
  64-byte signatures, and strict verification in OpenSSL. Public keys are
  parsed once and kept in a small LRU cache: parsing is cheap but not free,
  and the ledger verifies many transactions by the same signers.
* **X25519 encryption keys** are separate from signing keys, so a key is
  never used for two purposes.
* **Private keys at rest** (:func:`wrap_private_key`) are sealed with
  AES-256-GCM under the node's key-encryption key (KEK), which lives outside
  the database. The nonce is 96 random bits per wrap; a KEK wraps at most a
  few million keys in its life, far below the 2**32 messages at which random
  GCM nonces start to risk a collision. The associated data binds a label,
  the format version and the owner string, so a blob copied onto another
  user's row, or replayed under another format version, fails to open
  instead of silently giving that user someone else's key.
* **Key envelopes** (:func:`seal_key`, :func:`open_key`) follow the HPKE
  base-mode pattern (RFC 9180) built from the same primitives: a fresh
  ephemeral X25519 key per envelope, Diffie-Hellman with the recipient's
  public key, HKDF-SHA256 whose *info* binds a version label, the ephemeral
  public key, the recipient public key and the caller's context (e.g. the
  record id and version), then AES-256-GCM. Because the ephemeral key is
  fresh, every envelope uses a fresh AES key; binding the recipient key stops
  an envelope being re-targeted, and binding the context stops an envelope for
  record A being presented as the key of record B. The header (version byte
  and ephemeral public key) is also GCM associated data, so no byte of the
  envelope can change undetected.
* **Failures are uniform.** Every way an open can fail (wrong key, wrong
  owner or context, tampered or truncated bytes) raises :class:`CryptoError`
  with a message that says what was being opened but does not distinguish
  the causes, since distinguishing them would help nobody but an attacker.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CryptoError

KEY_SIZE = 32
SIGNATURE_SIZE = 64
NONCE_SIZE = 12
TAG_SIZE = 16

WRAP_VERSION = 1
_WRAP_LABEL = b"yilian/private-key-wrap"

ENVELOPE_VERSION = 1
_ENVELOPE_LABEL = b"yilian/key-envelope/x25519-hkdf-sha256-aes256gcm"
_ENVELOPE_HEADER_SIZE = 1 + KEY_SIZE

FINGERPRINT_HEX_CHARS = 16


@dataclass(frozen=True)
class KeyPair:
    """A raw 32-byte private key and its 32-byte public key."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:  # never print a private key into a log
        return f"KeyPair(public={self.public.hex()}, private=<hidden>)"


# -- key pairs --------------------------------------------------------------


def new_x25519() -> KeyPair:
    """A fresh X25519 key pair for key envelopes."""
    key = X25519PrivateKey.generate()
    return KeyPair(key.private_bytes_raw(), key.public_key().public_bytes_raw())


def new_ed25519() -> KeyPair:
    """A fresh Ed25519 key pair for signatures."""
    key = Ed25519PrivateKey.generate()
    return KeyPair(key.private_bytes_raw(), key.public_key().public_bytes_raw())


def ed25519_public(private: bytes) -> bytes:
    """The Ed25519 public key of a raw private key."""
    return _ed25519_private(private).public_key().public_bytes_raw()


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key of a raw private key."""
    return _x25519_private(private).public_key().public_bytes_raw()


# -- signatures ---------------------------------------------------------------


def sign(private: bytes, message: bytes) -> bytes:
    """Sign ``message`` with a raw Ed25519 private key; 64 bytes."""
    return _ed25519_private(private).sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature; raise :class:`CryptoError` when it is bad."""
    key = _ed25519_public_key(bytes(public))
    if len(signature) != SIGNATURE_SIZE:
        raise CryptoError("invalid signature")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise CryptoError("invalid signature") from None


def is_valid_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    """True when the signature verifies; never raises for bad input."""
    try:
        verify(public, signature, message)
    except CryptoError:
        return False
    return True


def verify_many(items: Iterable[tuple[bytes, bytes, bytes]], *, threads: int = 1) -> list[bool]:
    """Check many ``(public, signature, message)`` triples; one bool each.

    ``cryptography`` has no batch verification, but it releases the GIL while
    OpenSSL verifies, so ``threads > 1`` spreads large batches over a pool.
    The result is per item (not all-or-nothing) so a block sealer can drop
    the bad transactions and keep the rest.

    Threads pay only while the caller waits for them. Beside a thread that
    runs Python, each verification waits for the GIL to return its result,
    up to the switch interval (5 ms): on this project's 2-core machines one
    verifying thread fell from about 8,800 to 200 signatures a second beside
    one busy thread. Work that goes on while signatures are checked uses
    :func:`signature_processes` and :func:`verify_many_in` instead.
    """
    batch = list(items)
    if threads <= 1 or len(batch) < 64:
        return [is_valid_signature(*item) for item in batch]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = pool.map(_verify_chunk, _chunks(batch, threads))
        return [ok for part in parts for ok in part]


def signature_processes(count: int) -> ProcessPoolExecutor:
    """``count`` processes that verify signatures beside a busy interpreter.

    Started with *spawn*, not *fork*: the caller may hold threads and open
    RocksDB handles that a forked copy must not inherit. A child imports
    only this module (and, as *spawn* does, the caller's main module, which
    must guard its work with ``if __name__ == "__main__"``, as ``manage.py``
    and the console scripts do); it never sees a private key, only public
    keys, signatures and the signed bytes. A child ends with its parent, even
    one killed outright: nothing is left behind.

    The children run at a lower priority (``nice`` 10): they take the cores
    the busy interpreter leaves, and never slow it down by sharing its
    own. It is the one that everything waits for (docs/performance.md).
    """
    return ProcessPoolExecutor(
        max_workers=count,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_child,
        initargs=(os.getpid(),),
    )


CHILD_NICENESS = 10


def _start_child(parent: int) -> None:
    """In a signature process: yield the cores to the parent, and exit once it is gone."""
    os.nice(CHILD_NICENESS)
    _end_with_parent(parent)


def _end_with_parent(parent: int) -> None:
    """In a signature process: exit once ``parent`` is gone (an idle child would wait forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def verify_many_in(
    pool: Executor, items: Sequence[tuple[bytes, bytes, bytes]], *, parts: int
) -> list[Future[list[bool]]]:
    """Start :func:`verify_many` of ``items`` in ``pool``, in up to ``parts`` chunks in order."""
    return [pool.submit(_verify_chunk, chunk) for chunk in _chunks(items, parts)]


def _chunks(items: Sequence[tuple[bytes, bytes, bytes]], parts: int) -> list[Sequence[tuple[bytes, bytes, bytes]]]:
    size = max(1, -(-len(items) // max(1, parts)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _verify_chunk(chunk: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [is_valid_signature(*item) for item in chunk]


# -- private keys at rest -----------------------------------------------------


def new_kek() -> bytes:
    """A fresh 256-bit key-encryption key."""
    return os.urandom(KEY_SIZE)


def wrap_private_key(kek: bytes, private: bytes, *, owner: str) -> bytes:
    """Seal ``private`` under ``kek`` for ``owner``.

    Format: version byte (1) ‖ 12-byte random nonce ‖ AES-256-GCM ciphertext
    and tag. The associated data binds the version and ``owner``.
    """
    aead = _aesgcm(kek, "key-encryption key")
    nonce = os.urandom(NONCE_SIZE)
    sealed = aead.encrypt(nonce, bytes(private), _wrap_aad(WRAP_VERSION, owner))
    return bytes([WRAP_VERSION]) + nonce + sealed


def unwrap_private_key(kek: bytes, blob: bytes, *, owner: str) -> bytes:
    """Open a blob made by :func:`wrap_private_key` for the same ``owner``."""
    aead = _aesgcm(kek, "key-encryption key")
    if len(blob) < 1 + NONCE_SIZE + TAG_SIZE:
        raise CryptoError("wrapped private key is truncated")
    version = blob[0]
    if version != WRAP_VERSION:
        raise CryptoError(f"unsupported wrapped-key format version {version}")
    nonce, sealed = blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]
    try:
        return aead.decrypt(nonce, sealed, _wrap_aad(version, owner))
    except InvalidTag:
        raise CryptoError(
            f"cannot unwrap the private key of {owner!r}: wrong key-encryption key, "
            "wrong owner, or damaged data"
        ) from None


def _wrap_aad(version: int, owner: str) -> bytes:
    # The owner is last and everything before it has a fixed length, so the
    # associated data parses one way only.
    return _WRAP_LABEL + bytes([version]) + owner.encode("utf-8")


# -- key envelopes ------------------------------------------------------------


def seal_key(recipient_public: bytes, key: bytes, *, context: bytes) -> bytes:
    """Encrypt ``key`` (e.g. a record's data key) so only the recipient opens it.

    Format: version byte (1) ‖ ephemeral X25519 public key (32) ‖ nonce (12)
    ‖ AES-256-GCM ciphertext and tag.
    """
    recipient = _x25519_public_key(recipient_public)
    ephemeral = X25519PrivateKey.generate()
    eph_public = ephemeral.public_key().public_bytes_raw()
    shared = _exchange(ephemeral, recipient)
    header = bytes([ENVELOPE_VERSION]) + eph_public
    aead = AESGCM(_envelope_key(shared, eph_public, bytes(recipient_public), context))
    nonce = os.urandom(NONCE_SIZE)
    return header + nonce + aead.encrypt(nonce, bytes(key), header)


def open_key(recipient_private: bytes, envelope: bytes, *, context: bytes) -> bytes:
    """Open an envelope made by :func:`seal_key` with the recipient's private key."""
    return EnvelopeOpener(recipient_private).open(envelope, context=context)


class EnvelopeOpener:
    """Opens envelopes addressed to one private key, loading the key once.

    Loading an X25519 key derives its public key, a scalar multiplication as costly as the
    key agreement itself; a page listing 50 records opens 50 envelopes of one holder.
    """

    __slots__ = ("_private", "_public")

    def __init__(self, recipient_private: bytes) -> None:
        self._private = _x25519_private(recipient_private)
        self._public = self._private.public_key().public_bytes_raw()

    def open(self, envelope: bytes, *, context: bytes) -> bytes:
        if len(envelope) < _ENVELOPE_HEADER_SIZE + NONCE_SIZE + TAG_SIZE:
            raise CryptoError("key envelope is truncated")
        version = envelope[0]
        if version != ENVELOPE_VERSION:
            raise CryptoError(f"unsupported key-envelope format version {version}")
        header = envelope[:_ENVELOPE_HEADER_SIZE]
        eph_public = header[1:]
        nonce = envelope[_ENVELOPE_HEADER_SIZE : _ENVELOPE_HEADER_SIZE + NONCE_SIZE]
        sealed = envelope[_ENVELOPE_HEADER_SIZE + NONCE_SIZE :]
        shared = _exchange(self._private, _x25519_public_key(eph_public))
        aead = AESGCM(_envelope_key(shared, eph_public, self._public, context))
        try:
            return aead.decrypt(nonce, sealed, header)
        except InvalidTag:
            raise CryptoError(
                "cannot open the key envelope: not addressed to this key, "
                "wrong context, or damaged data"
            ) from None


def _envelope_key(
    shared: bytes, eph_public: bytes, recipient_public: bytes, context: bytes
) -> bytes:
    # Fixed-length fields first and the context last: the info string has a
    # single parse, so two different (keys, context) tuples never collide.
    info = _ENVELOPE_LABEL + bytes([ENVELOPE_VERSION]) + eph_public + recipient_public
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=_ENVELOPE_LABEL,
        info=info + bytes(context),
    )
    return hkdf.derive(shared)


def _exchange(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError:
        # OpenSSL refuses low-order points (an all-zero shared secret).
        raise CryptoError("key agreement failed: invalid public key") from None


# -- display ------------------------------------------------------------------


def key_fingerprint(public: bytes) -> str:
    """A short hex fingerprint (first 64 bits of sha256) for people to compare."""
    return hashlib.sha256(public).hexdigest()[:FINGERPRINT_HEX_CHARS]


# -- key loading --------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _ed25519_public_key(public: bytes) -> Ed25519PublicKey:
    if len(public) != KEY_SIZE:
        raise CryptoError(f"Ed25519 public key must be {KEY_SIZE} bytes, not {len(public)}")
    try:
        return Ed25519PublicKey.from_public_bytes(public)
    except ValueError:
        raise CryptoError("invalid Ed25519 public key") from None


def _ed25519_private(private: bytes) -> Ed25519PrivateKey:
    # Private keys are deliberately not cached: they stay in memory only as
    # long as the caller holds them.
    if len(private) != KEY_SIZE:
        raise CryptoError(f"Ed25519 private key must be {KEY_SIZE} bytes")
    return Ed25519PrivateKey.from_private_bytes(bytes(private))


def _x25519_public_key(public: bytes) -> X25519PublicKey:
    if len(public) != KEY_SIZE:
        raise CryptoError(f"X25519 public key must be {KEY_SIZE} bytes, not {len(public)}")
    return X25519PublicKey.from_public_bytes(bytes(public))


def _x25519_private(private: bytes) -> X25519PrivateKey:
    if len(private) != KEY_SIZE:
        raise CryptoError(f"X25519 private key must be {KEY_SIZE} bytes")
    return X25519PrivateKey.from_private_bytes(bytes(private))


def _aesgcm(key: bytes, name: str) -> AESGCM:
    if len(key) != KEY_SIZE:
        raise CryptoError(f"{name} must be {KEY_SIZE} bytes, not {len(key)}")
    return AESGCM(bytes(key))
