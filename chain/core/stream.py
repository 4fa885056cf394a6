"""Streaming authenticated encryption of record content and files.

Every record version has its own random 256-bit data key (DEK, see
:func:`new_data_key`); its content is encrypted here before it is chunked into
the content DAG, so the DAG holds ciphertext only. The construction is the
STREAM online AEAD of Hoang, Reyhanitabar, Rogaway and Vizár ("Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015)
over AES-256-GCM, with the nonce layout Tink and age use. Every primitive is
the ``cryptography`` package's ``AESGCM``; this module only fixes the framing.

Format::

    header  = magic "YLSE" (4) ‖ version 1 (1) ‖ segment size, u32 BE (4)
              ‖ random nonce prefix (7)                          = 16 bytes
    segment i = AES-256-GCM(DEK, nonce_i, plaintext_i, aad)       = |p_i| + 16
    nonce_i = nonce prefix (7) ‖ i as u32 BE (4) ‖ last flag 0x00/0x01 (1)
    aad     = header ‖ associated_data (the caller's record/version id)

The plaintext is cut into ``segment_size`` pieces. Every segment is full
except the last, which holds 1..segment_size bytes, or 0 bytes when (and only
when) the whole plaintext is empty; so an empty plaintext is a header and one
16-byte tag, and every ciphertext length has exactly one parse.

Security argument, attack by attack. Each segment is a GCM message, so any
change to its bytes, or a wrong key, fails its tag. The nonce fixes each
segment's *position* (counter) and whether it *ends* the stream (flag), so a
segment that is reordered, duplicated or dropped is decrypted under a
different counter and fails; a stream cut at a segment boundary ends on a
segment sealed with flag 0, which fails when opened as the last one
(``"truncated"``); bytes appended after the final segment make it be opened
with flag 0 and fail. The aad puts the whole header (magic, version, segment
size, prefix) into every tag, so no header byte can change, and a header
swapped in from another stream changes the nonces as well. The aad also
carries ``associated_data``, so ciphertext copied onto another record, or
onto another version of the same record, fails to open there even if the
same key were used. Failures all raise :class:`CryptoError`; the message
names the segment but not the cause, which only the key holder could learn.

Nonce uniqueness, which GCM's confidentiality rests on: within a stream the
counter and flag make every nonce distinct (at most 2**32 segments; the
encryptor refuses more). Across streams under one key the 56-bit random
prefix separates them; the chance that any two of n streams share a prefix
is about n**2 / 2**57, negligible for the handful of streams (content and
attachments of one record version) a DEK encrypts. A DEK must therefore not
become a long-lived key for millions of files: mint one per record version.

Streaming: encryption and decryption keep at most one segment (plus the
caller's current chunk) in memory. Decryption releases a segment's plaintext
only after its tag verifies, and holds back the last segment it has seen
until more bytes prove it is not the last, or :meth:`Decryptor.finalize`
confirms its flag. Plaintext released before a later failure is authentic and
in the right place, but the stream as a whole is not: a caller that streams
to a client must abort (not complete) the response when finalize fails.

Random access (:func:`decrypt_range`) reads only the segments covering a byte
range. Each is verified under its own counter, and the one the stored size
makes last must carry the last flag, so every byte a range read returns is
authentic and at its true offset; what it cannot see is damage to segments
outside the range, which a whole-stream read would report.

Re-keying (:func:`reencrypt`) opens each segment of a stream and seals it
again, at the same position and with the same last flag, under a new key, a
new nonce prefix and new associated data, without ever holding the plaintext
anywhere but one reused segment buffer.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CryptoError
from .streamio import read_full

KEY_SIZE = 32
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
MAGIC = b"YLSE"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 1 + 4 + NONCE_PREFIX_SIZE

DEFAULT_SEGMENT_SIZE = 64 * 1024
MIN_SEGMENT_SIZE = 1
# A header is read before anything authenticates it; the cap bounds what a
# forged header can make a decryptor buffer.
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
MAX_SEGMENTS = 2**32

_HEADER = struct.Struct(">4sBI7s")
_COUNTER = struct.Struct(">I")
_NOT_LAST = b"\x00"
_LAST = b"\x01"

# Where nonce prefixes come from; tests swap it to pin known-answer vectors.
_nonce_prefix_source: Callable[[int], bytes] = os.urandom

BytesLike = bytes | bytearray | memoryview


def new_data_key() -> bytes:
    """A fresh random 256-bit data key (DEK) for one record version."""
    return os.urandom(KEY_SIZE)


# -- header -------------------------------------------------------------------


@dataclass(frozen=True)
class StreamHeader:
    """The 16 plaintext bytes in front of every stream."""

    segment_size: int
    nonce_prefix: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        # struct would silently pad or cut a prefix of the wrong length, and
        # the header would then disagree with the nonces actually used.
        if len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError(f"nonce_prefix must be {NONCE_PREFIX_SIZE} bytes, not {len(self.nonce_prefix)}")

    def encode(self) -> bytes:
        """The header's wire bytes."""
        return _HEADER.pack(MAGIC, self.version, self.segment_size, self.nonce_prefix)

    @classmethod
    def decode(cls, data: BytesLike) -> StreamHeader:
        """Parse and sanity-check a header (it is authenticated later, by every segment)."""
        if len(data) < HEADER_SIZE:
            raise CryptoError("encrypted stream is truncated: incomplete header")
        magic, version, segment_size, prefix = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CryptoError("not an encrypted stream: bad magic")
        if version != VERSION:
            raise CryptoError(f"unsupported encrypted-stream format version {version}")
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise CryptoError(f"encrypted stream has an invalid segment size {segment_size}")
        return cls(segment_size, prefix, version)


