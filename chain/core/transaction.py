"""Signed ledger transactions.

A transaction is a DAG-CBOR map ``{chain_id, type, payload, signer, seq,
timestamp, signature}``; its CID is the CID of that encoding, and
``signature`` is Ed25519 by ``signer`` over the DAG-CBOR encoding of the map
*without* ``signature``. Why each field:

* ``chain_id`` — a transaction signed for a test chain cannot be replayed on
  the production chain (or a consortium's chain on another's).
* ``seq`` — per signer, starting at 1 and strictly +1; the ledger keeps the
  last used number, so a transaction replayed later, or two of one signer's
  transactions swapped, are rejected (``replay`` / ``bad-seq``).
* ``timestamp`` — milliseconds since the epoch (UTC); a transaction may not
  claim to come from further in the future than the chain tolerates.
* DAG-CBOR's single encoding means the signed bytes and the CID are
  functions of the values, so re-encoding on another node reproduces both.

Block votes sign ``"yilian/block-vote/v1" ‖ 0x00 ‖ CID`` (see
:mod:`chain.core.block`). That message starts with the byte ``y`` (a CBOR
text-string header) while a transaction's signed bytes start with a CBOR map
header, so a node key that signs both can never have one signature accepted
as the other.

Instances are immutable; the encoding, CID and a successful signature check
are computed once and cached on the instance. Treat ``payload`` as
read-only: it is the value the cached encoding was made from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from . import crypto, dagcbor
from .cid import CID, DAG_CBOR
from .errors import CodecError, CryptoError
from .reasons import Reason, ValidationError

FIELDS = frozenset({"chain_id", "type", "payload", "signer", "seq", "timestamp", "signature"})


def now_ms() -> int:
    """Milliseconds since the epoch, UTC (the core's only clock read)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, eq=False)
class Transaction:
    """A typed, signed payload; see the module docstring for the format."""

    chain_id: str
    type: str
    payload: dict[str, Any]
    signer: bytes
    seq: int
    timestamp: int
    signature: bytes

    def __post_init__(self) -> None:
        _expect(self.chain_id, str, "chain_id")
        _expect(self.type, str, "type")
        _expect(self.payload, dict, "payload")
        _expect(self.signer, bytes, "signer")
        _expect(self.seq, int, "seq")
        _expect(self.timestamp, int, "timestamp")
        _expect(self.signature, bytes, "signature")
        if len(self.signer) != crypto.KEY_SIZE:
            raise ValidationError(Reason.BAD_ENCODING, "signer must be a 32-byte Ed25519 key")
        if self.seq < 1:
            raise ValidationError(Reason.BAD_ENCODING, "seq starts at 1")
        if self.timestamp < 0:
            raise ValidationError(Reason.BAD_TIMESTAMP, "timestamp before the epoch")

    # -- constructors -----------------------------------------------------------
    @classmethod
    def create(
        cls,
        *,
        chain_id: str,
        type: str,
        payload: dict[str, Any],
        seq: int,
        private_key: bytes,
        timestamp: int | None = None,
    ) -> Transaction:
        """Build and sign a transaction with a raw Ed25519 private key."""
        unsigned = cls(
            chain_id=chain_id,
            type=type,
            payload=payload,
            signer=crypto.ed25519_public(private_key),
            seq=seq,
            timestamp=now_ms() if timestamp is None else timestamp,
            signature=b"",
        )
        signature = crypto.sign(private_key, unsigned.signing_bytes)
        tx = cls(**{**unsigned._fields(), "signature": signature})
        tx.__dict__["signing_bytes"] = unsigned.signing_bytes  # same fields, reuse
        tx.__dict__["_signature_ok"] = True  # we just made it
        return tx

    @classmethod
    def decode(cls, data: bytes, *, max_size: int | None = None) -> Transaction:
        """Parse canonical DAG-CBOR bytes; ``oversize`` / ``bad-encoding`` otherwise.

        The size is checked before any parsing, so an oversized input costs
        nothing. The signature is not checked here (see :meth:`verify_signature`).
        """
        if max_size is not None and len(data) > max_size:
            raise ValidationError(
                Reason.OVERSIZE, f"transaction is {len(data)} bytes; the limit is {max_size}"
            )
        try:
            value = dagcbor.decode(data)
        except CodecError as exc:
            raise ValidationError(Reason.BAD_ENCODING, str(exc)) from None
        if not isinstance(value, dict) or set(value) != FIELDS:
            raise ValidationError(Reason.BAD_ENCODING, "not a transaction map")
        tx = cls(**value)
        raw = bytes(data)
        tx.__dict__["encoded"] = raw  # canonical, so equal to re-encoding
        signing = _cut_signature(raw, tx.timestamp)
        if signing is not None:
            tx.__dict__["signing_bytes"] = signing
        return tx

    # -- encodings ----------------------------------------------------------------
    def _fields(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "type": self.type,
            "payload": self.payload,
            "signer": self.signer,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "signature": self.signature,
        }

    @cached_property
    def signing_bytes(self) -> bytes:
        """DAG-CBOR of every field except ``signature``: what the signer signs."""
        fields = self._fields()
        del fields["signature"]
        try:
            return dagcbor.encode(fields)
        except CodecError as exc:
            raise ValidationError(Reason.INVALID_PAYLOAD, str(exc)) from None

    @cached_property
    def encoded(self) -> bytes:
        """The transaction's DAG-CBOR bytes (the block it is stored as)."""
        try:
            return dagcbor.encode(self._fields())
        except CodecError as exc:
            raise ValidationError(Reason.INVALID_PAYLOAD, str(exc)) from None

    def encode(self) -> bytes:
        return self.encoded

    @cached_property
    def cid(self) -> CID:
        return CID.of(DAG_CBOR, self.encoded)

    @property
    def size(self) -> int:
        return len(self.encoded)

    # -- checks --------------------------------------------------------------------
    @property
    def signature_checked(self) -> bool:
        """True once the signature has verified on this instance."""
        return bool(self.__dict__.get("_signature_ok"))

    def mark_signature_checked(self) -> None:
        """Record that a batch check (:func:`crypto.verify_many`) passed."""
        self.__dict__["_signature_ok"] = True

    def verify_signature(self) -> None:
        """Raise ``bad-signature`` unless ``signer`` signed these fields."""
        if self.signature_checked:
            return
        try:
            crypto.verify(self.signer, self.signature, self.signing_bytes)
        except CryptoError:
            raise ValidationError(
                Reason.BAD_SIGNATURE, f"transaction {self.cid} has an invalid signature"
            ) from None
        self.mark_signature_checked()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Transaction):
            return NotImplemented
        return self.encoded == other.encoded

    def __hash__(self) -> int:
        return hash(self.cid.digest)

    def __repr__(self) -> str:
        return f"Transaction({self.type!r}, seq={self.seq}, signer={self.signer.hex()[:16]}…)"


