"""A grant to a doctor at another node: the grant, the card and the records go there; a revocation follows.

One database plays both nodes in turn: Alice's home (node-1) grants Dr Qian of
East Bay (node-2); then node-2, where Dr Qian is local and Alice a directory row,
receives the very message node-1 built.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import User
from chain.core import crypto, dagcbor
from chain.ledger_services import chain_seal
from records.consortium.deliveries import grants_revoked_on_chain, share_message, share_receive
from records.keys import decrypt_content
from records.ledger import grant_state_key
from records.models import AccessEvent, Delivery, Grant, MedicalRecord, RekeyJob, Visit
from records.sharing.grants import grant_issue, grant_revoke, grants_redrive
from tests.consortium import OtherNode, stored_note
from tests.records.conftest import SENTINEL

pytestmark = pytest.mark.django_db


@pytest.fixture
def shared(node, carol, alice):
    eastbay = OtherNode().join()
    doctor = User.objects.get(sign_public=eastbay.doctor.public)
    record = stored_note(carol, alice, text=SENTINEL)
    now = timezone.now()
    grant = grant_issue(
        patient=alice,
        grantee_user=doctor,
        scope="all",
        purpose="second_opinion",
        valid_from=now,
        valid_until=now + timedelta(days=30),
    )
    chain_seal()
    return {"eastbay": eastbay, "doctor": doctor, "record": record, "grant": grant}


def become_eastbay(alice, doctor) -> None:
    """This database now plays node-2: Dr Qian is ours, Alice a patient whose home is node-1."""
    User.objects.filter(pk=alice.pk).update(home_node="node-1")
    User.objects.filter(pk=doctor.pk).update(home_node="")
    RekeyJob.objects.all().delete()
    Grant.objects.all().delete()
    AccessEvent.objects.all().delete()
    MedicalRecord.all_objects.all().delete()
    Visit.objects.all().delete()


def test_the_grant_is_owed_to_the_grantees_node_with_the_records_sealed_to_the_grantee_only(shared, alice):
    delivery = Delivery.objects.get(grant=shared["grant"])
    assert delivery.node == "node-2" and delivery.version is None
    message = share_message(shared["grant"].pk, node="node-2")
    assert message["card"]["public_id"] == str(alice.public_id) and message["card"]["node"] == "node-1"
    assert message["grant"]["user"] == shared["eastbay"].doctor.public and not message["grant"]["revoked"]
    (record,) = message["records"]
    keys = record["versions"][0]["keys"]
    assert [bytes(k["user"]) for k in keys] == [shared["eastbay"].doctor.public]  # not Alice's, not the author's
    assert SENTINEL.encode() not in dagcbor.encode(message)


def test_the_grantees_node_takes_the_grant_and_its_doctor_opens_the_record(shared, alice):
    message = share_message(shared["grant"].pk, node="node-2")
    become_eastbay(alice, shared["doctor"])

    assert share_receive("node-1", message) == (200, {"stored": 1, "revoked": False})
    grant = Grant.objects.get()
    assert grant.public_id == shared["grant"].public_id and grant.grantee_user == shared["doctor"]
    assert grant.patient == alice and grant.status == "active" and grant.purpose == "second_opinion"
    record = MedicalRecord.objects.get()
    wrapped = record.current_version.wrapped_keys.get()
    dek = crypto.open_key(
        shared["eastbay"].doctor_enc.private, bytes(wrapped.envelope), context=record.current_version.associated_data()
    )
    assert decrypt_content(dek, record.current_version)["title"] == "Follow-up"
    assert share_receive("node-1", message)[0] == 200  # again: nothing new, nothing doubled
    assert MedicalRecord.objects.count() == 1 and Grant.objects.count() == 1


def test_only_the_patients_home_shares_and_only_a_grant_the_chain_holds(shared, alice, bob):
    message = share_message(shared["grant"].pk, node="node-2")
    become_eastbay(alice, shared["doctor"])

    assert share_receive("node-3", message)[0] == 403  # not Alice's home
    forged = {**message, "grant": {**message["grant"], "chain_id": b"\0" * 16}}
    assert share_receive("node-1", forged)[0] == 409  # no such grant on chain (yet)
    stolen = {**message, "card": {**message["card"], "sign_public": bytes(bob.sign_public)}}
    assert share_receive("node-1", stolen)[0] == 403  # the grant was issued by Alice's key, not Bob's
    elsewhere = {**message, "grant": {**message["grant"], "user": bytes(bob.sign_public)}}
    assert share_receive("node-1", elsewhere)[0] == 403
    assert not Grant.objects.exists() and not MedicalRecord.objects.exists()


def test_a_revocation_reaches_the_grantees_node_by_message_and_by_the_chain(shared, alice):
    grant_revoke(patient=alice, grant=shared["grant"])
    delivery = Delivery.objects.get(grant=shared["grant"])
    assert delivery.state == "pending"
    revoked = share_message(shared["grant"].pk, node="node-2")
    assert revoked["grant"]["revoked"] and revoked["records"] == []

    issued = {**revoked, "grant": {**revoked["grant"], "revoked": False}}  # as node-2 first heard of it
    become_eastbay(alice, shared["doctor"])
    assert share_receive("node-1", issued)[0] == 200  # the grant as first shared (no records: revoked since)
    assert Grant.objects.get().status == "active"
    chain_seal()  # the revocation is committed
    grants_revoked_on_chain([grant_state_key(bytes(shared["grant"].chain_id))])
    assert Grant.objects.get().status == "revoked"
    assert share_receive("node-1", revoked) == (200, {"stored": 0, "revoked": True})
    # Revoked here, but not this node's to put on chain: its redrive leaves it to the patient's home.
    assert grants_redrive() == 0
