"""Content identifiers: CIDv1 with a sha2-256 multihash, base32 strings.

Only what the node produces is accepted: version 1, sha2-256 (32-byte
digests), and the codecs raw (0x55), dag-pb (0x70) and dag-cbor (0x71).
Anything else (CIDv0 ``Qm…`` strings, other hashes, other bases) is rejected
with a message that names the problem, so a caller never stores or serves
bytes under an identifier it cannot verify.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import lru_cache

from . import varint
from .errors import CodecError

RAW = 0x55
DAG_PB = 0x70
DAG_CBOR = 0x71
CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}

SHA2_256 = 0x12
DIGEST_SIZE = 32
_MULTIHASH_PREFIX = bytes([SHA2_256, DIGEST_SIZE])
BINARY_SIZE = 4 + DIGEST_SIZE  # every CID read here: version, codec and multihash code and length fit a byte each


@dataclass(frozen=True, slots=True)
class CID:
    """A CIDv1: a codec and the sha2-256 digest of the block's bytes."""

    codec: int
    digest: bytes

    def __post_init__(self) -> None:
        if self.codec not in CODEC_NAMES:
            raise CodecError(f"unsupported CID codec 0x{self.codec:x}")
        if len(self.digest) != DIGEST_SIZE:
            raise CodecError(f"sha2-256 digest must be 32 bytes, not {len(self.digest)}")

    # -- constructors -------------------------------------------------------
    @classmethod
    def of(cls, codec: int, data: bytes | bytearray | memoryview) -> CID:
        """The CID of ``data`` under ``codec``."""
        return cls(codec, hashlib.sha256(data).digest())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> CID:
        """Parse a binary CID; the whole input must be consumed."""
        cid, end = cls.read(data, 0)
        if end != len(data):
            raise CodecError("trailing bytes after CID")
        return cid

    @classmethod
    def read(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[CID, int]:
        """Parse a binary CID at ``offset``; return it and the offset after it."""
        if len(data) - offset >= 2 and data[offset] == SHA2_256 and data[offset + 1] == DIGEST_SIZE:
            raise CodecError("CIDv0 is not supported; use CIDv1")
        version, pos = varint.decode(data, offset)
        if version != 1:
            raise CodecError(f"unsupported CID version {version}")
        codec, pos = varint.decode(data, pos)
        if codec not in CODEC_NAMES:
            raise CodecError(f"unsupported CID codec 0x{codec:x}")
        hash_code, pos = varint.decode(data, pos)
        if hash_code != SHA2_256:
            raise CodecError(f"unsupported multihash 0x{hash_code:x}; only sha2-256")
        size, pos = varint.decode(data, pos)
        if size != DIGEST_SIZE:
            raise CodecError(f"sha2-256 digest length must be 32, not {size}")
        digest = bytes(data[pos : pos + DIGEST_SIZE])
        if len(digest) != DIGEST_SIZE:
            raise CodecError("truncated CID digest")
        return cls(codec, digest), pos + DIGEST_SIZE

    @classmethod
    def decode(cls, text: str) -> CID:
        """Parse a multibase base32 (``b…``) CID string."""
        if not isinstance(text, str) or not text:
            raise CodecError("empty CID string")
        text = text.strip()
        if text.startswith("Qm"):
            raise CodecError("CIDv0 (Qm…) is not supported; use CIDv1 base32 (b…)")
        if text[0] != "b":
            raise CodecError(f"unsupported multibase prefix {text[0]!r}; expected base32 'b'")
        body = text[1:]
        if body != body.lower() or not body or any(c not in _B32_ALPHABET for c in body):
            raise CodecError("CID is not valid lowercase base32")
        padded = body.upper() + "=" * (-len(body) % 8)
        try:
            raw = base64.b32decode(padded)
        except ValueError as exc:  # binascii.Error is a ValueError
            raise CodecError(f"CID is not valid base32: {exc}") from None
        return cls.from_bytes(raw)

    @classmethod
    def parse(cls, value: str | bytes | CID) -> CID:
        """Accept a CID, its string or its binary form."""
        if isinstance(value, CID):
            return value
        if isinstance(value, str):
            return cls.decode(value)
        return cls.from_bytes(value)

    # -- encodings ----------------------------------------------------------
    def to_bytes(self) -> bytes:
        return _HEADERS[self.codec] + self.digest

    def encode(self) -> str:
        """The multibase base32 string, e.g. ``bafkrei…``."""
        return _base32(self.to_bytes())

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES[self.codec]

    def verify(self, data: bytes | bytearray | memoryview) -> bool:
        """True when ``data`` hashes to this CID's digest."""
        return hashlib.sha256(data).digest() == self.digest

    def __str__(self) -> str:
        return self.encode()

    def __repr__(self) -> str:
        return f"CID({self.encode()})"


@lru_cache(maxsize=65_536)
def _base32(binary: bytes) -> str:
    """``b`` and the RFC 4648 base32 of ``binary``, lower case and unpadded (multibase base32).

    Read ten bits at a time from the bytes as one integer, two letters a
    table lookup: 6 µs for a CID here, against 9–12 µs for
    ``base64.b32encode`` (written in Python, and the result must still be
    decoded, lower-cased and stripped of its padding), which
    ``chain verify`` and the seal's projection pay once for every
    transaction. Meant for short inputs (a binary CID is 36 bytes): the
    shifts' cost grows with the square of the length. Cached because a node
    writes the same CIDs many times (row, log, mempool).
    """
    pad = -len(binary) % 5  # whole 40-bit groups; the letters of the padding are cut off below
    bits = (len(binary) + pad) * 8
    number = int.from_bytes(binary + bytes(pad), "big")
    pairs = _B32_PAIRS
    letters = "".join([pairs[(number >> shift) & 0x3FF] for shift in range(bits - 10, -1, -10)])
    return "b" + letters[: -(-len(binary) * 8 // 5)]


_B32_LETTERS = "abcdefghijklmnopqrstuvwxyz234567"
_B32_ALPHABET = frozenset(_B32_LETTERS)
_B32_PAIRS = [first + second for first in _B32_LETTERS for second in _B32_LETTERS]  # by 10-bit value
_HEADERS = {
    codec: varint.encode(1) + varint.encode(codec) + _MULTIHASH_PREFIX for codec in CODEC_NAMES
}
