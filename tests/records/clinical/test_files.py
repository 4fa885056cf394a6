"""Files as a viewer meets them: the type comes from DICOM's magic, previews exist when promised,
and a Range header the server cannot use is ignored, as RFC 9110 allows."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from django.urls import reverse

from chain.ledger_services import chain_seal
from records.clinical.uploads import sniff_media_type
from records.models import MedicalRecord, RecordFile
from tests.records.clinical.test_flow import ingest_all
from tests.records.conftest import dicom_bytes, login, pdf_bytes, upload_file

pytestmark = pytest.mark.django_db

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_files_with_a_tiff_preamble_are_dicom(name):
    head = (PYDICOM_FILES / name).read_bytes()[:132]
    assert head.startswith(b"II*\x00")  # the trap: a TIFF header in the preamble
    assert sniff_media_type(head) == "application/dicom"


def test_a_tiff_is_still_a_tiff():
    assert sniff_media_type(b"II*\x00" + bytes(200)) == "image/tiff"


def _imaging_record(client, carol, visit, files):
    login(client, carol)
    client.post(
        reverse("clinic_record_new", args=[visit.public_id, "imaging"]),
        {"title": "CT chest", "modality": "CT", "body_site": "Chest", "findings": "Clear"},
    )
    record = MedicalRecord.objects.get()
    response = client.post(
        reverse("record_file_upload", args=[record.public_id]), {"file": files}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200, response.content
    ingest_all()
    client.post(reverse("record_finalize", args=[record.public_id]))
    ingest_all()
    chain_seal()
    return record


def test_a_dicom_with_a_tiff_preamble_is_stored_as_dicom_and_previewed(client, carol, visit):
    data = dicom_bytes(preamble=b"II*\x00" + bytes(124))
    record = _imaging_record(client, carol, visit, [upload_file("ct.dcm", data)])
    stored = RecordFile.objects.get()
    assert stored.media_type == "application/dicom"
    preview_url = reverse("record_file_preview", args=[record.public_id, stored.public_id])
    assert preview_url in client.get(reverse("record_detail", args=[record.public_id])).content.decode()
    preview = client.get(preview_url)
    assert preview.status_code == 200 and preview["Content-Type"] == "image/png"


def test_a_dicom_without_an_image_asks_for_no_preview(client, carol, visit):
    record = _imaging_record(client, carol, visit, [upload_file("sr.dcm", dicom_bytes(pixels=False))])
    stored = RecordFile.objects.get()
    page = client.get(reverse("record_detail", args=[record.public_id]), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert reverse("record_file_preview", args=[record.public_id, stored.public_id]) not in page
    assert "No preview for this DICOM file" in page
    assert "BRAIN WO CONTRAST" in page  # its header fields are still shown


@pytest.mark.parametrize("header", ["garbage", "bytes=0-1,5-9", "bytes=9-2", "items=0-10", "bytes=-"])
def test_a_range_the_server_cannot_use_gets_the_whole_file(client, carol, visit, header):
    data = pdf_bytes("range")
    record = _imaging_record(client, carol, visit, [upload_file("report.pdf", data)])
    url = reverse("record_file", args=[record.public_id, RecordFile.objects.get().public_id])
    response = client.get(url, HTTP_RANGE=header)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    assert "Content-Range" not in response


def test_a_range_past_the_end_is_unsatisfiable(client, carol, visit):
    data = pdf_bytes("range")
    record = _imaging_record(client, carol, visit, [upload_file("report.pdf", data)])
    url = reverse("record_file", args=[record.public_id, RecordFile.objects.get().public_id])
    response = client.get(url, HTTP_RANGE=f"bytes={len(data) + 10}-")
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(data)}"


def test_a_file_not_yet_copied_to_this_node_shows_as_arriving_and_is_not_served_broken(client, carol, visit):
    # A record written at another node arrives (rows, content, keys) a few seconds before its files, which
    # the reconciler then fetches (docs/replication.md). Here: the record's blocks leave this node's store.
    from chain import dag_tasks
    from chain.stores import dag_writer

    record = _imaging_record(
        client, carol, visit, [upload_file("ct.dcm", dicom_bytes()), upload_file("report.pdf", pdf_bytes())]
    )
    store = dag_writer()
    for root, count in store.pins().items():
        for _ in range(count):
            store.unpin(root)
    dag_tasks.dag_gc.apply().get()

    page = client.get(reverse("record_detail", args=[record.public_id]), HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 200
    body = page.content.decode()
    assert body.count("Arriving from the institution that holds it") == 2
    assert "?download=1" not in body and "/preview/" not in body  # no link to bytes that are not here
    assert "data-poll=" in body  # the page looks again until they are
    status = client.get(reverse("record_status", args=[record.public_id])).json()
    assert [f["here"] for f in status["files"]] == [False, False]
    dicom, pdf = RecordFile.objects.order_by("position")
    for f in (dicom, pdf):
        response = client.get(
            reverse("record_file", args=[record.public_id, f.public_id]) + "?download=1", HTTP_ACCEPT_LANGUAGE="en"
        )
        assert response.status_code == 409 and response["Retry-After"] == "5"
        assert "still being copied to this node" in response.content.decode()
    preview = client.get(reverse("record_file_preview", args=[record.public_id, dicom.public_id]))
    assert preview.status_code == 404
