"""Another node of the consortium, as this node's chain sees it: its institution and staff list themselves.

The keys are made here in the test but only their public halves reach this
node's database, exactly what a real other node publishes.
"""

from __future__ import annotations

import uuid

from accounts.directory import directory_sync
from accounts.ledger import INSTITUTION_LISTED, STAFF_LISTED, TYPE_NAME
from chain.core import crypto
from chain.ledger_services import chain_seal, tx_sign_and_submit


class OtherNode:
    """An institution and its doctor whose home is node-2: keys made there, only public ones reach us."""

    def __init__(self, code: str = "eastbay", node: str = "node-2") -> None:
        self.code = code
        self.node = node
        self.institution_id = str(uuid.uuid4())
        self.doctor_id = str(uuid.uuid4())
        self.institution = crypto.new_ed25519()
        self.institution_enc = crypto.new_x25519()
        self.doctor = crypto.new_ed25519()
        self.doctor_enc = crypto.new_x25519()

    def register(self) -> None:
        tx_sign_and_submit(
            private_key=self.institution.private,
            type=TYPE_NAME,
            payload={
                "kind": "institution",
                "enc_public": self.institution_enc.public,
                "sign_public": self.institution.public,
                "institution": self.code,
            },
        )
        tx_sign_and_submit(
            private_key=self.doctor.private,
            type=TYPE_NAME,
            payload={"kind": "user", "enc_public": self.doctor_enc.public, "sign_public": self.doctor.public},
        )
        chain_seal()

    def list_institution(self, *, signer: bytes | None = None, name: str = "东湾医院") -> None:
        payload = {
            "code": self.code,
            "id": self.institution_id,
            "kind": "hospital",
            "name": name,
            "name_en": "East Bay Hospital",
            "city": "宁波 Ningbo",
            "node": self.node,
        }
        tx_sign_and_submit(private_key=signer or self.institution.private, type=INSTITUTION_LISTED, payload=payload)

    def list_doctor(self, *, listed: bool = True, person: bytes | None = None) -> None:
        payload = {
            "person": person or self.doctor.public,
            "id": self.doctor_id,
            "role": "clinician",
            "name": "钱医生" if listed else "",
            "name_en": "Dr. Qian" if listed else "",
            "title": "心内科 Cardiology" if listed else "",
            "listed": listed,
        }
        tx_sign_and_submit(private_key=self.institution.private, type=STAFF_LISTED, payload=payload)

    def join(self) -> OtherNode:
        """Register the keys, list the institution, then its doctor, each committed."""
        self.register()
        self.list_institution()
        chain_seal()
        self.list_doctor()
        chain_seal()
        directory_sync()  # what the commit hook does after each block (a test transaction never commits)
        return self


def stored_note(doctor, patient, *, text: str):
    """A note ``doctor`` signed for ``patient`` ("Follow-up", ``text``), stored and anchored in a sealed block."""
    from records.clinical import storage
    from records.clinical.services import record_create, record_finalize_imported, visit_open

    visit = visit_open(clinician=doctor, patient=patient, imported=True)
    record = record_create(
        patient=patient,
        author=doctor,
        kind="note",
        content={"title": "Follow-up", "text": text},
        visit=visit,
        imported=True,
    )
    record_finalize_imported(record=record)
    assert storage.version_store(record.current_version_id) == "stored"
    chain_seal()
    record.refresh_from_db()
    return record
