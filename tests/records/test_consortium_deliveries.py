"""A record written at one node for another node's patient is delivered to the patient's home node.

One database plays both nodes in turn: first the writing node (Alice's home is
node-2), then Alice's home (the writing hospital and its doctor are node-3's,
listed on chain), which receives the very message the first one built.
"""

from __future__ import annotations

import copy

import pytest
from django.utils import timezone

from accounts.directory import directory_publish
from accounts.models import Institution, User
from chain.core import dagcbor
from chain.ledger_services import chain_seal
from chain.models import Replica
from records.clinical import reading
from records.consortium.deliveries import deliveries_send, delivery_message, delivery_receive
from records.models import AccessEvent, CardCode, Delivery, MedicalRecord, Notification, Visit
from tests.consortium import stored_note
from tests.records.conftest import SENTINEL

pytestmark = pytest.mark.django_db
UNKNOWN_TX = "bafyreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


@pytest.fixture
def written_for_another_nodes_patient(node, carol, alice):
    User.objects.filter(pk=alice.pk).update(home_node="node-2")
    alice.refresh_from_db()
    record = stored_note(carol, alice, text=SENTINEL)
    version = record.current_version
    return record, version


def become_alices_home(settings, hospital, carol, alice) -> None:
    """This database now plays node-2: Alice is ours; the hospital and Dr Carol are node-3's."""
    User.objects.filter(pk=alice.pk).update(home_node="")
    for _step in ("the hospital lists itself as node-3's", "then its verified doctor"):
        settings.NODE_ID = "node-3"
        directory_publish()
        settings.NODE_ID = "node-1"  # the chain's one authority seals
        chain_seal()
    settings.NODE_ID = "node-2"
    Institution.objects.filter(pk=hospital.pk).update(home_node="node-3")
    User.objects.filter(pk=carol.pk).update(home_node="node-3")
    now = timezone.now()  # Alice gave her card to node-3 (records/consortium/cards.py)
    CardCode.objects.create(patient=alice, digest="-", expires_at=now, used_at=now, released_to_node="node-3")
    AccessEvent.objects.all().delete()
    MedicalRecord.all_objects.all().delete()
    Visit.objects.all().delete()


def test_the_record_is_owed_to_the_patients_home_and_the_message_holds_no_plaintext(written_for_another_nodes_patient):
    record, version = written_for_another_nodes_patient
    delivery = Delivery.objects.get()
    assert delivery.version == version and delivery.node == "node-2" and delivery.state == "pending"

    message = delivery_message(version.pk, node="node-2")
    encoded = dagcbor.encode(message)
    assert SENTINEL.encode() not in encoded and b"Follow-up" not in encoded
    keys = {bytes(k["user"]) for k in message["record"]["versions"][0]["keys"] if "user" in k}
    assert keys == {bytes(record.patient.sign_public)}  # the readers at node-2 only: the author's stays here
    assert not [k for k in message["record"]["versions"][0]["keys"] if "institution" in k]

    # Not a consortium here: the home node cannot be reached, and the delivery waits with a back-off.
    assert deliveries_send() == {"error": 1}
    delivery.refresh_from_db()
    assert delivery.state == "error" and delivery.attempts == 1 and delivery.next_try_at > delivery.created_at


def test_the_home_node_rebuilds_the_record_for_its_patient_who_alone_of_its_people_can_read_it(
    written_for_another_nodes_patient, settings, hospital, carol, alice, django_capture_on_commit_callbacks
):
    record, version = written_for_another_nodes_patient
    message = delivery_message(version.pk, node="node-2")
    become_alices_home(settings, hospital, carol, alice)

    with django_capture_on_commit_callbacks(execute=True):
        assert delivery_receive("node-3", message) == (200, {"stored": 1})
    arrived = MedicalRecord.objects.get()
    assert arrived.public_id == record.public_id and arrived.patient == alice
    assert arrived.author == carol and arrived.institution == hospital and arrived.visit.institution == hospital
    assert reading.titles_for(alice, [arrived.current_version]) == {arrived.current_version_id: "Follow-up"}
    assert Replica.objects.filter(cid=version.root_cid).exists()  # the patient's home holds the ciphertext too
    notice = Notification.objects.get(user=alice)
    assert notice.kind == Notification.Kind.RECORD_ARRIVED and notice.params["institution"] == hospital.code

    assert delivery_receive("node-3", message) == (200, {"stored": 0})  # delivered twice: nothing new
    assert MedicalRecord.objects.count() == 1 and Notification.objects.count() == 1


def test_the_home_node_believes_nothing_the_chain_does_not_say(
    written_for_another_nodes_patient, settings, hospital, carol, alice, bob
):
    _, version = written_for_another_nodes_patient
    message = delivery_message(version.pk, node="node-2")
    become_alices_home(settings, hospital, carol, alice)

    assert delivery_receive("node-4", message)[0] == 403  # the hospital is node-3's
    for change, status in [
        (lambda m: m["record"]["versions"][0].update(anchor_tx=UNKNOWN_TX), 409),
        (lambda m: m["record"]["versions"][0].update(root_cid=m["record"]["versions"][0]["root_cid"][:-2] + "aa"), 403),
        (lambda m: m["record"]["versions"][0].update(number=2), 403),
        (lambda m: m["record"].update(anchor_id=b"\0" * 16), 403),
        (lambda m: m.update(patient=bytes(bob.sign_public)), 403),  # Bob never gave node-3 his card
        (lambda m: m.update(patient=b"\1" * 32), 404),
        (lambda m: m["record"]["versions"][0].update(salt=b"\0" * 32), 403),
        (lambda m: m["record"].update(author=bytes(alice.sign_public)), 403),
        (lambda m: m["record"].pop("versions"), 400),
    ]:
        forged = copy.deepcopy(message)
        change(forged)
        assert delivery_receive("node-3", forged)[0] == status
    assert not MedicalRecord.all_objects.exists()