_SIGNATURE_ENTRY = dagcbor.encode("signature") + b"\x58\x40"  # key, then a 64-byte bstr head
_SIGNATURE_ENTRY_SIZE = len(_SIGNATURE_ENTRY) + crypto.SIGNATURE_SIZE
_TIMESTAMP_KEY_SIZE = len(dagcbor.encode("timestamp"))


def _cut_signature(encoded: bytes, timestamp: int) -> bytes | None:
    """The signing bytes cut out of a canonical encoding, without re-encoding.

    DAG-CBOR sorts the seven keys length-first: seq, type, signer, payload,
    chain_id, signature, timestamp. So the signature entry sits just before
    the timestamp entry, which ends the map. Dropping one entry from a
    canonical map and lowering the count in its head (0xa7 to 0xa6) leaves
    the canonical map of the other entries, which is what was signed. When
    the layout is not exactly that (e.g. a signature that is not 64 bytes),
    return None and let the caller encode.
    """
    tail = _TIMESTAMP_KEY_SIZE + _uint_size(timestamp)
    start = len(encoded) - tail - _SIGNATURE_ENTRY_SIZE
    if encoded[:1] != b"\xa7" or start < 1:
        return None
    if encoded[start : start + len(_SIGNATURE_ENTRY)] != _SIGNATURE_ENTRY:
        return None
    return b"\xa6" + encoded[1:start] + encoded[start + _SIGNATURE_ENTRY_SIZE :]


def _uint_size(value: int) -> int:
    """Bytes in the shortest CBOR encoding of an unsigned integer."""
    if value < 24:
        return 1
    if value < 1 << 8:
        return 2
    if value < 1 << 16:
        return 3
    if value < 1 << 32:
        return 5
    return 9


def _expect(value: Any, kind: type, name: str) -> None:
    # bool is an int subclass; a seq of True is malformed, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValidationError(
            Reason.BAD_ENCODING, f"{name} must be {kind.__name__}, not {type(value).__name__}"
        )
