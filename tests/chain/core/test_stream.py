"""Streaming AEAD: round trips, the exact wire format, and every way to open wrongly."""

from __future__ import annotations

import hashlib
import io
import random
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.core import stream
from chain.core.errors import CryptoError
from chain.core.stream import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    Decryptor,
    Encryptor,
    StreamHeader,
    ciphertext_size,
    decrypt_bytes,
    decrypt_range,
    decrypt_stream,
    encrypt_bytes,
    encrypt_stream,
    new_data_key,
    plaintext_size,
    reencrypt,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
AD = b"record:7f3a/version:2"
SEG = 8


def pattern(n: int) -> bytes:
    """Distinct, non-repeating-looking bytes (so a swapped slice shows)."""
    return bytes((i * 131 + i // 256) & 0xFF for i in range(n))


def split(ct: bytes, seg: int) -> tuple[bytes, list[bytes]]:
    """Header and ciphertext segments of a stream."""
    full = seg + TAG_SIZE
    body = ct[HEADER_SIZE:]
    return ct[:HEADER_SIZE], [body[i : i + full] for i in range(0, len(body), full)]


def decrypt_incrementally(key: bytes, ct: bytes, *, associated_data: bytes, chunk: int = 5) -> bytes:
    decryptor = Decryptor(key, associated_data=associated_data)
    parts = [decryptor.update(ct[i : i + chunk]) for i in range(0, len(ct), chunk)]
    return b"".join(parts) + decryptor.finalize()


def decrypt_streamed(key: bytes, ct: bytes, *, associated_data: bytes) -> bytes:
    out = io.BytesIO()
    written = decrypt_stream(key, io.BytesIO(ct), out, associated_data=associated_data)
    assert written == len(out.getvalue())
    return out.getvalue()


def decrypt_ranged(key: bytes, ct: bytes, *, associated_data: bytes) -> bytes:
    parts = decrypt_range(
        key, lambda pos, n: ct[pos : pos + n], associated_data=associated_data, ciphertext_total=len(ct)
    )
    return b"".join(parts)


def decrypt_reencrypted(key: bytes, ct: bytes, *, associated_data: bytes) -> bytes:
    """Re-key the stream (fed in uneven pieces, out in odd-sized chunks), then open the new one."""
    segment_size = StreamHeader.decode(ct[:HEADER_SIZE]).segment_size
    new = b"".join(
        reencrypt(
            key,
            pieces(ct, [3, 0, 17, 1, 40]),
            associated_data=associated_data,
            ciphertext_total=len(ct),
            plaintext_total=plaintext_size(len(ct), segment_size),
            new_key=OTHER_KEY,
            new_associated_data=b"rekeyed",
            chunk_size=11,
        )
    )
    return decrypt_bytes(OTHER_KEY, new, associated_data=b"rekeyed")


DECRYPTORS: list[Callable[..., bytes]] = [
    decrypt_bytes,
    decrypt_incrementally,
    decrypt_streamed,
    decrypt_ranged,
    decrypt_reencrypted,
]


def assert_all_fail(ct: bytes, *, key: bytes = KEY, associated_data: bytes = AD, match: str | None = None) -> None:
    for decrypt in DECRYPTORS:
        with pytest.raises(CryptoError, match=match):
            decrypt(key, ct, associated_data=associated_data)


def fixed_prefix(prefix: bytes) -> Any:
    """Pin the nonce prefix, for known-answer and equality tests only."""
    return mock.patch.object(stream, "_nonce_prefix_source", mock.Mock(return_value=prefix))


# -- keys, header and exact format ---------------------------------------------


def test_data_keys_are_fresh_256_bit() -> None:
    a, b = new_data_key(), new_data_key()
    assert len(a) == len(b) == 32
    assert a != b


def test_wire_format_matches_the_design() -> None:
    """Header, nonce layout (prefix ‖ u32 BE counter ‖ last flag) and aad, rebuilt from AESGCM alone."""
    prefix = bytes.fromhex("a1a2a3a4a5a6a7")
    data = pattern(2 * SEG + 3)
    with fixed_prefix(prefix):
        ct = encrypt_bytes(KEY, data, associated_data=AD, segment_size=SEG)
    header = b"YLSE" + b"\x01" + SEG.to_bytes(4, "big") + prefix
    aead, aad = AESGCM(KEY), header + AD
    expected = header
    for index, (chunk, last) in enumerate([(data[:8], 0), (data[8:16], 0), (data[16:], 1)]):
        expected += aead.encrypt(prefix + index.to_bytes(4, "big") + bytes([last]), chunk, aad)
    assert ct == expected
    assert StreamHeader.decode(ct) == StreamHeader(SEG, prefix)


def test_every_stream_gets_a_fresh_nonce_prefix() -> None:
    a = encrypt_bytes(KEY, b"same", associated_data=AD)
    b = encrypt_bytes(KEY, b"same", associated_data=AD)
    assert a[9:16] != b[9:16]
    assert a != b


def test_empty_plaintext_is_one_final_empty_segment() -> None:
    ct = encrypt_bytes(KEY, b"", associated_data=AD)
    assert len(ct) == HEADER_SIZE + TAG_SIZE == ciphertext_size(0)
    for decrypt in DECRYPTORS:
        assert decrypt(KEY, ct, associated_data=AD) == b""
    encryptor = Encryptor(KEY, associated_data=AD)
    assert encryptor.update(b"") == b""
    assert len(encryptor.finalize()) == TAG_SIZE


def test_a_multiple_of_the_segment_size_ends_on_a_full_last_segment() -> None:
    ct = encrypt_bytes(KEY, pattern(3 * SEG), associated_data=AD, segment_size=SEG)
    _, segments = split(ct, SEG)
    assert [len(s) for s in segments] == [SEG + TAG_SIZE] * 3


# -- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("seg", [1, 7, SEG, 64, DEFAULT_SEGMENT_SIZE])
def test_round_trip_at_the_edges(seg: int) -> None:
    for size in sorted({0, 1, seg - 1, seg, seg + 1, 2 * seg, 3 * seg + 5}):
        data = pattern(size)
        encryptor = Encryptor(KEY, associated_data=AD, segment_size=seg)
        made = [
            encrypt_bytes(KEY, data, associated_data=AD, segment_size=seg),
            encryptor.header + encryptor.update(data) + encryptor.finalize(),
        ]
        out = io.BytesIO()
        written = encrypt_stream(KEY, io.BytesIO(data), out, associated_data=AD, segment_size=seg)
        made.append(out.getvalue())
        assert written == len(out.getvalue())
        for ct in made:
            assert len(ct) == ciphertext_size(size, seg)
            assert plaintext_size(len(ct), seg) == size
            for decrypt in DECRYPTORS:
                assert decrypt(KEY, ct, associated_data=AD) == data, (seg, size, decrypt.__name__)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=600),
    seg=st.integers(1, 40),
    enc_cuts=st.lists(st.integers(0, 90), max_size=30),
    dec_cuts=st.lists(st.integers(0, 90), max_size=30),
)
def test_chunked_updates_equal_one_shot(
    data: bytes, seg: int, enc_cuts: list[int], dec_cuts: list[int]
) -> None:
    prefix = b"\x07" * 7
    with fixed_prefix(prefix):
        one_shot = encrypt_bytes(KEY, data, associated_data=AD, segment_size=seg)
        encryptor = Encryptor(KEY, associated_data=AD, segment_size=seg)
    chunked = [encryptor.header, *(encryptor.update(piece) for piece in pieces(data, enc_cuts))]
    chunked.append(encryptor.finalize())
    assert b"".join(chunked) == one_shot

    decryptor = Decryptor(KEY, associated_data=AD)
    plain = [decryptor.update(piece) for piece in pieces(one_shot, dec_cuts)]
    plain.append(decryptor.finalize())
    assert b"".join(plain) == data


def pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` cut into pieces of the given sizes (0 included), the rest as one piece."""
    pos = 0
    for size in cuts:
        yield data[pos : pos + size]
        pos += size
    yield data[pos:]


def test_update_accepts_any_bytes_like() -> None:
    data = pattern(50)
    encryptor = Encryptor(KEY, associated_data=AD, segment_size=SEG)
    ct = encryptor.header + encryptor.update(bytearray(data[:20])) + encryptor.update(memoryview(data)[20:])
    ct += encryptor.finalize()
    decryptor = Decryptor(KEY, associated_data=AD)
    assert decryptor.update(bytearray(ct)) + decryptor.finalize() == data
    assert decrypt_bytes(KEY, memoryview(ct), associated_data=AD) == data


def test_encryptor_emits_only_segments_known_not_to_be_last() -> None:
    encryptor = Encryptor(KEY, associated_data=AD, segment_size=SEG)
    assert encryptor.update(pattern(SEG)) == b""  # might be the last
    assert len(encryptor.update(b"x")) == SEG + TAG_SIZE
    assert len(encryptor.finalize()) == 1 + TAG_SIZE


def test_decryptor_holds_back_the_last_segment_until_finalize() -> None:
    data = pattern(2 * SEG)
    ct = encrypt_bytes(KEY, data, associated_data=AD, segment_size=SEG)
    decryptor = Decryptor(KEY, associated_data=AD)
    assert decryptor.update(ct) == data[:SEG]
    assert decryptor.header == StreamHeader.decode(ct)
    assert decryptor.finalize() == data[SEG:]


def test_finalized_objects_refuse_more_use() -> None:
    encryptor = Encryptor(KEY, associated_data=AD)
    encryptor.finalize()
    with pytest.raises(ValueError, match="finalized"):
        encryptor.update(b"x")
    decryptor = Decryptor(KEY, associated_data=AD)
    decryptor.update(encrypt_bytes(KEY, b"x", associated_data=AD))
    decryptor.finalize()
    with pytest.raises(ValueError, match="finalized"):
        decryptor.finalize()


def test_a_failed_decryptor_stays_failed() -> None:
    ct = bytearray(encrypt_bytes(KEY, pattern(3 * SEG), associated_data=AD, segment_size=SEG))
    ct[HEADER_SIZE] ^= 1
    decryptor = Decryptor(KEY, associated_data=AD)
    with pytest.raises(CryptoError):
        decryptor.update(bytes(ct))
    with pytest.raises(CryptoError, match="already failed"):
        decryptor.update(b"")
    with pytest.raises(CryptoError, match="already failed"):
        decryptor.finalize()


# -- every way to open wrongly ------------------------------------------------


STREAM_DATA = pattern(3 * SEG + 3)  # four segments, the last partial


def sample() -> bytes:
    return encrypt_bytes(KEY, STREAM_DATA, associated_data=AD, segment_size=SEG)


def test_any_flipped_bit_fails() -> None:
    ct = sample()
    for index in range(len(ct)):
        for bit in (0x01, 0x80):
            bad = bytearray(ct)
            bad[index] ^= bit
            assert_all_fail(bytes(bad))


def test_wrong_key_fails() -> None:
    assert_all_fail(sample(), key=OTHER_KEY)
    assert_all_fail(encrypt_bytes(KEY, b"", associated_data=AD), key=OTHER_KEY)


@pytest.mark.parametrize("other", [b"record:7f3b/version:2", AD + b"0", AD[:-1], b""])
def test_ciphertext_moved_to_another_record_fails(other: bytes) -> None:
    assert_all_fail(sample(), associated_data=other)
    assert_all_fail(encrypt_bytes(KEY, b"", associated_data=AD), associated_data=other)


def test_dropping_the_last_segment_is_reported_as_truncated() -> None:
    header, segments = split(sample(), SEG)
    assert_all_fail(header + b"".join(segments[:-1]), match="truncated")
    assert_all_fail(header + segments[0], match="truncated")
    assert_all_fail(header, match="truncated")
    # A stream whose last segment is full, cut at the boundary before it.
    header, segments = split(encrypt_bytes(KEY, pattern(2 * SEG), associated_data=AD, segment_size=SEG), SEG)
    assert_all_fail(header + segments[0], match="truncated")


def test_every_cut_fails() -> None:
    ct = sample()
    for cut in range(len(ct)):
        assert_all_fail(ct[:cut])


def test_trailing_bytes_fail() -> None:
    ct = sample()
    _, other_segments = split(encrypt_bytes(KEY, STREAM_DATA, associated_data=AD, segment_size=SEG), SEG)
    for extra in (b"\x00", b"x" * TAG_SIZE, b"y" * (SEG + TAG_SIZE), other_segments[-1]):
        assert_all_fail(ct + extra)


def test_reordered_duplicated_and_dropped_segments_fail() -> None:
    header, s = split(sample(), SEG)
    variants = [
        [s[1], s[0], s[2], s[3]],  # swapped
        [s[0], s[2], s[1], s[3]],
        [s[0], s[1], s[1], s[2], s[3]],  # duplicated
        [s[0], s[0], s[2], s[3]],  # duplicate replacing another
        [s[0], s[2], s[3]],  # dropped from the middle
        [s[1], s[2], s[3]],  # dropped from the front
        [s[0], s[1], s[2], s[3], s[3]],  # final duplicated
    ]
    for segments in variants:
        assert_all_fail(header + b"".join(segments))


def test_splicing_between_streams_under_one_key_fails() -> None:
    header_a, a = split(sample(), SEG)
    header_b, b = split(sample(), SEG)
    assert_all_fail(header_b + b"".join(a))  # swapped header
    assert_all_fail(header_a + b"".join([a[0], b[1], a[2], a[3]]))  # segment from another stream, same index


def test_a_header_with_another_segment_size_fails() -> None:
    ct = bytearray(sample())
    ct[5:9] = (SEG + 1).to_bytes(4, "big")
    assert_all_fail(bytes(ct))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (slice(0, 4), b"YLSF", "magic"),
        (slice(4, 5), b"\x02", "version 2"),
        (slice(5, 9), (0).to_bytes(4, "big"), "segment size"),
        (slice(5, 9), (stream.MAX_SEGMENT_SIZE + 1).to_bytes(4, "big"), "segment size"),
    ],
)
def test_bad_headers_are_refused_before_decrypting(field: slice, value: bytes, message: str) -> None:
    ct = bytearray(sample())
    ct[field] = value
    assert_all_fail(bytes(ct), match=message)


def test_an_empty_final_segment_after_others_is_malformed() -> None:
    # Only the key holder could make one; the decoder still refuses it so each
    # plaintext has exactly one encoding.
    prefix = b"\x01" * 7
    header = StreamHeader(SEG, prefix).encode()
    aead, aad = AESGCM(KEY), header + AD
    ct = header + aead.encrypt(prefix + bytes(4) + b"\x00", pattern(SEG), aad)
    ct += aead.encrypt(prefix + (1).to_bytes(4, "big") + b"\x01", b"", aad)
    assert_all_fail(ct)


def test_bad_keys_and_parameters_are_refused() -> None:
    with pytest.raises(CryptoError, match="32 bytes"):
        encrypt_bytes(b"short", b"x", associated_data=AD)
    with pytest.raises(CryptoError, match="32 bytes"):
        Decryptor(KEY + b"x", associated_data=AD)
    for seg in (0, stream.MAX_SEGMENT_SIZE + 1):
        with pytest.raises(ValueError, match="segment_size"):
            Encryptor(KEY, associated_data=AD, segment_size=seg)
    with pytest.raises(ValueError, match="non-negative"):
        ciphertext_size(-1)
    with pytest.raises(ValueError, match="nonce_prefix"):
        StreamHeader(SEG, b"\x00" * 6)


def test_the_segment_counter_cannot_wrap() -> None:
    encryptor = Encryptor(KEY, associated_data=AD, segment_size=1)
    encryptor._index = stream.MAX_SEGMENTS - 1  # reaching it honestly takes 2**32 segments
    assert len(encryptor.update(b"ab")) == 1 + TAG_SIZE  # segment 2**32 - 1 is the last allowed
    with pytest.raises(CryptoError, match="segments"):
        encryptor.finalize()


# -- sizes ----------------------------------------------------------------------


@given(size=st.integers(0, 10**7), seg=st.integers(1, 70_000))
def test_sizes_are_inverse(size: int, seg: int) -> None:
    assert plaintext_size(ciphertext_size(size, seg), seg) == size


@given(total=st.integers(0, 5000), seg=st.integers(1, 100))
def test_every_ciphertext_size_has_at_most_one_plaintext_size(total: int, seg: int) -> None:
    try:
        size = plaintext_size(total, seg)
    except CryptoError:
        return
    assert ciphertext_size(size, seg) == total


def test_impossible_ciphertext_sizes_are_refused() -> None:
    for total in (0, HEADER_SIZE, HEADER_SIZE + TAG_SIZE - 1, HEADER_SIZE + 2 * TAG_SIZE + SEG):
        with pytest.raises(CryptoError):
            plaintext_size(total, SEG)
    with pytest.raises(CryptoError):  # a final segment shorter than its tag
        plaintext_size(HEADER_SIZE + SEG + TAG_SIZE + 9, SEG)
    with pytest.raises(CryptoError, match="too many segments"):
        plaintext_size(HEADER_SIZE + (stream.MAX_SEGMENTS + 1) * (1 + TAG_SIZE), 1)


# -- random access ----------------------------------------------------------------


class RangeSource:
    """``read_at`` over bytes that records what it was asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def __call__(self, pos: int, n: int) -> bytes:
        self.reads.append((pos, n))
        return self.data[pos : pos + n]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=500), seg=st.integers(1, 40), offset=st.integers(0, 520), length=st.integers(0, 520))
def test_range_reads_equal_slices_and_read_only_what_they_need(
    data: bytes, seg: int, offset: int, length: int
) -> None:
    ct = encrypt_bytes(KEY, data, associated_data=AD, segment_size=seg)
    source = RangeSource(ct)
    parts = decrypt_range(
        KEY, source, associated_data=AD, ciphertext_total=len(ct), offset=offset, length=length
    )
    assert b"".join(parts) == data[offset : offset + length]
    wanted = data[offset : offset + length]
    segments_read = len(source.reads) - 1  # the header
    assert source.reads[0] == (0, HEADER_SIZE)
    if wanted:
        assert segments_read == (offset + len(wanted) - 1) // seg - offset // seg + 1
    else:  # only the final segment, to check the key, record and size
        last_at = HEADER_SIZE + (len(ct) - HEADER_SIZE - 1) // (seg + TAG_SIZE) * (seg + TAG_SIZE)
        assert source.reads[1:] == [(last_at, len(ct) - last_at)]


def test_range_to_the_end_and_past_it() -> None:
    ct = sample()
    source = RangeSource(ct)
    read = lambda **kw: b"".join(  # noqa: E731
        decrypt_range(KEY, source, associated_data=AD, ciphertext_total=len(ct), **kw)
    )
    assert read() == STREAM_DATA
    assert read(offset=5) == STREAM_DATA[5:]
    assert read(offset=len(STREAM_DATA) + 10, length=3) == b""
    with pytest.raises(ValueError, match="non-negative"):
        read(offset=-1)


def test_range_reads_check_the_last_flag_against_the_stored_size() -> None:
    header, segments = split(sample(), SEG)
    cut = header + b"".join(segments[:-1])  # a stored copy that lost its last segment
    source = RangeSource(cut)
    # Early segments are authentic and in place, so they may still be served...
    assert b"".join(decrypt_range(KEY, source, associated_data=AD, ciphertext_total=len(cut), length=SEG)) == (
        STREAM_DATA[:SEG]
    )
    # ...but the segment the size makes last was not sealed as last.
    with pytest.raises(CryptoError, match="truncated"):
        b"".join(decrypt_range(KEY, source, associated_data=AD, ciphertext_total=len(cut), offset=2 * SEG))


def test_range_reads_verify_what_they_return() -> None:
    ct = bytearray(sample())
    ct[HEADER_SIZE + (SEG + TAG_SIZE) + 3] ^= 1  # inside segment 1
    source = RangeSource(bytes(ct))
    with pytest.raises(CryptoError, match="segment 1"):
        b"".join(decrypt_range(KEY, source, associated_data=AD, ciphertext_total=len(ct), offset=SEG, length=2))
    assert b"".join(decrypt_range(KEY, source, associated_data=AD, ciphertext_total=len(ct), length=SEG)) == (
        STREAM_DATA[:SEG]
    )
    clean = sample()
    for key, ad in ((OTHER_KEY, AD), (KEY, b"another record")):
        with pytest.raises(CryptoError, match="segment 0"):
            b"".join(decrypt_range(key, RangeSource(clean), associated_data=ad, ciphertext_total=len(clean), length=1))


def test_range_reads_refuse_bad_sizes_and_short_reads_at_the_call() -> None:
    ct = sample()
    bad_total = HEADER_SIZE + 3 * (SEG + TAG_SIZE) + TAG_SIZE  # an empty final segment after full ones
    with pytest.raises(CryptoError, match="not a valid"):
        decrypt_range(KEY, RangeSource(ct), associated_data=AD, ciphertext_total=bad_total)
    with pytest.raises(CryptoError, match="truncated"):
        decrypt_range(KEY, RangeSource(ct[:10]), associated_data=AD, ciphertext_total=len(ct))
    short = RangeSource(ct[:-1])
    with pytest.raises(CryptoError, match="truncated"):
        b"".join(decrypt_range(KEY, short, associated_data=AD, ciphertext_total=len(ct), offset=3 * SEG))


# -- memory -------------------------------------------------------------------------


class Generated:
    """A readable stream of ``size`` pseudo-random bytes that never holds them all."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.random = random.Random(size)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.random.randbytes(n)


class HashSink:
    """A writable stream that keeps only a hash of what it was given."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def generated_hash(size: int) -> bytes:
    digest, source = hashlib.sha256(), Generated(size)
    while chunk := source.read(65536):
        digest.update(chunk)
    return digest.digest()


SIZE, BIG_SEG = 8 * 1024 * 1024, 64 * 1024
# A few segments: the input chunk, one buffered and one or two emitted per side.
MEMORY_BOUND = 16 * BIG_SEG  # 1 MiB for an 8 MiB file


def test_encrypt_stream_memory_is_bounded_by_the_segment() -> None:
    sink = HashSink()
    tracemalloc.start()
    try:
        written = encrypt_stream(KEY, Generated(SIZE), sink, associated_data=AD, segment_size=BIG_SEG)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == sink.size == ciphertext_size(SIZE, BIG_SEG)
    assert peak < MEMORY_BOUND


def test_incremental_pipeline_memory_is_bounded_by_the_segment() -> None:
    """Encrypt chunks as they come and decrypt the ciphertext as it is produced."""
    source, sink = Generated(SIZE), HashSink()
    tracemalloc.start()
    try:
        encryptor = Encryptor(KEY, associated_data=AD, segment_size=BIG_SEG)
        decryptor = Decryptor(KEY, associated_data=AD)
        sink.write(decryptor.update(encryptor.header))
        while chunk := source.read(100_000):
            sink.write(decryptor.update(encryptor.update(chunk)))
        sink.write(decryptor.update(encryptor.finalize()))
        sink.write(decryptor.finalize())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.digest.digest() == generated_hash(SIZE)
    assert peak < MEMORY_BOUND


def test_decrypt_stream_memory_is_bounded_by_the_segment() -> None:
    encrypted = io.BytesIO()
    encrypt_stream(KEY, Generated(SIZE), encrypted, associated_data=AD, segment_size=BIG_SEG)  # type: ignore[arg-type]
    encrypted.seek(0)
    sink = HashSink()
    tracemalloc.start()
    try:
        assert decrypt_stream(KEY, encrypted, sink, associated_data=AD) == SIZE  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.digest.digest() == generated_hash(SIZE)
    assert peak < MEMORY_BOUND


# -- re-keying ------------------------------------------------------------------


def rekeyed(ct: bytes, *, chunk_size: int, plaintext_total: int, ciphertext_total: int | None = None) -> list[bytes]:
    return list(
        reencrypt(
            KEY,
            [ct],
            associated_data=AD,
            ciphertext_total=len(ct) if ciphertext_total is None else ciphertext_total,
            plaintext_total=plaintext_total,
            new_key=OTHER_KEY,
            new_associated_data=b"rekeyed",
            chunk_size=chunk_size,
        )
    )


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=400),
    seg=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 90), max_size=20),
    chunk_size=st.integers(1, 100),
)
def test_reencrypt_makes_a_fresh_stream_of_the_same_plaintext_in_whole_chunks(
    data: bytes, seg: int, cuts: list[int], chunk_size: int
) -> None:
    ct = encrypt_bytes(KEY, data, associated_data=AD, segment_size=seg)
    chunks = list(
        reencrypt(
            KEY,
            pieces(ct, cuts),
            associated_data=AD,
            ciphertext_total=len(ct),
            plaintext_total=len(data),
            new_key=OTHER_KEY,
            new_associated_data=b"rekeyed",
            chunk_size=chunk_size,
        )
    )
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= chunk_size
    assert all(type(chunk) is bytes for chunk in chunks)
    new = b"".join(chunks)
    assert len(new) == len(ct)
    new_header = StreamHeader.decode(new[:HEADER_SIZE])
    assert new_header.segment_size == seg
    assert new_header.nonce_prefix != StreamHeader.decode(ct[:HEADER_SIZE]).nonce_prefix
    assert decrypt_bytes(OTHER_KEY, new, associated_data=b"rekeyed") == data
    assert_all_fail(new)  # the old key and record no longer open it


def test_reencrypt_refuses_a_stream_that_disagrees_with_its_stored_sizes() -> None:
    ct = sample()
    with pytest.raises(CryptoError, match="holds 27, not 26"):
        rekeyed(ct, chunk_size=64, plaintext_total=len(STREAM_DATA) - 1)
    with pytest.raises(CryptoError, match="longer than its stored size"):
        rekeyed(ct + b"\x00" * 5, chunk_size=64, plaintext_total=len(STREAM_DATA), ciphertext_total=len(ct))
    with pytest.raises(CryptoError, match="truncated"):
        rekeyed(ct[:-3], chunk_size=64, plaintext_total=len(STREAM_DATA), ciphertext_total=len(ct))
    with pytest.raises(ValueError, match="chunk_size"):
        rekeyed(ct, chunk_size=0, plaintext_total=len(STREAM_DATA))


def test_reencrypt_hands_out_nothing_past_a_damaged_segment() -> None:
    ct = bytearray(sample())
    ct[HEADER_SIZE + 2 * (SEG + TAG_SIZE) + 1] ^= 0x01  # the third segment
    handed_out: list[bytes] = []
    chunks = reencrypt(
        KEY,
        [bytes(ct)],
        associated_data=AD,
        ciphertext_total=len(ct),
        plaintext_total=len(STREAM_DATA),
        new_key=OTHER_KEY,
        new_associated_data=b"rekeyed",
        chunk_size=SEG + TAG_SIZE,
    )
    with pytest.raises(CryptoError, match="segment 2"):
        handed_out.extend(chunks)
    # The header and the first two segments, authentic; never a byte sealed from the damaged one.
    assert len(b"".join(handed_out)) <= HEADER_SIZE + 2 * (SEG + TAG_SIZE)


def test_reencrypt_memory_is_bounded_by_the_chunk() -> None:
    encrypted = io.BytesIO()
    encrypt_stream(KEY, Generated(SIZE), encrypted, associated_data=AD, segment_size=BIG_SEG)  # type: ignore[arg-type]
    total = len(encrypted.getvalue())
    encrypted.seek(0)
    chunk_size = 256 * 1024
    sink = HashSink()
    tracemalloc.start()
    try:
        for chunk in reencrypt(
            KEY,
            iter(lambda: encrypted.read(chunk_size), b""),
            associated_data=AD,
            ciphertext_total=total,
            plaintext_total=SIZE,
            new_key=OTHER_KEY,
            new_associated_data=b"rekeyed",
            chunk_size=chunk_size,
        ):
            sink.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.size == total
    # Two pieces in (the one being read from, the next), the chunk being filled and the one handed
    # out, a segment of plaintext and one straddling two chunks: not the 8 MiB file.
    assert peak < 5 * chunk_size
