"""A clinician's draft is their working copy: saved as often as they like, signed exactly as
shown, never shown to the patient, and thrown away when they choose."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from chain.ledger_services import chain_seal
from records.keys import decrypt_content
from records.models import AccessEvent, MedicalRecord, RecordFile, RecordVersion
from records.policy import record_get_for_user
from tests.records.clinical.test_flow import ingest_all, prescription_post
from tests.records.conftest import login, png_bytes, upload_file

pytestmark = pytest.mark.django_db


def _new_prescription(client, carol, visit, **overrides):
    login(client, carol)
    response = client.post(
        reverse("clinic_record_new", args=[visit.public_id, "prescription"]), {**prescription_post(), **overrides}
    )
    assert response.status_code == 302, response.content
    return MedicalRecord.objects.get()


def _content(user, record) -> dict:
    access = record_get_for_user(user, record.public_id, quiet=True)
    return decrypt_content(access.dek, access.version)


def _with_blank_row(data: dict) -> dict:
    """What the edit page posts: the saved row plus the blank row it always offers."""
    return {
        **data,
        "medications-TOTAL_FORMS": "2",
        "medications-1-name": "",
        "medications-1-dose": "",
        "medications-1-route": "",
        "medications-1-frequency": "",
        "medications-1-duration": "",
    }


def test_a_prescription_draft_saves_again_with_the_blank_row_the_page_adds(client, carol, visit):
    record = _new_prescription(client, carol, visit)
    edit = reverse("record_edit", args=[record.public_id])
    page = client.get(edit).content.decode()
    assert 'name="medications-1-name"' in page  # the blank row is there to be ignored
    for text in ("second save", "third save"):
        response = client.post(edit, _with_blank_row({**prescription_post(), "instructions": text}))
        assert response.status_code == 302, response.content
        assert _content(carol, record)["instructions"] == text
        assert len(_content(carol, record)["medications"]) == 1


def test_a_half_filled_row_is_an_error_not_a_500(client, carol, visit):
    record = _new_prescription(client, carol, visit)
    data = _with_blank_row(prescription_post())
    data["medications-1-dose"] = "20 mg"  # a dose without a medication
    response = client.post(reverse("record_edit", args=[record.public_id]), data, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert "Nothing was saved" in response.content.decode()


def test_signing_signs_the_text_sent_with_it(client, carol, alice, visit):
    record = _new_prescription(client, carol, visit)
    shown = {**prescription_post(), "instructions": "typed just before signing"}
    response = client.post(reverse("record_finalize", args=[record.public_id]), _with_blank_row(shown))
    assert response.status_code == 302
    record.refresh_from_db()
    assert record.status == "final"
    assert _content(alice, record)["instructions"] == "typed just before signing"
    assert RecordVersion.objects.filter(record=record).count() == 1


def test_signing_with_invalid_text_signs_nothing(client, carol, visit):
    record = _new_prescription(client, carol, visit)
    response = client.post(reverse("record_finalize", args=[record.public_id]), {**prescription_post(), "title": ""})
    assert response.status_code == 400
    record.refresh_from_db()
    assert record.status == "draft"


def test_uploading_keeps_the_text_sent_with_the_file(client, carol, visit):
    record = _new_prescription(client, carol, visit)
    data = {
        **prescription_post(),
        "instructions": "typed, then a file chosen",
        "file": upload_file("a.png", png_bytes()),
    }
    response = client.post(reverse("record_file_upload", args=[record.public_id]), data)
    assert response.status_code == 302
    assert _content(carol, record)["instructions"] == "typed, then a file chosen"
    assert RecordFile.objects.filter(version__record=record).count() == 1


def test_the_patient_never_sees_a_clinicians_draft(client, carol, alice, visit):
    record = _new_prescription(client, carol, visit, title="Unsigned thought")
    client.logout()
    login(client, alice)
    home = client.get(reverse("patient_home"), HTTP_ACCEPT_LANGUAGE="en")
    assert str(record.public_id) not in home.content.decode()
    assert home.context["total"] == 0
    before = AccessEvent.objects.filter(patient=alice, outcome="denied").count()
    assert client.get(reverse("record_detail", args=[record.public_id])).status_code == 404
    # Not an attempt against her: nothing new in her footprint.
    assert AccessEvent.objects.filter(patient=alice, outcome="denied").count() == before
    footprint = client.get(reverse("patient_footprint"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Unsigned thought" not in footprint and str(record.public_id) not in footprint
    # Once signed, it is hers.
    client.logout()
    login(client, carol)
    client.post(reverse("record_finalize", args=[record.public_id]))
    client.logout()
    login(client, alice)
    assert str(record.public_id) in client.get(reverse("patient_home")).content.decode()


def test_the_author_discards_a_draft_and_its_files(client, carol, colleague, visit):
    record = _new_prescription(client, carol, visit)
    client.post(reverse("record_file_upload", args=[record.public_id]), {"file": upload_file("a.png", png_bytes())})
    ingest_all()
    discard = reverse("record_discard", args=[record.public_id])
    client.logout()
    login(client, colleague)
    assert client.post(discard).status_code in (302, 403, 409)  # a colleague is told it is not theirs
    assert MedicalRecord.objects.filter(pk=record.pk).exists()
    client.logout()
    login(client, carol)
    assert client.get(discard).status_code == 405
    response = client.post(discard)
    assert response.status_code == 302 and response["Location"] == reverse("clinic_visit", args=[visit.public_id])
    assert not MedicalRecord.objects.filter(pk=record.pk).exists()  # gone from every list
    kept = MedicalRecord.all_objects.get(pk=record.pk)  # the row stays for the audit trail
    assert kept.discarded_at is not None
    assert not RecordFile.objects.filter(version__record=kept).exists()
    assert all(not bytes(v.content_ciphertext) for v in RecordVersion.objects.filter(record=kept))
    assert AccessEvent.objects.filter(actor=carol, action="discard", record=kept).exists()
    assert client.get(reverse("record_detail", args=[record.public_id])).status_code == 404
    assert str(record.public_id) not in client.get(reverse("clinic_visit", args=[visit.public_id])).content.decode()


def test_a_signed_record_cannot_be_discarded(client, carol, visit):
    record = _new_prescription(client, carol, visit)
    client.post(reverse("record_finalize", args=[record.public_id]))
    response = client.post(reverse("record_discard", args=[record.public_id]))
    assert response.status_code in (302, 409)
    record.refresh_from_db()
    assert record.status == "final" and record.discarded_at is None


def _views(user, record) -> int:
    return AccessEvent.objects.filter(actor=user, record=record, action="view", outcome="allowed").count()


def test_one_page_visit_is_one_view_however_often_the_page_polls(client, carol, alice, visit):
    record = _new_prescription(client, carol, visit)
    client.post(reverse("record_finalize", args=[record.public_id]))
    client.logout()
    login(client, alice)
    detail = reverse("record_detail", args=[record.public_id])
    page = client.get(detail).content.decode()
    assert _views(alice, record) == 1
    token = re.search(r'data-page-visit="([^"]+)"', page).group(1)
    status = reverse("record_status", args=[record.public_id])
    for _ in range(5):
        assert client.get(status).json()["anchored"] is False
    ingest_all()
    chain_seal()
    assert client.get(status).json()["anchored"] is True
    client.get(f"{detail}?pv={token}")  # the reload that shows the anchor
    assert _views(alice, record) == 1
    # A token is the reader's own: someone else's is a new view for them, and so is a new visit.
    client.get(detail)
    assert _views(alice, record) == 2
    client.logout()
    login(client, carol)
    client.get(f"{detail}?pv={token}")
    assert _views(carol, record) == 1


def test_the_record_page_polls_until_anchored(client, carol, visit):
    record = _new_prescription(client, carol, visit)
    client.post(reverse("record_finalize", args=[record.public_id]))
    detail = reverse("record_detail", args=[record.public_id])
    assert "data-poll=" in client.get(detail).content.decode()
    ingest_all()  # stored, not yet in a block: keep polling
    assert "data-poll=" in client.get(detail).content.decode()
    chain_seal()
    assert "data-poll=" not in client.get(detail).content.decode()
