"""The API's uploads, access requests and break-glass: the portal's operations, the same refusals, the same records.

Alice is a patient; Dr Carol (North) treats her in an open visit; Dave is a
doctor at South; Erin a researcher; Bob another patient.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from chain.ledger_services import chain_seal
from records.models import AccessEvent, AccessRequest, BreakGlass, Grant, MedicalRecord, RecordFile
from tests.api.test_oauth import app, authorize, bearer, connect, consent, pkce, token  # noqa: F401  (app: a fixture)
from tests.api.test_rest_api import PROBLEM, api
from tests.factories import PASSWORD, UserFactory, enable_totp, totp_code
from tests.records.conftest import SENTINEL, login, pdf_bytes, upload_file

pytestmark = pytest.mark.django_db


def spool_files(settings) -> list[str]:
    spool = Path(settings.SPOOL_DIR)
    return sorted(os.listdir(spool)) if spool.exists() else []


def raw_upload(client, name: str, args, data: bytes, *, file_name: str = "scan.pdf", **headers):
    return client.post(
        reverse(name, args=args),
        data=data,
        content_type="application/octet-stream",
        HTTP_CONTENT_DISPOSITION=f"attachment; filename*=UTF-8''{file_name}",
        HTTP_ACCEPT_LANGUAGE="en",
        **headers,
    )


@pytest.fixture
def draft(client, alice, carol, visit):
    login(client, carol)
    made = api(
        client,
        "post",
        "api_records",
        data={"visit": str(visit.public_id), "kind": "note", "content": {"title": "Scan", "text": "See file."}},
    )
    assert made.status_code == 201, made.content
    client.logout()
    return MedicalRecord.objects.get(public_id=made.json()["id"])


# -- uploads ----------------------------------------------------------------------------------------
def test_a_clinician_attaches_files_to_a_draft_raw_or_as_a_form_then_signs(client, carol, draft, settings):
    login(client, carol)
    raw = raw_upload(client, "api_record_files", [draft.public_id], pdf_bytes(SENTINEL), file_name="ct%20report.pdf")
    assert raw.status_code == 201, raw.content
    assert raw.json()["files"] == [
        {"name": "ct report.pdf", "media_type": "application/pdf", "size": len(pdf_bytes(SENTINEL))}
    ]
    form = client.post(
        reverse("api_record_files", args=[draft.public_id]),
        {"file": [upload_file("a.pdf", pdf_bytes("one")), upload_file("b.pdf", pdf_bytes("two"))]},
        HTTP_ACCEPT_LANGUAGE="en",
    )
    assert form.status_code == 201, form.content
    assert [f["name"] for f in form.json()["files"]] == ["a.pdf", "b.pdf"]
    assert RecordFile.objects.filter(version__record=draft).count() == 3
    for name in spool_files(settings):  # encrypted at rest from the first byte
        assert SENTINEL.encode() not in (Path(settings.SPOOL_DIR) / name).read_bytes()
    signed = api(client, "post", "api_record_sign", draft.public_id)
    assert signed.status_code == 200, signed.content
    assert sorted(f["name"] for f in signed.json()["files"]) == ["a.pdf", "b.pdf", "ct report.pdf"]
    assert AccessEvent.objects.filter(record=draft, action="upload", client="api").exists()


def test_an_upload_that_is_refused_leaves_nothing(client, carol, draft, settings):
    login(client, carol)
    empty = raw_upload(client, "api_record_files", [draft.public_id], b"")
    assert empty.status_code == 400
    assert empty["Content-Type"] == PROBLEM
    exe = raw_upload(client, "api_record_files", [draft.public_id], b"MZ\x90\x00" + b"\x00" * 600, file_name="x.exe")
    assert exe.status_code == 415
    assert "not accepted" in exe.json()["detail"]
    settings.UPLOAD_MAX_BYTES = 1024
    big = raw_upload(client, "api_record_files", [draft.public_id], pdf_bytes("x" * 200_000))
    assert big.status_code == 413
    none = client.post(reverse("api_record_files", args=[draft.public_id]), {}, HTTP_ACCEPT_LANGUAGE="en")
    assert none.status_code == 400
    assert none.json()["errors"] == {"file": ["Choose a file to upload."]}
    assert not RecordFile.objects.exists()
    assert spool_files(settings) == []


def test_a_signed_record_takes_no_more_files(client, carol, draft, settings):
    login(client, carol)
    assert api(client, "post", "api_record_sign", draft.public_id).status_code == 200
    late = raw_upload(client, "api_record_files", [draft.public_id], pdf_bytes())
    assert late.status_code == 409
    assert spool_files(settings) == []


@pytest.mark.parametrize("who", ["alice", "bob", "dave", "erin", "hospital_admin"])
def test_nobody_but_the_author_attaches_files(request, client, draft, who, settings):
    login(client, request.getfixturevalue(who))
    answer = raw_upload(client, "api_record_files", [draft.public_id], pdf_bytes())
    assert answer.status_code in (403, 404, 409), (who, answer.status_code)
    assert answer["Content-Type"] == PROBLEM
    assert not RecordFile.objects.exists()
    assert spool_files(settings) == []


def test_a_session_upload_needs_its_csrf_token(carol, draft, settings):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(carol)
    form = strict.post(reverse("api_record_files", args=[draft.public_id]), {"file": upload_file("a.pdf", pdf_bytes())})
    assert form.status_code == 403
    raw = raw_upload(strict, "api_record_files", [draft.public_id], pdf_bytes())
    assert raw.status_code == 403
    assert not RecordFile.objects.exists()
    assert spool_files(settings) == []


def test_a_patient_uploads_her_own_document(client, alice, node, settings):
    login(client, alice)
    made = client.post(
        reverse("api_documents"),
        {
            "title": "Discharge letter",
            "description": "From the district hospital",
            "file": upload_file("l.pdf", pdf_bytes()),
        },
        HTTP_ACCEPT_LANGUAGE="en",
    )
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["kind"] == "document"
    assert body["content"]["title"] == "Discharge letter"
    assert [f["name"] for f in body["files"]] == ["l.pdf"]
    untitled = client.post(
        reverse("api_documents"), {"file": upload_file("l.pdf", pdf_bytes())}, HTTP_ACCEPT_LANGUAGE="en"
    )
    assert untitled.status_code == 400
    assert "title" in untitled.json()["errors"]
    assert MedicalRecord.objects.filter(patient=alice).count() == 1
    assert len(spool_files(settings)) == 1  # the stored document's; the refused one left nothing


def test_only_patients_upload_documents(client, carol, erin, node, settings):
    for who in (carol, erin):
        login(client, who)
        answer = client.post(
            reverse("api_documents"),
            {"title": "x", "file": upload_file("l.pdf", pdf_bytes())},
            HTTP_ACCEPT_LANGUAGE="en",
        )
        assert answer.status_code == 403
    assert not MedicalRecord.objects.exists()
    assert spool_files(settings) == []


# -- access requests ----------------------------------------------------------------------------------
def ask(client, patient: str = "alice@example.org", **extra):
    data = {"patient": patient, "scope": "all", "purpose": "treatment", "reason": "Referral for cardiology", "days": 30}
    return api(client, "post", "api_access_requests", data=data | extra)


def test_a_doctor_asks_and_the_patient_approves_through_the_api(client, alice, carol, dave, node):
    chain_seal()
    login(client, dave)
    asked = ask(client)
    assert asked.status_code == 201, asked.content
    assert asked.json()["patient"] is None  # not told who answers to it until she approves
    assert asked.json()["reason"] == "Referral for cardiology"
    request_id = asked.json()["id"]
    again = ask(client)
    assert again.status_code == 400
    client.logout()

    login(client, alice)
    listed = api(client, "get", "api_access_requests")
    assert [r["id"] for r in listed.json()["results"]] == [request_id]
    assert listed.json()["results"][0]["requester"] == dave.display_name
    approved = api(client, "post", "api_access_request_approve", request_id, data={"valid_until": "2099-01-01"})
    assert approved.status_code == 200, approved.content
    assert approved.json()["status"] == "approved"
    grant = Grant.objects.get(public_id=approved.json()["grant"])
    assert grant.grantee_user_id == dave.pk
    assert api(client, "post", "api_access_request_decline", request_id).status_code == 409
    client.logout()

    login(client, dave)
    mine = api(client, "get", "api_access_requests", **{"QUERY_STRING": "status=approved"})
    assert mine.json()["results"][0]["patient"]["name"] == alice.display_name


def test_declining_and_withdrawing(client, alice, carol, dave, node):
    chain_seal()
    login(client, dave)
    first = ask(client).json()["id"]
    assert api(client, "post", "api_access_request_withdraw", first).json()["status"] == "withdrawn"
    second = ask(client, reason="Second opinion").json()["id"]
    client.logout()
    login(client, alice)
    declined = api(client, "post", "api_access_request_decline", second)
    assert declined.json()["status"] == "declined"
    assert not Grant.objects.filter(grantee_user=dave).exists()


def test_a_request_for_nobody_looks_the_same_and_reaches_nobody(client, dave, node):
    login(client, dave)
    asked = ask(client, patient="nobody@example.org")
    assert asked.status_code == 201
    assert asked.json()["status"] == "pending"
    assert AccessRequest.objects.get().patient is None


def test_bad_requests_name_the_field(client, dave, node):
    login(client, dave)
    assert "kinds" in ask(client, scope="kinds").json()["errors"]
    assert "days" in ask(client, days=0).json()["errors"]
    assert "purpose" in ask(client, purpose="emergency").json()["errors"]
    # Longer than the schema's maxLength as sent, though not once the line break is trimmed.
    too_long = ask(client, patient="\r" + "a" * 254)
    assert too_long.status_code == 400
    assert too_long.json()["errors"]["patient"] == ["Ensure this field has no more than 254 characters."]
    bad_status = api(client, "get", "api_access_requests", QUERY_STRING="status=maybe")
    assert bad_status.status_code == 400
    assert not AccessRequest.objects.exists()


def test_only_the_patient_answers_and_only_the_asker_withdraws(client, alice, bob, carol, dave, erin, node):
    chain_seal()
    login(client, dave)
    request_id = ask(client).json()["id"]
    for who in (bob, carol, erin):
        client.logout()
        login(client, who)
        for name in ("api_access_request_approve", "api_access_request_decline", "api_access_request_withdraw"):
            answer = api(client, "post", name, request_id)
            assert answer.status_code in (403, 404), (who, name)
        assert request_id not in api(client, "get", "api_access_requests").content.decode()
    client.logout()
    login(client, alice)
    assert api(client, "post", "api_access_request_withdraw", request_id).status_code == 403
    assert AccessRequest.objects.get().status == "pending"
    assert not Grant.objects.exists()


def test_researchers_cannot_ask(client, erin, node):
    login(client, erin)
    assert ask(client).status_code == 403
    assert not AccessRequest.objects.exists()


def test_an_app_without_consent_scopes_cannot_answer(client, alice, dave, app, node):  # noqa: F811
    chain_seal()
    login(client, dave)
    request_id = ask(client).json()["id"]
    client.logout()
    reader = connect(client, alice, app, "patient/*.read")
    refused = bearer(client, "api_access_request_approve", reader, request_id, method="post")
    assert refused.status_code == 403
    writer = connect(client, alice, app, "patient/Consent.write patient/Consent.read")
    assert bearer(client, "api_access_requests", writer).status_code == 200
    assert bearer(client, "api_access_request_decline", writer, request_id, method="post").status_code == 200


# -- break-glass -----------------------------------------------------------------------------------
def emergency_open(client, **extra):
    data = {"patient": "alice@example.org", "reason": "unconscious", "detail": "Road accident", "hours": 2}
    return api(client, "post", "api_break_glass", data=data | {"credential": PASSWORD} | extra)


def test_break_glass_through_the_api_reauthenticates_and_is_in_the_footprint(client, alice, dave, node):
    chain_seal()
    login(client, dave)
    wrong = emergency_open(client, credential="not it")
    assert wrong.status_code == 403
    assert "credential" in wrong.json()["errors"]
    assert not BreakGlass.objects.exists()
    assert AccessEvent.objects.filter(actor=dave, action="break_glass", outcome="denied", patient=alice).exists()
    opened = emergency_open(client)
    assert opened.status_code == 201, opened.content
    assert opened.json()["patient"]["name"] == alice.display_name
    assert opened.json()["opened_tx"]
    assert opened.json()["released"] is True
    assert api(client, "get", "api_break_glass").json()["results"][0]["id"] == opened.json()["id"]


def test_break_glass_refuses_bad_input_and_other_roles(client, alice, bob, carol, erin, node):
    chain_seal()
    login(client, carol)
    assert "hours" in emergency_open(client, hours=13).json()["errors"]
    assert "reason" in emergency_open(client, reason="bored").json()["errors"]
    assert emergency_open(client, patient="nobody@example.org").status_code == 400
    for who in (alice, bob, erin):
        client.logout()
        login(client, who)
        assert emergency_open(client).status_code == 403
        assert api(client, "get", "api_break_glass").status_code == 403
    assert not BreakGlass.objects.exists()


def staff_token(client, user, app, scope: str) -> str:  # noqa: F811
    """A doctor's app token: signed in, re-authenticated a moment ago, consent given."""
    login(client, user)
    assert client.post(reverse("account_reauthenticate"), {"password": PASSWORD}).status_code == 302
    verifier, challenge = pkce()
    code = consent(client, authorize(client, app, scope, challenge=challenge))
    client.logout()
    return token(client, app, code, verifier).json()["access_token"]


