"""A doctor writes records in a visit; the patient reads them; files round-trip."""

from __future__ import annotations

import pytest
from django.urls import reverse

from chain.ledger_services import chain_seal
from records.clinical import storage
from records.models import AccessEvent, MedicalRecord, RecordFile, RecordVersion
from tests.records.conftest import SENTINEL, dicom_bytes, login, pdf_bytes, png_bytes, upload_file

pytestmark = pytest.mark.django_db


def prescription_post(title=f"Amoxicillin {SENTINEL}"):
    return {
        "title": title,
        "instructions": "Take with food",
        "medications-TOTAL_FORMS": "1",
        "medications-INITIAL_FORMS": "0",
        "medications-MIN_NUM_FORMS": "0",
        "medications-MAX_NUM_FORMS": "30",
        "medications-0-name": "Amoxicillin",
        "medications-0-dose": "500 mg",
        "medications-0-route": "oral",
        "medications-0-frequency": "three times daily",
        "medications-0-duration": "7 days",
    }


def ingest_all():
    for record_file in RecordFile.objects.filter(status="spooled"):
        storage.file_ingest(record_file.pk)
    for version in RecordVersion.objects.filter(storage="pending"):
        storage.version_store(version.pk)


def test_doctor_writes_a_prescription_and_the_patient_reads_it(client, carol, alice, visit):
    login(client, carol)
    response = client.post(reverse("clinic_record_new", args=[visit.public_id, "prescription"]), prescription_post())
    assert response.status_code == 302, response.content
    record = MedicalRecord.objects.get()
    assert record.status == "draft"
    response = client.post(reverse("record_finalize", args=[record.public_id]))
    assert response.status_code == 302
    ingest_all()
    outcome = chain_seal()
    assert outcome is not None
    version = RecordVersion.objects.get()
    assert version.storage == "stored" and version.root_cid and version.anchor_tx
    client.logout()
    login(client, alice)
    page = client.get(reverse("patient_home"))
    assert SENTINEL in page.content.decode()
    detail = client.get(reverse("record_detail", args=[record.public_id]))
    body = detail.content.decode()
    assert "500 mg" in body and "three times daily" in body
    assert "Anchored in block" in body or "已锚定" in body or "区块" in body
    assert AccessEvent.objects.filter(actor=alice, record=record, action="view", outcome="allowed").exists()


