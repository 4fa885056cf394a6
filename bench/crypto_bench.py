"""Throughput of content encryption against the raw primitives.

Prints MB/s (10**6 bytes per second, median of ``--repeat`` runs) on ``--size-mib``
MiB of random data (default 256):

* raw AES-256-GCM: one call over the whole buffer, and one call per segment
  (the floor for any segmented format: no framing, no I/O);
* SHA-256 over the whole buffer (what the content store pays per byte);
* the stream (chain.core.stream): encrypt_stream / decrypt_stream between
  file-like objects (the upload/download path), Encryptor / Decryptor fed
  1 MiB chunks, encrypt_bytes / decrypt_bytes in memory, and a whole-file
  decrypt_range.

The streaming paths write to a sink that only counts, so they measure the
crypto and framing rather than the page faults of a 256 MiB output buffer;
the *_bytes paths do build their whole output and show that cost.

    .venv/bin/python bench/crypto_bench.py [--size-mib 256] [--segment 65536] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chain.core import stream

AD = b"bench/record/1"


class CountingSink:
    """A writable stream that keeps nothing."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def median_mbps(size: int, repeat: int, run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return size / statistics.median(times) / 1e6


def raw_gcm_segments(aead: AESGCM, data: memoryview, segment: int) -> None:
    nonce = bytes(12)  # benchmark only: a real nonce is never reused
    for pos in range(0, len(data), segment):
        aead.encrypt(nonce, data[pos : pos + segment], AD)


def feed(obj: stream.Encryptor | stream.Decryptor, data: memoryview, chunk: int) -> None:
    for pos in range(0, len(data), chunk):
        obj.update(data[pos : pos + chunk])
    obj.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="data size in MiB (default 256)")
    parser.add_argument("--segment", type=int, default=stream.DEFAULT_SEGMENT_SIZE, help="stream segment size")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median is printed")
    args = parser.parse_args()

    size, seg = args.size_mib * 1024 * 1024, args.segment
    key = stream.new_data_key()
    data = os.urandom(size)
    ct = stream.encrypt_bytes(key, data, associated_data=AD, segment_size=seg)
    assert stream.decrypt_bytes(key, ct, associated_data=AD) == data
    view, ct_view, aead = memoryview(data), memoryview(ct), AESGCM(key)

    def read_at(pos: int, n: int) -> bytes:
        return ct[pos : pos + n]

    def encrypt_stream() -> None:
        sink = CountingSink()
        stream.encrypt_stream(key, io.BytesIO(data), sink, associated_data=AD, segment_size=seg)  # type: ignore[arg-type]

    def decrypt_stream() -> None:
        stream.decrypt_stream(key, io.BytesIO(ct), CountingSink(), associated_data=AD)  # type: ignore[arg-type]

    def encrypt_bytes() -> None:
        stream.encrypt_bytes(key, data, associated_data=AD, segment_size=seg)

    def encryptor() -> None:
        feed(stream.Encryptor(key, associated_data=AD, segment_size=seg), view, 1 << 20)

    def decryptor() -> None:
        feed(stream.Decryptor(key, associated_data=AD), ct_view, 1 << 20)

    def decrypt_range() -> None:
        for _ in stream.decrypt_range(key, read_at, associated_data=AD, ciphertext_total=len(ct)):
            pass

    rows: list[tuple[str, Callable[[], Any]]] = [
        ("raw AES-256-GCM, one call", lambda: aead.encrypt(bytes(12), data, AD)),
        (f"raw AES-256-GCM, {seg} B calls", lambda: raw_gcm_segments(aead, view, seg)),
        ("SHA-256", lambda: hashlib.sha256(data).digest()),
        ("stream encrypt_stream", encrypt_stream),
        ("stream decrypt_stream", decrypt_stream),
        ("stream Encryptor.update, 1 MiB chunks", encryptor),
        ("stream Decryptor.update, 1 MiB chunks", decryptor),
        ("stream encrypt_bytes (builds output)", encrypt_bytes),
        ("stream decrypt_bytes (builds output)", lambda: stream.decrypt_bytes(key, ct, associated_data=AD)),
        ("stream decrypt_range, whole file", decrypt_range),
    ]
    print(f"{args.size_mib} MiB, segment {seg} B, median of {args.repeat}, cryptography {cryptography.__version__}")
    width = max(len(name) for name, _ in rows)
    for name, run in rows:
        print(f"  {name:<{width}}  {median_mbps(size, args.repeat, run):8.0f} MB/s")


if __name__ == "__main__":
    main()