def _new_header(segment_size: int) -> StreamHeader:
    _check_segment_size(segment_size)
    return StreamHeader(segment_size, _nonce_prefix_source(NONCE_PREFIX_SIZE))


def _check_segment_size(segment_size: int) -> None:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment_size must be in {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}, not {segment_size}")


# -- one segment --------------------------------------------------------------


class _SegmentCipher:
    """Seals and opens the segments of one stream: one AESGCM object, one aad."""

    __slots__ = ("_aad", "_aead", "_prefix")

    def __init__(self, key: bytes, header: StreamHeader, associated_data: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise CryptoError(f"data key must be {KEY_SIZE} bytes, not {len(key)}")
        self._aead = AESGCM(bytes(key))
        self._prefix = header.nonce_prefix
        # The header has a fixed length, so header ‖ associated_data parses one way.
        self._aad = header.encode() + bytes(associated_data)

    def _nonce(self, index: int, last: bool) -> bytes:
        if index >= MAX_SEGMENTS:
            raise CryptoError(f"stream longer than {MAX_SEGMENTS} segments")
        return self._prefix + _COUNTER.pack(index) + (_LAST if last else _NOT_LAST)

    def seal(self, index: int, plaintext: BytesLike, last: bool) -> bytes:
        return self._aead.encrypt(self._nonce(index, last), plaintext, self._aad)

    def seal_into(self, index: int, plaintext: BytesLike, last: bool, out: BytesLike) -> None:
        """Seal into ``out``, which must hold exactly ``len(plaintext) + TAG_SIZE`` bytes."""
        self._aead.encrypt_into(self._nonce(index, last), plaintext, self._aad, out)

    def open(self, index: int, ciphertext: BytesLike, last: bool) -> bytes:
        """Plaintext of segment ``index``; :class:`CryptoError` unless its tag verifies."""
        return self._open(index, ciphertext, last, None)

    def open_last(self, index: int, ciphertext: BytesLike) -> bytes:
        """Open the segment the stream ends with; say "truncated" when it was sealed as not last."""
        return self._open_last(index, ciphertext, None)

    def open_into(self, index: int, ciphertext: BytesLike, last: bool, out: BytesLike) -> None:
        """Open segment ``index`` (as the last one if ``last``) into ``out``: ``len(ciphertext) - TAG_SIZE`` bytes.

        On failure ``out`` holds unauthenticated bytes, which the caller must discard.
        """
        if last:
            self._open_last(index, ciphertext, out)
        else:
            self._open(index, ciphertext, False, out)

    def _open_last(self, index: int, ciphertext: BytesLike, out: BytesLike | None) -> bytes:
        if len(ciphertext) < TAG_SIZE:
            raise CryptoError("encrypted stream is truncated: incomplete final segment")
        if index > 0 and len(ciphertext) == TAG_SIZE:
            raise CryptoError("encrypted stream is malformed: empty final segment")
        try:
            return self._open(index, ciphertext, True, out)
        except CryptoError:
            # Only on the failure path: a segment that opens as "not last" is
            # authentic, so the stream was cut after it.
            if self._opens(index, ciphertext, last=False):
                raise CryptoError("encrypted stream is truncated: the final segment is missing") from None
            raise

    def _open(self, index: int, ciphertext: BytesLike, last: bool, out: BytesLike | None) -> bytes:
        """The plaintext, or ``b""`` once it is written into ``out``; :class:`CryptoError` on a bad tag."""
        nonce = self._nonce(index, last)
        try:
            if out is None:
                return self._aead.decrypt(nonce, ciphertext, self._aad)
            self._aead.decrypt_into(nonce, ciphertext, self._aad, out)
            return b""
        except InvalidTag:
            raise CryptoError(
                f"cannot decrypt segment {index} of the encrypted stream: wrong key, "
                "wrong associated data, or damaged, reordered or truncated ciphertext"
            ) from None

    def _opens(self, index: int, ciphertext: BytesLike, last: bool) -> bool:
        try:
            self._aead.decrypt(self._nonce(index, last), ciphertext, self._aad)
        except InvalidTag:
            return False
        return True


# -- sizes --------------------------------------------------------------------


def ciphertext_size(plaintext_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Bytes of the stream that encrypts ``plaintext_size`` bytes."""
    if plaintext_size < 0:
        raise ValueError("plaintext_size must be non-negative")
    _check_segment_size(segment_size)
    segments = max(1, -(-plaintext_size // segment_size))
    return HEADER_SIZE + plaintext_size + segments * TAG_SIZE


def plaintext_size(ciphertext_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Bytes of plaintext in a stream of ``ciphertext_size`` bytes; :class:`CryptoError` if impossible."""
    _check_segment_size(segment_size)
    return _layout(ciphertext_size, segment_size)[1]


def _layout(total: int, segment_size: int) -> tuple[int, int]:
    """``(segments, plaintext bytes)`` of a stream of ``total`` bytes; the inverse of :func:`ciphertext_size`."""
    body = total - HEADER_SIZE
    if body < TAG_SIZE:
        raise CryptoError(f"encrypted stream of {total} bytes is truncated")
    full = segment_size + TAG_SIZE
    segments = -(-body // full)
    last = body - (segments - 1) * full
    if segments > 1 and last <= TAG_SIZE:  # a final segment must hold a tag and, after others, data
        raise CryptoError(f"{total} bytes is not a valid encrypted-stream size for segment size {segment_size}")
    if segments > MAX_SEGMENTS:
        raise CryptoError(f"encrypted stream of {total} bytes has too many segments")
    return segments, body - segments * TAG_SIZE


# -- incremental encryption ---------------------------------------------------


class Encryptor:
    """Encrypt a stream piece by piece: write ``header``, every ``update()``, then ``finalize()``.

    A segment is emitted once more plaintext after it proves it is not the
    last, so up to one full segment stays buffered until :meth:`finalize`.
    """

    def __init__(self, key: bytes, *, associated_data: bytes, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self._header = _new_header(segment_size)
        self._cipher = _SegmentCipher(key, self._header, associated_data)
        self._segment_size = segment_size
        self._buffer = bytearray()
        self._index = 0
        self._finished = False

    @property
    def header(self) -> bytes:
        """The 16 header bytes, which go in front of the ciphertext."""
        return self._header.encode()

    def update(self, data: BytesLike) -> bytes:
        """Take more plaintext; return the ciphertext of the segments it completed."""
        self._check_open()
        view = memoryview(data).cast("B")
        size, buffer, out = self._segment_size, self._buffer, []
        pos, end = 0, len(view)
        while pos < end:
            if len(buffer) == size:  # more plaintext follows, so it is not the last
                out.append(self._seal(buffer, last=False))
                buffer.clear()
            if not buffer and end - pos > size:  # a whole non-last segment, straight from the input
                out.append(self._seal(view[pos : pos + size], last=False))
                pos += size
                continue
            take = min(size - len(buffer), end - pos)
            buffer += view[pos : pos + take]
            pos += take
        return b"".join(out)

    def finalize(self) -> bytes:
        """The last segment (flagged last; empty only when no plaintext came at all)."""
        self._check_open()
        self._finished = True
        last = self._seal(self._buffer, last=True)
        self._buffer = bytearray()
        return last

    def _seal(self, plaintext: BytesLike, *, last: bool) -> bytes:
        sealed = self._cipher.seal(self._index, plaintext, last)
        self._index += 1
        return sealed

    def _check_open(self) -> None:
        if self._finished:
            raise ValueError("encryptor already finalized")


# -- incremental decryption ---------------------------------------------------


class Decryptor:
    """Decrypt a stream piece by piece: every ``update()``, then ``finalize()``.

    Returns plaintext only of segments whose tag verified. The newest complete
    segment is held back until more ciphertext shows it is not the last, since
    only then is its last flag known; :meth:`finalize` opens it as the last one.
    After any failure the decryptor refuses further use.
    """

    def __init__(self, key: bytes, *, associated_data: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise CryptoError(f"data key must be {KEY_SIZE} bytes, not {len(key)}")
        self._key = bytes(key)
        self._associated_data = bytes(associated_data)
        self._header: StreamHeader | None = None
        self._cipher: _SegmentCipher | None = None
        self._full = 0
        self._buffer = bytearray()
        self._index = 0
        self._state = "open"

    @property
    def header(self) -> StreamHeader | None:
        """The parsed header once its 16 bytes have arrived (authenticated only with the segments)."""
        return self._header

    def update(self, data: BytesLike) -> bytes:
        """Take more ciphertext; return the plaintext of the segments it proved not last."""
        self._check_open()
        try:
            return self._update(memoryview(data).cast("B"))
        except CryptoError:
            self._state = "failed"
            raise

    def finalize(self) -> bytes:
        """Open the held-back segment as the last; :class:`CryptoError` ("truncated") if it is not."""
        self._check_open()
        self._state = "failed"  # until proven otherwise
        if self._cipher is None:
            raise CryptoError("encrypted stream is truncated: incomplete header")
        if not self._buffer:
            raise CryptoError("encrypted stream is truncated: no final segment")
        plaintext = self._cipher.open_last(self._index, self._buffer)
        self._buffer = bytearray()
        self._state = "finished"
        return plaintext

    def _update(self, view: memoryview) -> bytes:
        pos, end = 0, len(view)
        if self._cipher is None:
            pos = self._take_header(view)
        cipher, full, buffer, out = self._cipher, self._full, self._buffer, []
        if cipher is None:
            return b""
        while pos < end:
            if len(buffer) == full:  # more ciphertext follows, so it is not the last
                out.append(self._open(cipher, buffer))
                buffer.clear()
            if not buffer and end - pos > full:  # a whole non-last segment, straight from the input
                out.append(self._open(cipher, view[pos : pos + full]))
                pos += full
                continue
            take = min(full - len(buffer), end - pos)
            buffer += view[pos : pos + take]
            pos += take
        return b"".join(out)

    def _take_header(self, view: memoryview) -> int:
        """Buffer header bytes; set up the cipher once all 16 are here. Returns bytes consumed."""
        take = min(HEADER_SIZE - len(self._buffer), len(view))
        self._buffer += view[:take]
        if len(self._buffer) == HEADER_SIZE:
            self._header = StreamHeader.decode(bytes(self._buffer))
            self._cipher = _SegmentCipher(self._key, self._header, self._associated_data)
            self._full = self._header.segment_size + TAG_SIZE
            self._buffer.clear()
        return take

    def _open(self, cipher: _SegmentCipher, segment: BytesLike) -> bytes:
        plaintext = cipher.open(self._index, segment, last=False)
        self._index += 1
        return plaintext

    def _check_open(self) -> None:
        if self._state == "finished":
            raise ValueError("decryptor already finalized")
        if self._state == "failed":
            raise CryptoError("encrypted stream already failed to decrypt")


# -- whole streams ------------------------------------------------------------


def encrypt_stream(
    key: bytes,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    associated_data: bytes,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> int:
    """Encrypt ``src`` to ``dst`` reading one segment ahead; return the ciphertext bytes written."""
    header = _new_header(segment_size)
    cipher = _SegmentCipher(key, header, associated_data)
    written = _write(dst, header.encode())
    current, index = read_full(src, segment_size), 0
    while True:
        following = read_full(src, segment_size) if len(current) == segment_size else b""
        last = not following
        written += _write(dst, cipher.seal(index, current, last))
        if last:
            return written
        current, index = following, index + 1


def decrypt_stream(key: bytes, src: BinaryIO, dst: BinaryIO, *, associated_data: bytes) -> int:
    """Decrypt ``src`` to ``dst``; return the plaintext bytes written.

    On :class:`CryptoError` ``dst`` may already hold the authentic plaintext
    of the segments before the failure; the caller must discard it.
    """
    header = StreamHeader.decode(read_full(src, HEADER_SIZE))
    cipher = _SegmentCipher(key, header, associated_data)
    full = header.segment_size + TAG_SIZE
    current, index, written = read_full(src, full), 0, 0
    while True:
        following = read_full(src, full) if len(current) == full else b""
        if not following:
            if not current:
                raise CryptoError("encrypted stream is truncated: no final segment")
            return written + _write(dst, cipher.open_last(index, current))
        written += _write(dst, cipher.open(index, current, last=False))
        current, index = following, index + 1


def encrypt_bytes(
    key: bytes, data: BytesLike, *, associated_data: bytes, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> bytes:
    """Encrypt a whole plaintext held in memory (one pass, one join)."""
    header = _new_header(segment_size)
    cipher = _SegmentCipher(key, header, associated_data)
    view = memoryview(data).cast("B")
    count = max(1, -(-len(view) // segment_size))
    parts = [header.encode()]
    for index in range(count):
        start = index * segment_size
        parts.append(cipher.seal(index, view[start : start + segment_size], index == count - 1))
    return b"".join(parts)


def decrypt_bytes(key: bytes, data: BytesLike, *, associated_data: bytes) -> bytes:
    """Decrypt a whole stream held in memory."""
    view = memoryview(data).cast("B")
    header = StreamHeader.decode(view[:HEADER_SIZE])
    count, _ = _layout(len(view), header.segment_size)
    cipher = _SegmentCipher(key, header, associated_data)
    full = header.segment_size + TAG_SIZE
    parts = []
    for index in range(count - 1):
        start = HEADER_SIZE + index * full
        parts.append(cipher.open(index, view[start : start + full], last=False))
    parts.append(cipher.open_last(count - 1, view[HEADER_SIZE + (count - 1) * full :]))
    return b"".join(parts)


# -- re-keying ----------------------------------------------------------------


def reencrypt(
    key: bytes,
    pieces: Iterable[BytesLike],
    *,
    associated_data: bytes,
    ciphertext_total: int,
    plaintext_total: int,
    new_key: bytes,
    new_associated_data: bytes,
    chunk_size: int,
) -> Iterator[bytes]:
    """The same plaintext as a new stream under ``new_key``, in pieces of ``chunk_size`` bytes.

    ``pieces`` is the old stream cut anyhow (the blocks of its DAG), and
    ``ciphertext_total`` and ``plaintext_total`` its stored sizes, which its
    layout must match. Each old segment's tag is verified (the last one's as
    last) before its plaintext is sealed as the same segment of the new
    stream, which keeps the segment size and so the length. The plaintext only
    ever sits in one reused segment buffer, and each new segment is sealed
    straight into the chunk being filled, which is handed out once as
    immutable bytes: re-keying costs no other copy. Every piece but the last
    is exactly ``chunk_size`` bytes. A bad tag, or an old stream shorter or
    longer than its stored size, raises :class:`CryptoError`; the pieces
    already handed out are then authentic ciphertext of an unfinished stream,
    which the caller must drop.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    source = _Cursor(pieces)
    header = StreamHeader.decode(source.take(HEADER_SIZE))
    segments, size = _layout(ciphertext_total, header.segment_size)
    if size != plaintext_total:
        raise CryptoError(f"encrypted stream of {ciphertext_total} bytes holds {size}, not {plaintext_total}")
    old = _SegmentCipher(key, header, associated_data)
    new_header = _new_header(header.segment_size)
    new = _SegmentCipher(new_key, new_header, new_associated_data)
    full = header.segment_size + TAG_SIZE
    plaintext = memoryview(bytearray(header.segment_size))
    spare = memoryview(bytearray(full))  # a new segment that straddles two chunks
    chunk = memoryview(bytearray(chunk_size))
    filled = 0

    def spill(data: memoryview) -> Iterator[bytes]:
        nonlocal filled
        while data:
            take = min(chunk_size - filled, len(data))
            chunk[filled : filled + take] = data[:take]
            filled += take
            data = data[take:]
            if filled == chunk_size:
                filled = 0
                yield chunk.tobytes()

    yield from spill(memoryview(new_header.encode()))
    for index in range(segments):
        last = index == segments - 1
        length = ciphertext_total - HEADER_SIZE - index * full if last else full
        segment = source.take(length)
        if len(segment) != length:
            raise CryptoError(f"encrypted stream is truncated: {len(segment)} of {length} bytes of segment {index}")
        text = plaintext[: length - TAG_SIZE]
        old.open_into(index, segment, last, text)
        if chunk_size - filled >= length:
            new.seal_into(index, text, last, chunk[filled : filled + length])
            filled += length
            if filled == chunk_size:
                filled = 0
                yield chunk.tobytes()
        else:
            new.seal_into(index, text, last, spare[:length])
            yield from spill(spare[:length])
    if source.take(1):
        raise CryptoError(f"encrypted stream is longer than its stored size of {ciphertext_total} bytes")
    if filled:
        yield chunk[:filled].tobytes()


class _Cursor:
    """Exact-size views over a sequence of byte strings: no copy unless a view spans two of them."""

    def __init__(self, pieces: Iterable[BytesLike]) -> None:
        self._pieces = iter(pieces)
        self._view = memoryview(b"")

    def take(self, size: int) -> memoryview:
        """The next ``size`` bytes, or fewer at the end."""
        view = self._view
        if len(view) >= size:
            self._view = view[size:]
            return view[:size]
        held = bytearray(view)
        self._view = memoryview(b"")
        while len(held) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            piece_view = memoryview(piece).cast("B")
            if not held and len(piece_view) >= size:
                self._view = piece_view[size:]
                return piece_view[:size]
            need = size - len(held)
            held += piece_view[:need]
            self._view = piece_view[need:]
        return memoryview(held)


# -- random access ------------------------------------------------------------


def decrypt_range(
    key: bytes,
    read_at: Callable[[int, int], bytes],
    *,
    associated_data: bytes,
    ciphertext_total: int,
    offset: int = 0,
    length: int | None = None,
) -> Iterator[bytes]:
    """Yield the plaintext bytes ``[offset, offset + length)`` (to the end if None).

    ``read_at(pos, n)`` returns ``n`` ciphertext bytes at ``pos``, and
    ``ciphertext_total`` is the stream's stored size; the range is clipped to
    the plaintext. Only the header and the segments covering the range are
    read, each verified under its own counter, and the segment the size makes
    last must be flagged last. A range that stops short of the last segment
    therefore cannot notice that the stored stream was cut: its bytes are
    still authentic and in place, and a whole-stream read would fail.

    An empty range still verifies the final segment, so an empty file read
    with the wrong key or record, or from a stream cut short, fails too. The
    header and the size are checked at the call, before the first byte is
    yielded, so an HTTP view can still answer with an error status.
    """
    if offset < 0 or (length is not None and length < 0):
        raise ValueError("offset and length must be non-negative")
    header = StreamHeader.decode(_read_exact(read_at, 0, HEADER_SIZE))
    segments, size = _layout(ciphertext_total, header.segment_size)
    end = size if length is None else min(size, offset + length)
    cipher = _SegmentCipher(key, header, associated_data)
    return _range_segments(cipher, read_at, header.segment_size, segments, ciphertext_total, offset, end)


def _range_segments(
    cipher: _SegmentCipher,
    read_at: Callable[[int, int], bytes],
    seg: int,
    segments: int,
    total: int,
    start: int,
    end: int,
) -> Iterator[bytes]:
    full = seg + TAG_SIZE
    if start >= end:
        # Nothing to return, but an empty file's (or empty range's) answer must
        # still come from the right key, record and a complete stream.
        pos = HEADER_SIZE + (segments - 1) * full
        cipher.open_last(segments - 1, _read_exact(read_at, pos, total - pos))
        return
    for index in range(start // seg, (end - 1) // seg + 1):
        pos = HEADER_SIZE + index * full
        if index == segments - 1:
            plaintext = cipher.open_last(index, _read_exact(read_at, pos, total - pos))
        else:
            plaintext = cipher.open(index, _read_exact(read_at, pos, full), last=False)
        lo, hi = max(start - index * seg, 0), min(end - index * seg, len(plaintext))
        yield plaintext if lo == 0 and hi == len(plaintext) else plaintext[lo:hi]


# -- I/O helpers --------------------------------------------------------------


def _read_exact(read_at: Callable[[int, int], bytes], pos: int, size: int) -> bytes:
    data = read_at(pos, size)
    if len(data) != size:
        raise CryptoError(f"encrypted stream is truncated: {len(data)} of {size} bytes at offset {pos}")
    return data


def _write(dst: BinaryIO, data: bytes) -> int:
    dst.write(data)
    return len(data)
