"""Tests for chain.core.crypto: every way to open or verify wrongly must fail."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.core import crypto
from chain.core.errors import CryptoError

SIGNER = crypto.new_ed25519()
OTHER_SIGNER = crypto.new_ed25519()


def flip_bit(data: bytes, bit: int) -> bytes:
    index = bit // 8
    out = bytearray(data)
    out[index] ^= 1 << (bit % 8)
    return bytes(out)


# -- key pairs ----------------------------------------------------------------


def test_key_pairs_are_raw_32_bytes_and_fresh() -> None:
    for make in (crypto.new_x25519, crypto.new_ed25519):
        a, b = make(), make()
        assert len(a.private) == len(a.public) == 32
        assert a != b


def test_public_keys_derive_from_private() -> None:
    ed, x = crypto.new_ed25519(), crypto.new_x25519()
    assert crypto.ed25519_public(ed.private) == ed.public
    assert crypto.x25519_public(x.private) == x.public


def test_key_pair_repr_hides_the_private_key() -> None:
    pair = crypto.new_ed25519()
    assert pair.private.hex() not in repr(pair)
    assert pair.public.hex() in repr(pair)


def test_fingerprint_is_short_stable_hex() -> None:
    pair = crypto.new_ed25519()
    fp = crypto.key_fingerprint(pair.public)
    assert fp == crypto.key_fingerprint(pair.public)
    assert len(fp) == 16
    int(fp, 16)
    assert fp != crypto.key_fingerprint(crypto.new_ed25519().public)


# -- signatures ----------------------------------------------------------------


def test_sign_and_verify() -> None:
    signature = crypto.sign(SIGNER.private, b"message")
    assert len(signature) == 64
    crypto.verify(SIGNER.public, signature, b"message")


def test_wrong_public_key_fails() -> None:
    signature = crypto.sign(SIGNER.private, b"message")
    with pytest.raises(CryptoError, match="invalid signature"):
        crypto.verify(OTHER_SIGNER.public, signature, b"message")


@pytest.mark.parametrize("public", [b"", b"\x01" * 31, b"\x01" * 33])
def test_malformed_public_key_fails(public: bytes) -> None:
    signature = crypto.sign(SIGNER.private, b"m")
    with pytest.raises(CryptoError):
        crypto.verify(public, signature, b"m")


def test_truncated_signature_fails() -> None:
    signature = crypto.sign(SIGNER.private, b"m")
    with pytest.raises(CryptoError):
        crypto.verify(SIGNER.public, signature[:-1], b"m")


@settings(max_examples=60, deadline=None)
@given(message=st.binary(min_size=1, max_size=64), data=st.data())
def test_any_bit_flip_in_message_fails(message: bytes, data: st.DataObject) -> None:
    signature = crypto.sign(SIGNER.private, message)
    bit = data.draw(st.integers(0, len(message) * 8 - 1))
    assert not crypto.is_valid_signature(SIGNER.public, signature, flip_bit(message, bit))


@settings(max_examples=60, deadline=None)
@given(message=st.binary(max_size=64), bit=st.integers(0, 64 * 8 - 1))
def test_any_bit_flip_in_signature_fails(message: bytes, bit: int) -> None:
    signature = crypto.sign(SIGNER.private, message)
    with pytest.raises(CryptoError):
        crypto.verify(SIGNER.public, flip_bit(signature, bit), message)


def signed_items(count: int, *, tampered: int, wrong_signer: int) -> list[tuple[bytes, bytes, bytes]]:
    """``count`` good (public, signature, message) triples but two: a changed message, another signer's key."""
    items = []
    for i in range(count):
        message = f"m{i}".encode()
        items.append((SIGNER.public, crypto.sign(SIGNER.private, message), message))
    items[tampered] = (SIGNER.public, items[tampered][1], b"tampered")
    items[wrong_signer] = (OTHER_SIGNER.public, items[wrong_signer][1], items[wrong_signer][2])
    return items


