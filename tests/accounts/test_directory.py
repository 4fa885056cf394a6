"""The consortium directory: institutions and staff listed on chain, other nodes' rows projected here."""

from __future__ import annotations

import pytest

from accounts import directory
from accounts.ledger import INSTITUTION_LISTED, STAFF_LISTED
from accounts.models import Institution, ListedInstitution, ListedStaff, User
from accounts.services import doctors_find, staff_unverify, staff_verify
from chain.core import crypto
from chain.ledger_services import TxRejected, chain_seal, tx_sign_and_submit
from chain.models import MempoolEntry
from tests.consortium import OtherNode
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_doctor_of_another_node_becomes_a_directory_row_without_password_or_private_key(node, alice):
    other = OtherNode()
    other.register()
    other.list_institution()
    chain_seal()
    other.list_doctor()
    chain_seal()

    institution = Institution.objects.get(code="eastbay")
    assert institution.home_node == "node-2" and institution.is_remote
    assert bytes(institution.sign_public) == other.institution.public
    assert bytes(institution.enc_public) == other.institution_enc.public
    assert bytes(institution.enc_private_wrapped) == b"" and bytes(institution.sign_private_wrapped) == b""
    doctor = User.objects.get(sign_public=other.doctor.public)
    assert doctor.home_node == "node-2" and doctor.institution == institution
    # The same public ids as at home: an access event names people and institutions by them.
    assert str(doctor.public_id) == other.doctor_id and str(institution.public_id) == other.institution_id
    assert doctor.is_verified_staff and doctor.staff_title == "心内科 Cardiology"
    assert bytes(doctor.enc_public) == other.doctor_enc.public
    assert bytes(doctor.enc_private_wrapped) == b"" and not doctor.has_usable_password()
    assert doctor.email.endswith("@" + directory.REMOTE_EMAIL_DOMAIN)
    # A patient here finds them as any doctor, by name or by their hospital.
    assert doctor in doctors_find("钱") and doctor in doctors_find("East Bay")

    other.list_doctor(listed=False)
    chain_seal()
    doctor.refresh_from_db()
    assert not doctor.is_active and not doctor.is_verified_staff
    assert doctor not in doctors_find("钱")


def test_the_chain_refuses_listings_that_are_not_the_institutions_own(node):
    other = OtherNode()
    other.register()
    intruder = OtherNode("intruder")
    intruder.register()
    with pytest.raises(TxRejected, match="code its key was registered with"):
        tx_sign_and_submit(
            private_key=intruder.institution.private,
            type=INSTITUTION_LISTED,
            payload={
                "code": "eastbay",
                "id": intruder.institution_id,
                "kind": "hospital",
                "name": "x",
                "name_en": "",
                "city": "",
                "node": "node-9",
            },
        )
    with pytest.raises(TxRejected, match="registered key lists"):
        other.list_institution(signer=other.doctor.private)
    with pytest.raises(TxRejected, match="lists itself before it lists staff"):
        other.list_doctor()
    other.list_institution()
    chain_seal()
    with pytest.raises(TxRejected, match="registered person"):
        other.list_doctor(person=crypto.new_ed25519().public)
    other.list_doctor()
    chain_seal()
    intruder.list_institution()
    chain_seal()
    with pytest.raises(TxRejected, match="staff of another institution"):
        tx_sign_and_submit(
            private_key=intruder.institution.private,
            type=STAFF_LISTED,
            payload={
                "person": other.doctor.public,
                "id": other.doctor_id,
                "role": "clinician",
                "name": "x",
                "name_en": "",
                "title": "",
                "listed": True,
            },
        )


def test_this_nodes_institution_and_verified_staff_are_published_once_the_chain_holds_their_keys(
    node, hospital, hospital_admin
):
    doctor = UserFactory(email="newdoc@example.org", role="clinician", institution=hospital, name="新医生")
    # Nothing can be listed before the keys are on chain.
    assert directory.directory_publish() == 0
    chain_seal()
    assert directory.directory_publish() == 1  # the institution
    assert MempoolEntry.objects.filter(type=INSTITUTION_LISTED).count() == 1
    chain_seal()
    assert directory.directory_publish() == 1  # its admin (verified); the new doctor is not yet
    chain_seal()
    assert ListedInstitution.objects.get(code="north").node == "node-1"
    assert ListedStaff.objects.get(sign_public=bytes(hospital_admin.sign_public).hex()).listed
    assert not ListedStaff.objects.filter(sign_public=bytes(doctor.sign_public).hex()).exists()
    assert directory.directory_publish() == 0  # nothing owed

    staff_verify(verifier=hospital_admin, member=doctor)  # publishes at once
    chain_seal()
    listed = ListedStaff.objects.get(sign_public=bytes(doctor.sign_public).hex())
    assert listed.listed and listed.name == "新医生" and listed.institution_code == "north"
    staff_unverify(verifier=hospital_admin, member=doctor)
    chain_seal()
    listed.refresh_from_db()
    assert not listed.listed and listed.name == ""
    # This node's own rows are the originals: the projection never turns them into directory rows.
    doctor.refresh_from_db()
    hospital.refresh_from_db()
    assert doctor.home_node == "" and hospital.home_node == "" and doctor.has_usable_password()
