"""Every record URL: another patient, an unrelated doctor, a doctor of another
institution and a researcher are denied (and audited); author and patient get in.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from records.clinical import storage
from records.clinical.services import record_create, visit_close
from records.models import AccessEvent, MedicalRecord, RecordFile, RecordVersion
from tests.records.conftest import login, pdf_bytes, upload_file

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored_record(client, carol, visit):
    """A final imaging record by Dr Carol with one stored PDF."""
    login(client, carol)
    client.post(
        reverse("clinic_record_new", args=[visit.public_id, "imaging"]),
        {"title": "CT chest", "modality": "CT", "body_site": "Chest", "findings": "Clear"},
    )
    record = MedicalRecord.objects.get()
    client.post(
        reverse("record_file_upload", args=[record.public_id]),
        {"file": upload_file("scan.pdf", pdf_bytes())},
        HTTP_ACCEPT="application/json",
    )
    for f in RecordFile.objects.filter(status="spooled"):
        storage.file_ingest(f.pk)
    client.post(reverse("record_finalize", args=[record.public_id]))
    client.logout()
    record.refresh_from_db()
    return record


def test_patients_do_not_see_a_clinicians_draft(client, carol, alice, visit):
    """A draft is the author's working copy: not in the timeline, its counts or the footprint's denials."""
    from records.models import AccessEvent

    record = record_create(patient=alice, author=carol, kind="note", content={"title": "wip", "text": "x"}, visit=visit)
    login(client, alice)
    home = client.get(reverse("patient_home"))
    assert str(record.public_id) not in home.content.decode()
    assert home.context["total"] == 0
    assert client.get(reverse("record_detail", args=[record.public_id])).status_code == 404
    attempt = AccessEvent.objects.get(actor=alice, record=record)
    assert attempt.outcome == "denied" and attempt.patient is None  # not a "denied attempt against you"


def urls(record):
    file = RecordFile.objects.filter(version__record=record).first()
    return {
        "detail": ("get", reverse("record_detail", args=[record.public_id])),
        "history": ("get", reverse("record_history", args=[record.public_id])),
        "status": ("get", reverse("record_status", args=[record.public_id])),
        "file": ("get", reverse("record_file", args=[record.public_id, file.public_id])),
        "download": ("get", reverse("record_file", args=[record.public_id, file.public_id]) + "?download=1"),
        "preview": ("get", reverse("record_file_preview", args=[record.public_id, file.public_id])),
        "amend": ("get", reverse("record_amend", args=[record.public_id])),
        "edit": ("get", reverse("record_edit", args=[record.public_id])),
        "upload": ("post", reverse("record_file_upload", args=[record.public_id])),
        "finalize": ("post", reverse("record_finalize", args=[record.public_id])),
    }


OUTSIDERS = ["bob", "dave", "erin", "hospital_admin"]


@pytest.mark.parametrize("outsider", OUTSIDERS)
def test_outsiders_are_denied_every_record_url_and_audited(client, request, stored_record, outsider, visit):
    user = request.getfixturevalue(outsider)
    login(client, user)
    for name, (method, url) in urls(stored_record).items():
        before = AccessEvent.objects.filter(actor=user, outcome="denied").count()
        response = getattr(client, method)(url)
        assert response.status_code == 403, (outsider, name, response.status_code)
        after = AccessEvent.objects.filter(actor=user, outcome="denied").count()
        # Clinician-only URLs turn other roles away at the role gate, before any
        # record is looked up; every other denial is an audit row.
        if name not in ("edit", "finalize") or user.role == "clinician":
            assert after > before, (outsider, name, "denial not audited")


def test_colleague_reads_during_the_open_visit_and_is_denied_after_it_closes(
    client, stored_record, colleague, carol, visit
):
    login(client, colleague)
    url = reverse("record_detail", args=[stored_record.public_id])
    assert client.get(url).status_code == 200
    visit_close(clinician=carol, visit=visit)
    assert client.get(url).status_code == 403
    assert AccessEvent.objects.filter(actor=colleague, record=stored_record, outcome="denied").exists()


def test_colleague_cannot_edit_the_authors_draft(client, colleague, carol, alice, visit):
    record = record_create(patient=alice, author=carol, kind="note", content={"title": "t", "text": "x"}, visit=visit)
    login(client, colleague)
    response = client.post(reverse("record_edit", args=[record.public_id]), {"title": "t", "text": "mine now"})
    assert response.status_code == 302
    assert response["Location"] == reverse("record_detail", args=[record.public_id])
    response = client.post(reverse("record_finalize", args=[record.public_id]))
    assert MedicalRecord.objects.get(pk=record.pk).status == "draft"


def test_author_and_patient_get_in(client, stored_record, carol, alice):
    for user in (carol, alice):
        login(client, user)
        for name, (method, url) in urls(stored_record).items():
            if method != "get" or name in ("preview", "edit", "amend"):
                continue
            response = client.get(url)
            assert response.status_code == 200, (user.email, name, response.status_code)
        client.logout()


def test_unknown_record_is_404_and_audited(client, carol, node):
    import uuid

    login(client, carol)
    response = client.get(reverse("record_detail", args=[uuid.uuid4()]))
    assert response.status_code == 404
    assert AccessEvent.objects.filter(actor=carol, outcome="denied", detail="unknown record").exists()


def test_unverified_doctor_is_denied_even_as_author(client, stored_record, carol):
    carol.verified_at = None
    carol.save(update_fields=["verified_at"])
    login(client, carol)
    assert client.get(reverse("record_detail", args=[stored_record.public_id])).status_code == 403


def test_anonymous_visitors_are_sent_to_sign_in(client, stored_record):
    response = client.get(reverse("record_detail", args=[stored_record.public_id]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_patient_timeline_runs_constant_queries(client, alice, carol, visit, django_assert_max_num_queries):
    for i in range(5):
        record_create(patient=alice, author=carol, kind="note", content={"title": f"n{i}", "text": "x"}, visit=visit)
    login(client, alice)
    with django_assert_max_num_queries(40) as small:
        assert client.get(reverse("patient_home")).status_code == 200
    for i in range(60):
        record_create(patient=alice, author=carol, kind="note", content={"title": f"m{i}", "text": "x"}, visit=visit)
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = client.get(reverse("patient_home"))
    assert response.status_code == 200


def test_clinic_chart_runs_constant_queries(client, alice, carol, visit, django_assert_max_num_queries):
    for i in range(3):
        record_create(patient=alice, author=carol, kind="note", content={"title": f"n{i}", "text": "x"}, visit=visit)
    login(client, carol)
    url = reverse("clinic_chart", args=[alice.public_id])
    with django_assert_max_num_queries(40) as small:
        assert client.get(url).status_code == 200
    for i in range(60):
        record_create(patient=alice, author=carol, kind="note", content={"title": f"m{i}", "text": "x"}, visit=visit)
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = client.get(url)
    assert response.status_code == 200
    assert 'class="timeline-title">m59</strong>' in response.content.decode()
    with django_assert_max_num_queries(40) as dash:
        assert client.get(reverse("clinic_home")).status_code == 200
    assert len(dash.captured_queries) < 40


def test_version_rows_hold_no_plaintext(alice, carol, visit):
    record = record_create(
        patient=alice, author=carol, kind="note", content={"title": "Hypertension", "text": "BP"}, visit=visit
    )
    version = RecordVersion.objects.get(record=record)
    assert b"Hypertension" not in bytes(version.content_ciphertext)
