"""Private keys are stored only wrapped by the node KEK."""

from __future__ import annotations

import base64
import os

import pytest
from django.db import connection

from accounts.keys import encryption_private_key, signing_private_key
from chain.core import crypto
from chain.core.errors import CryptoError
from chain.kek import forget_kek
from chain.services import node_identity, node_signing_key

pytestmark = pytest.mark.django_db


def database_dump() -> bytes:
    """Every value of every table, as raw bytes (works on SQLite and MariaDB)."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - our own table names
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    chunks.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\x00".join(chunks)


def test_every_user_and_institution_has_both_key_pairs(alice, hospital):
    for holder in (alice, hospital):
        assert len(bytes(holder.enc_public)) == 32
        assert len(bytes(holder.sign_public)) == 32
        assert crypto.x25519_public(encryption_private_key(holder)) == bytes(holder.enc_public)
        assert crypto.ed25519_public(signing_private_key(holder)) == bytes(holder.sign_public)


def test_private_keys_never_appear_unwrapped_in_the_database(alice, carol, hospital):
    node = node_identity()
    secrets = [
        encryption_private_key(alice),
        signing_private_key(alice),
        encryption_private_key(carol),
        signing_private_key(carol),
        encryption_private_key(hospital),
        signing_private_key(hospital),
        node_signing_key(node),
    ]
    dump = database_dump()
    for secret in secrets:
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in dump


def test_a_wrapped_key_moved_to_another_owner_fails(alice, bob):
    bob.enc_private_wrapped = alice.enc_private_wrapped
    with pytest.raises(CryptoError):
        encryption_private_key(bob)


def test_swapping_the_two_wrapped_keys_of_a_row_fails(alice):
    alice.enc_private_wrapped, alice.sign_private_wrapped = alice.sign_private_wrapped, alice.enc_private_wrapped
    with pytest.raises(CryptoError):
        encryption_private_key(alice)
    with pytest.raises(CryptoError):
        signing_private_key(alice)


def test_wrong_kek_fails_loudly(alice, tmp_path, settings):
    other = tmp_path / "other.kek"
    other.write_bytes(base64.b64encode(os.urandom(32)))
    other.chmod(0o600)
    settings.EMR_KEK_FILE = other
    forget_kek()
    try:
        with pytest.raises(CryptoError, match="EMR_KEK_FILE"):
            encryption_private_key(alice)
    finally:
        forget_kek()


def test_node_identity_is_made_once(db):
    first = node_identity()
    assert node_identity().pk == first.pk
    assert crypto.ed25519_public(node_signing_key(first)) == bytes(first.sign_public)