def test_imaging_files_upload_store_and_download_with_ranges(client, carol, alice, visit):
    login(client, carol)
    response = client.post(
        reverse("clinic_record_new", args=[visit.public_id, "imaging"]),
        {"title": "MRI brain", "modality": "MR", "body_site": "Head", "findings": "Normal"},
    )
    record = MedicalRecord.objects.get()
    dicom = dicom_bytes()
    response = client.post(
        reverse("record_file_upload", args=[record.public_id]),
        {"file": [upload_file("brain.dcm", dicom), upload_file("report.pdf", pdf_bytes(SENTINEL))]},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["ok"]
    ingest_all()
    assert RecordFile.objects.filter(status="stored").count() == 2
    client.post(reverse("record_finalize", args=[record.public_id]))
    ingest_all()
    chain_seal()
    pdf = RecordFile.objects.get(media_type="application/pdf")
    url = reverse("record_file", args=[record.public_id, pdf.public_id])
    full = client.get(url)
    assert full.status_code == 200
    data = b"".join(full.streaming_content)
    assert data == pdf_bytes(SENTINEL)
    assert full["Content-Disposition"].startswith("inline")
    assert full["X-Content-Type-Options"] == "nosniff"
    ranged = client.get(url, HTTP_RANGE="bytes=5-20")
    assert ranged.status_code == 206
    assert b"".join(ranged.streaming_content) == pdf_bytes(SENTINEL)[5:21]
    assert ranged["Content-Range"] == f"bytes 5-20/{len(data)}"
    download = client.get(url + "?download=1")
    assert download["Content-Disposition"].startswith("attachment")
    dcm = RecordFile.objects.get(media_type="application/dicom")
    preview = client.get(reverse("record_file_preview", args=[record.public_id, dcm.public_id]))
    assert preview.status_code == 200 and preview["Content-Type"] == "image/png"
    detail = client.get(reverse("record_detail", args=[record.public_id]))
    assert "BRAIN WO CONTRAST" in detail.content.decode()
    assert "<dd>磁共振（MRI）</dd>" in detail.content.decode()  # what the form offered, not "MR"
    client.logout()
    login(client, alice)
    assert client.get(url).status_code == 200


def test_patient_uploads_a_document(client, alice, node):
    login(client, alice)
    response = client.post(
        reverse("patient_upload"),
        {"title": "Old X-ray report", "description": "from 2019", "file": upload_file("xray.png", png_bytes())},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["ok"]
    ingest_all()
    chain_seal()
    record = MedicalRecord.objects.get()
    assert record.kind == "document" and record.author == alice
    assert record.current_version.storage == "stored"
    page = client.get(reverse("patient_home"))
    assert "Old X-ray report" in page.content.decode()


def test_amendment_keeps_history_and_final_records_reject_edits(client, carol, alice, visit):
    login(client, carol)
    client.post(reverse("clinic_record_new", args=[visit.public_id, "note"]), {"title": "Note", "text": "first"})
    record = MedicalRecord.objects.get()
    client.post(reverse("record_finalize", args=[record.public_id]))
    ingest_all()
    chain_seal()
    response = client.post(reverse("record_edit", args=[record.public_id]), {"title": "Note", "text": "changed"})
    assert response.status_code == 302
    record.refresh_from_db()
    assert record.versions.count() == 1
    response = client.post(
        reverse("record_amend", args=[record.public_id]),
        {"title": "Note", "text": "corrected", "amendment_reason": "typo"},
    )
    assert response.status_code == 302, response.content
    ingest_all()
    chain_seal()
    record.refresh_from_db()
    assert record.status == "amended" and record.versions.count() == 2
    body = client.get(reverse("record_detail", args=[record.public_id])).content.decode()
    assert "corrected" in body and "typo" in body
    old = client.get(reverse("record_detail", args=[record.public_id]) + "?version=1").content.decode()
    assert "first" in old
    history = client.get(reverse("record_history", args=[record.public_id]))
    assert history.status_code == 200
    v1, v2 = record.versions.order_by("number")
    assert v1.root_cid != v2.root_cid and v2.anchor_tx


def test_raw_body_upload_with_fields_in_a_header(client, alice, node):
    """The browser's fast path: the file as the raw body, fields JSON-encoded in a header."""
    import json
    from urllib.parse import quote

    login(client, alice)
    response = client.post(
        reverse("patient_upload"),
        data=pdf_bytes("raw path"),
        content_type="application/octet-stream",
        HTTP_ACCEPT="application/json",
        HTTP_X_UPLOAD_NAME=quote("检查报告 2024.pdf"),
        HTTP_X_UPLOAD_FIELDS=quote(json.dumps({"title": "Lab letter 化验单", "description": ""})),
    )
    assert response.status_code == 200, response.content
    ingest_all()
    record = MedicalRecord.objects.get()
    body = client.get(reverse("record_detail", args=[record.public_id])).content.decode()
    assert "Lab letter 化验单" in body and "检查报告 2024.pdf" in body
    file = RecordFile.objects.get()
    data = b"".join(client.get(reverse("record_file", args=[record.public_id, file.public_id])).streaming_content)
    assert data == pdf_bytes("raw path")


def test_raw_body_upload_of_a_disallowed_type_is_refused(client, alice, node, settings):
    import os

    login(client, alice)
    response = client.post(
        reverse("patient_upload"),
        data=b"MZ" + b"\0" * 500,
        content_type="application/octet-stream",
        HTTP_ACCEPT="application/json",
        HTTP_X_UPLOAD_NAME="report.pdf",
        HTTP_X_UPLOAD_FIELDS="%7B%22title%22%3A%22x%22%7D",
    )
    assert response.status_code == 415
    assert not MedicalRecord.objects.exists()
    assert not os.listdir(settings.SPOOL_DIR)


def test_an_imported_modality_the_form_does_not_offer_is_shown_as_its_code(client, carol, alice, visit):
    from records.clinical.services import record_create, record_finalize_imported

    record = record_create(
        patient=alice,
        author=carol,
        kind="imaging",
        content={"title": "Chest film", "modality": "DX", "body_site": "Chest", "findings": "Clear"},
        visit=visit,
        imported=True,
    )
    record_finalize_imported(record=record)
    login(client, alice)
    body = client.get(reverse("record_detail", args=[record.public_id])).content.decode()
    assert "<dt>检查类型</dt><dd>DX</dd>" in body
