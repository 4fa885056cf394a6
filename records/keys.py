"""Record keys: version data keys sealed to recipients, file keys under the DEK.

A version's data key (DEK) is sealed with ``chain.core.crypto.seal_key`` to
each recipient's X25519 public key, with the version's associated data as the
context, so an envelope copied to another version does not open. A file key is
AES-256-GCM-wrapped under the DEK with the file's stream id as associated data.
Opening anything happens only after the access helper allowed the request.
"""

from __future__ import annotations

import json
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from accounts.keys import encryption_private_key
from chain.core import crypto, stream
from chain.core.errors import CryptoError
from records.models import RecordFile, RecordVersion, WrappedKey

_FILE_KEY_VERSION = b"\x01"
_MESSAGE_VERSION = b"\x01"


def seal_for(version: RecordVersion, dek: bytes, *, users=(), institutions=()) -> list[WrappedKey]:
    """Envelopes of ``dek`` for each user and institution (unsaved rows)."""
    context = version.associated_data()
    rows = []
    seen_users, seen_institutions = set(), set()
    for user in users:
        if user.pk in seen_users:
            continue
        seen_users.add(user.pk)
        envelope = crypto.seal_key(bytes(user.enc_public), dek, context=context)
        rows.append(WrappedKey(version=version, recipient_kind="user", user=user, envelope=envelope))
    for institution in institutions:
        if institution.pk in seen_institutions:
            continue
        seen_institutions.add(institution.pk)
        envelope = crypto.seal_key(bytes(institution.enc_public), dek, context=context)
        rows.append(
            WrappedKey(version=version, recipient_kind="institution", institution=institution, envelope=envelope)
        )
    return rows


def open_dek(version: RecordVersion, wrapped: WrappedKey) -> bytes:
    """Open ``wrapped`` with its recipient's private key (unwrapped by the node KEK)."""
    holder = wrapped.user if wrapped.user_id else wrapped.institution
    return open_dek_with(crypto.EnvelopeOpener(encryption_private_key(holder)), version, bytes(wrapped.envelope))


def open_dek_with(opener: crypto.EnvelopeOpener, version: RecordVersion, envelope: bytes) -> bytes:
    """Open a version's ``envelope`` with its recipient's key, already unwrapped and loaded
    (a list opens many envelopes of one holder)."""
    return opener.open(envelope, context=version.associated_data())


def wrap_file_key(dek: bytes, file_key: bytes, record_file: RecordFile) -> bytes:
    nonce = os.urandom(12)
    aad = _FILE_KEY_VERSION + record_file.stream_associated_data() + str(record_file.version.public_id).encode()
    return _FILE_KEY_VERSION + nonce + AESGCM(dek).encrypt(nonce, file_key, aad)


def unwrap_file_key(dek: bytes, record_file: RecordFile) -> bytes:
    blob = bytes(record_file.key_wrapped)
    if len(blob) < 1 + 12 + 16 or blob[:1] != _FILE_KEY_VERSION:
        raise CryptoError("malformed wrapped file key")
    aad = _FILE_KEY_VERSION + record_file.stream_associated_data() + str(record_file.version.public_id).encode()
    try:
        return AESGCM(dek).decrypt(blob[1:13], blob[13:], aad)
    except Exception:  # cryptography raises InvalidTag
        raise CryptoError("file key does not open under this version's data key") from None


def encrypt_content(dek: bytes, version: RecordVersion, content: dict) -> bytes:
    plaintext = json.dumps(content, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    return stream.encrypt_bytes(dek, plaintext, associated_data=version.associated_data())


def decrypt_content(dek: bytes, version: RecordVersion) -> dict:
    plaintext = stream.decrypt_bytes(dek, bytes(version.content_ciphertext), associated_data=version.associated_data())
    return json.loads(plaintext)


def seal_message(text: str, *, aad: bytes, recipients) -> tuple[bytes, list[bytes]]:
    """A short text (a reason between people) for a few readers: AES-256-GCM under a
    random key, the key sealed to each recipient's X25519 public key (``recipients``
    are key holders). Returns the ciphertext and one envelope per recipient, in order.
    """
    key = os.urandom(32)
    nonce = os.urandom(12)
    ciphertext = _MESSAGE_VERSION + nonce + AESGCM(key).encrypt(nonce, text.encode(), aad)
    envelopes = [crypto.seal_key(bytes(holder.enc_public), key, context=aad) for holder in recipients]
    return ciphertext, envelopes


def open_message(ciphertext: bytes, envelope: bytes, *, holder, aad: bytes) -> str:
    """Open ``seal_message``'s ciphertext with ``holder``'s envelope and private key."""
    key = crypto.open_key(encryption_private_key(holder), envelope, context=aad)
    if len(ciphertext) < 1 + 12 + 16 or ciphertext[:1] != _MESSAGE_VERSION:
        raise CryptoError("malformed sealed message")
    try:
        return AESGCM(key).decrypt(ciphertext[1:13], ciphertext[13:], aad).decode()
    except Exception:  # cryptography raises InvalidTag
        raise CryptoError("the sealed message does not open") from None