@pytest.mark.parametrize("threads", [1, 2])
def test_verify_many_reports_each_item(threads: int) -> None:
    items = signed_items(100, tampered=7, wrong_signer=93)
    result = crypto.verify_many(items, threads=threads)
    assert [i for i, ok in enumerate(result) if not ok] == [7, 93]


def test_verify_many_in_processes_keeps_the_order_of_the_items() -> None:
    items = signed_items(50, tampered=3, wrong_signer=41)
    with crypto.signature_processes(2) as pool:
        parts = crypto.verify_many_in(pool, items, parts=3)
        result = [ok for part in parts for ok in part.result()]
    assert len(parts) == 3
    assert [i for i, ok in enumerate(result) if not ok] == [3, 41]


def test_signature_processes_run_below_their_parent_s_priority() -> None:
    import os

    with crypto.signature_processes(1) as pool:
        child = pool.submit(os.nice, 0).result()  # adds nothing: reads the niceness
    assert child == min(19, os.nice(0) + crypto.CHILD_NICENESS)


PARENT = """
import os, sys, time
from chain.core import crypto
if __name__ == "__main__":
    pool = crypto.signature_processes(2)
    pair = crypto.new_ed25519()
    signed = (pair.public, crypto.sign(pair.private, b"m"), b"m")
    assert all(ok for part in crypto.verify_many_in(pool, [signed] * 4, parts=2) for ok in part.result())
    print(" ".join(os.popen(f"pgrep -P {os.getpid()}").read().split()), flush=True)
    time.sleep(600)
"""


def test_signature_processes_end_when_their_parent_is_killed(tmp_path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    root = Path(__file__).resolve().parents[3]
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)}
    )
    children = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(children) >= 2  # the two signature processes (and spawn's resource tracker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while any(map(running, children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in children if running(pid)] == []