def test_an_app_may_break_the_glass_only_with_an_authenticator_code(client, alice, other_hospital, app, node):  # noqa: F811
    fay = UserFactory(email="fay@example.org", role="clinician", institution=other_hospital, verified=True)
    secret = enable_totp(fay)
    chain_seal()
    access = staff_token(client, fay, app, "user/*.read user/*.write")
    data = {"patient": alice.email, "reason": "unconscious", "detail": "Road accident", "hours": 2}
    with_password = bearer(client, "api_break_glass", access, method="post", data=data | {"credential": PASSWORD})
    assert with_password.status_code == 400
    assert "authenticator" in with_password.json()["errors"]["credential"][0]
    assert not AccessEvent.objects.filter(action="break_glass").exists()  # not even tried: the app never had it
    with_code = bearer(client, "api_break_glass", access, method="post", data=data | {"credential": totp_code(secret)})
    assert with_code.status_code == 201, with_code.content
    reader = staff_token(client, fay, app, "user/*.read")
    refused = bearer(client, "api_break_glass", reader, method="post", data=data | {"credential": "123456"})
    assert refused.status_code == 403


def test_a_caller_not_signed_in_uploads_nothing(client, draft, node, settings):
    form = client.post(reverse("api_documents"), {"title": "x", "file": upload_file("l.pdf", pdf_bytes())})
    raw = raw_upload(client, "api_record_files", [draft.public_id], pdf_bytes())
    assert form.status_code in (401, 403)
    assert raw.status_code in (401, 403)
    assert spool_files(settings) == []


def test_an_app_uploads_a_document_only_with_a_write_scope(client, alice, app, node, settings):  # noqa: F811
    reader = connect(client, alice, app, "patient/*.read")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {reader}", "HTTP_ACCEPT_LANGUAGE": "en"}
    body = {"title": "Scan", "file": upload_file("l.pdf", pdf_bytes())}
    assert client.post(reverse("api_documents"), body, **headers).status_code == 403
    assert spool_files(settings) == []
    writer = connect(client, alice, app, "patient/DocumentReference.write patient/DocumentReference.read")
    headers["HTTP_AUTHORIZATION"] = f"Bearer {writer}"
    made = client.post(
        reverse("api_documents"), {"title": "Scan", "file": upload_file("l.pdf", pdf_bytes())}, **headers
    )
    assert made.status_code == 201, made.content
    assert AccessEvent.objects.filter(patient=alice, action="upload", client=f"app:{app.client_id}").exists()