def running(pid: int) -> bool:
    """Alive and not a zombie (one that ended, waiting for a PID 1 that may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# -- private-key wrapping ------------------------------------------------------


def test_wrap_round_trip() -> None:
    kek, pair = crypto.new_kek(), crypto.new_x25519()
    blob = crypto.wrap_private_key(kek, pair.private, owner="user:42")
    assert blob[0] == 1
    assert len(blob) == 1 + 12 + 32 + 16
    assert pair.private not in blob
    assert crypto.unwrap_private_key(kek, blob, owner="user:42") == pair.private


def test_wrap_uses_a_fresh_nonce() -> None:
    kek, pair = crypto.new_kek(), crypto.new_x25519()
    one = crypto.wrap_private_key(kek, pair.private, owner="u")
    two = crypto.wrap_private_key(kek, pair.private, owner="u")
    assert one[1:13] != two[1:13]


def test_unwrap_with_wrong_kek_fails() -> None:
    blob = crypto.wrap_private_key(crypto.new_kek(), b"k" * 32, owner="u")
    with pytest.raises(CryptoError, match="wrong key-encryption key"):
        crypto.unwrap_private_key(crypto.new_kek(), blob, owner="u")


def test_unwrap_for_another_owner_fails() -> None:
    kek = crypto.new_kek()
    blob = crypto.wrap_private_key(kek, b"k" * 32, owner="user:1")
    with pytest.raises(CryptoError, match="wrong owner"):
        crypto.unwrap_private_key(kek, blob, owner="user:2")


def test_unwrap_rejects_other_versions_and_truncation() -> None:
    kek = crypto.new_kek()
    blob = crypto.wrap_private_key(kek, b"k" * 32, owner="u")
    with pytest.raises(CryptoError, match="version"):
        crypto.unwrap_private_key(kek, b"\x02" + blob[1:], owner="u")
    with pytest.raises(CryptoError, match="truncated"):
        crypto.unwrap_private_key(kek, blob[:20], owner="u")


def test_wrap_rejects_a_short_kek() -> None:
    with pytest.raises(CryptoError, match="32 bytes"):
        crypto.wrap_private_key(b"short", b"k" * 32, owner="u")


KEK = crypto.new_kek()
WRAPPED = crypto.wrap_private_key(KEK, b"p" * 32, owner="owner")


@settings(max_examples=80, deadline=None)
@given(bit=st.integers(0, len(WRAPPED) * 8 - 1))
def test_any_bit_flip_in_wrapped_key_fails(bit: int) -> None:
    with pytest.raises(CryptoError):
        crypto.unwrap_private_key(KEK, flip_bit(WRAPPED, bit), owner="owner")


# -- key envelopes --------------------------------------------------------------

RECIPIENT = crypto.new_x25519()
DEK = bytes(range(32))


def test_envelope_round_trip() -> None:
    envelope = crypto.seal_key(RECIPIENT.public, DEK, context=b"record:1/v1")
    assert envelope[0] == 1
    assert len(envelope) == 1 + 32 + 12 + 32 + 16
    assert crypto.open_key(RECIPIENT.private, envelope, context=b"record:1/v1") == DEK


def test_envelopes_are_randomised() -> None:
    one = crypto.seal_key(RECIPIENT.public, DEK, context=b"c")
    two = crypto.seal_key(RECIPIENT.public, DEK, context=b"c")
    assert one != two
    assert one[1:33] != two[1:33]


def test_envelope_for_another_recipient_fails() -> None:
    envelope = crypto.seal_key(RECIPIENT.public, DEK, context=b"c")
    with pytest.raises(CryptoError, match="not addressed to this key"):
        crypto.open_key(crypto.new_x25519().private, envelope, context=b"c")


def test_envelope_with_wrong_context_fails() -> None:
    envelope = crypto.seal_key(RECIPIENT.public, DEK, context=b"record:A")
    with pytest.raises(CryptoError, match="wrong context"):
        crypto.open_key(RECIPIENT.private, envelope, context=b"record:B")


def test_envelope_rejects_other_versions_and_truncation() -> None:
    envelope = crypto.seal_key(RECIPIENT.public, DEK, context=b"c")
    with pytest.raises(CryptoError, match="version"):
        crypto.open_key(RECIPIENT.private, b"\x09" + envelope[1:], context=b"c")
    with pytest.raises(CryptoError, match="truncated"):
        crypto.open_key(RECIPIENT.private, envelope[:40], context=b"c")


def test_envelope_rejects_a_low_order_ephemeral_key() -> None:
    envelope = crypto.seal_key(RECIPIENT.public, DEK, context=b"c")
    forged = envelope[:1] + bytes(32) + envelope[33:]
    with pytest.raises(CryptoError):
        crypto.open_key(RECIPIENT.private, forged, context=b"c")


def test_one_opener_opens_many_envelopes_and_refuses_what_open_key_refuses() -> None:
    keys = [bytes([n]) * 32 for n in range(5)]
    envelopes = [crypto.seal_key(RECIPIENT.public, key, context=f"record:{n}".encode()) for n, key in enumerate(keys)]
    opener = crypto.EnvelopeOpener(RECIPIENT.private)
    assert [opener.open(e, context=f"record:{n}".encode()) for n, e in enumerate(envelopes)] == keys
    with pytest.raises(CryptoError, match="wrong context"):
        opener.open(envelopes[0], context=b"record:1")
    with pytest.raises(CryptoError, match="not addressed to this key"):
        crypto.EnvelopeOpener(crypto.new_x25519().private).open(envelopes[0], context=b"record:0")
    with pytest.raises(CryptoError, match="32 bytes"):
        crypto.EnvelopeOpener(b"short")


ENVELOPE = crypto.seal_key(RECIPIENT.public, DEK, context=b"ctx")


@settings(max_examples=80, deadline=None)
@given(bit=st.integers(0, len(ENVELOPE) * 8 - 1))
def test_any_bit_flip_in_envelope_fails(bit: int) -> None:
    with pytest.raises(CryptoError):
        crypto.open_key(RECIPIENT.private, flip_bit(ENVELOPE, bit), context=b"ctx")
