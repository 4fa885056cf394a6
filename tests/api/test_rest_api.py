"""The REST API: what each role may do, the access matrix, problem details, the footprint marks, the schema.

Alice's world, as the portal's URL matrix: an imaging record with a PDF by
Dr Carol (North), a grant to Carol. Outsiders: Bob (another patient), Dave (a
doctor at South, no grant), Erin (a researcher), North's administrator.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from chain.ledger_services import chain_seal
from records.models import AccessEvent, Grant, RecordFile
from records.sharing.grants import grant_issue
from tests.conftest import loaded_from_elsewhere
from tests.records.conftest import login
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


@pytest.fixture
def world(request, alice, carol, visit):
    record = request.getfixturevalue("stored_record")
    chain_seal()
    grant = grant_issue(
        patient=alice,
        grantee_user=carol,
        scope="all",
        purpose="treatment",
        valid_from=timezone.now() - timedelta(minutes=1),
        valid_until=timezone.now() + timedelta(days=30),
    )
    pdf = RecordFile.objects.get(version__record=record)
    return {"record": record, "grant": grant, "file": pdf}


def api(client, method: str, name: str, *args, data=None, **headers):
    url = reverse(name, args=args)
    call = getattr(client, method)
    if method == "post":
        return call(url, data=data or {}, content_type="application/json", HTTP_ACCEPT_LANGUAGE="en", **headers)
    return call(url, HTTP_ACCEPT_LANGUAGE="en", **headers)


def alice_urls(world) -> list[tuple[str, str, tuple]]:
    record, grant, pdf = world["record"], world["grant"], world["file"]
    return [
        ("get", "api_record", (record.public_id,)),
        ("get", "api_record_file", (record.public_id, pdf.public_id)),
        ("post", "api_grant_revoke", (grant.public_id,)),
    ]


# -- the patient ------------------------------------------------------------------------------------
def test_a_patient_lists_and_reads_her_records_and_each_read_is_marked_as_the_apis(client, alice, world):
    login(client, alice)
    listed = api(client, "get", "api_records")
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["results"]] == [str(world["record"].public_id)]
    detail = api(client, "get", "api_record", world["record"].public_id)
    assert detail.status_code == 200
    body = detail.json()
    assert body["content"]["title"] == "CT chest"
    assert body["basis"] == "patient"
    assert body["files"][0]["name"] == "scan.pdf"
    assert "anchor" in body  # None until the version is anchored
    event = AccessEvent.objects.filter(actor=alice, record=world["record"], action="view").latest("at")
    assert event.client == "api"


def test_a_file_is_sent_whole_or_by_range_and_the_download_is_in_the_footprint(client, alice, world):
    login(client, alice)
    record, pdf = world["record"], world["file"]
    whole = api(client, "get", "api_record_file", record.public_id, pdf.public_id)
    assert whole.status_code == 200
    data = b"".join(whole.streaming_content)
    assert data.startswith(b"%PDF")
    part = api(client, "get", "api_record_file", record.public_id, pdf.public_id, HTTP_RANGE="bytes=0-3")
    assert part.status_code == 206
    assert b"".join(part.streaming_content) == b"%PDF"
    assert AccessEvent.objects.filter(actor=alice, action="download", client="api").count() == 2


def test_a_patient_grants_and_revokes_through_the_api(client, alice, dave, world):
    login(client, alice)
    until = (timezone.now() + timedelta(days=7)).isoformat()
    made = api(
        client,
        "post",
        "api_grants",
        data={
            "grantee_user": str(dave.public_id),
            "scope": "kinds",
            "kinds": ["imaging"],
            "purpose": "treatment",
            "valid_until": until,
        },
    )
    assert made.status_code == 201, made.content
    grant = made.json()
    assert grant["grantee"]["name"] == dave.display_name
    assert grant["kinds"] == ["imaging"]
    assert grant["issued_tx"]
    listed = api(client, "get", "api_grants")
    assert {g["id"] for g in listed.json()["results"]} == {grant["id"], str(world["grant"].public_id)}
    revoked = api(client, "post", "api_grant_revoke", grant["id"])
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    again = api(client, "post", "api_grant_revoke", grant["id"])
    assert again.status_code == 409
    assert again["Content-Type"] == PROBLEM


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scope": "everything"}, "scope"),
        ({"valid_until": "tomorrow"}, "valid_until"),
        ({"grantee_user": "00000000-0000-0000-0000-000000000000"}, "grantee_user"),
        ({"scope": "kinds", "kinds": []}, "__all__"),
        ({"valid_until": "2001-01-01T00:00:00Z"}, "__all__"),
    ],
)
def test_a_bad_grant_is_refused_as_a_problem_naming_the_field_and_nothing_is_written(
    client, alice, dave, world, change, field
):
    login(client, alice)
    data = {
        "grantee_user": str(dave.public_id),
        "scope": "all",
        "purpose": "treatment",
        "valid_until": (timezone.now() + timedelta(days=7)).isoformat(),
    } | change
    before = Grant.objects.count()
    refused = api(client, "post", "api_grants", data=data)
    assert refused.status_code == 400
    assert refused["Content-Type"] == PROBLEM
    body = refused.json()
    assert body["status"] == 400
    assert body["title"] == "The request is not valid."
    assert field in body["errors"] or (field == "__all__" and body["errors"])
    assert Grant.objects.count() == before


def test_problems_speak_the_callers_language(client, bob, world):
    login(client, bob)
    refused = client.get(reverse("api_record", args=[world["record"].public_id]), HTTP_ACCEPT_LANGUAGE="zh-Hans")
    assert refused.status_code == 403
    assert refused["Content-Type"] == PROBLEM
    assert refused.json()["title"] != "You may not do this. The attempt has been recorded."
    assert any("\u4e00" <= ch <= "\u9fff" for ch in refused.json()["title"])


def test_the_footprint_lists_reads_with_proofs_and_the_app_that_made_them(client, alice, carol, world):
    login(client, carol)
    assert api(client, "get", "api_record", world["record"].public_id).status_code == 200
    client.logout()
    login(client, alice)
    listed = api(client, "get", "api_footprint")
    assert listed.status_code == 200
    reads = [e for e in listed.json()["results"] if e["actor"] == carol.display_name and e["action"] == "view"]
    assert reads
    assert reads[0]["client"] == "api"
    assert reads[0]["chain"]["state"] in ("unlogged", "pending", "verified")
    page = client.get(reverse("patient_footprint"), HTTP_ACCEPT_LANGUAGE="en")
    assert "Through the Yilian API" in page.content.decode()
    bad = api(client, "get", "api_footprint", QUERY_STRING="from=yesterday")
    assert bad.status_code == 400
    assert "from" in bad.json()["errors"]


# -- the clinician ----------------------------------------------------------------------------------
def test_a_granted_doctor_sees_what_is_shared_and_reads_it(client, carol, world):
    login(client, carol)
    shared = api(client, "get", "api_shared_with_me")
    assert [g["grant"] for g in shared.json()["results"]] == [str(world["grant"].public_id)]
    listed = api(client, "get", "api_records")
    assert [r["id"] for r in listed.json()["results"]] == [str(world["record"].public_id)]
    assert api(client, "get", "api_record", world["record"].public_id).status_code == 200


# -- the access matrix -------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["bob", "dave", "erin", "hospital_admin"])
def test_nobody_else_reaches_alices_data_and_every_attempt_is_recorded(request, client, world, who):
    outsider = request.getfixturevalue(who)
    login(client, outsider)
    for method, name, args in alice_urls(world):
        before = AccessEvent.objects.filter(outcome="denied").count()
        answer = api(client, method, name, *args)
        assert answer.status_code in (403, 404), (who, name, answer.status_code)
        assert answer["Content-Type"] == PROBLEM
        assert "CT chest" not in answer.content.decode()
        if name != "api_grant_revoke" and who in ("bob", "dave"):
            assert AccessEvent.objects.filter(outcome="denied").count() == before + 1
    for name in ("api_records", "api_footprint", "api_grants"):
        answer = api(client, "get", name)
        assert answer.status_code in (200, 403)
        assert "CT chest" not in answer.content.decode()
        assert str(world["record"].public_id) not in answer.content.decode()


@pytest.mark.parametrize("name", ["api_me", "api_records", "api_footprint", "api_grants", "api_notifications"])
def test_a_caller_not_signed_in_gets_401_or_403_as_a_problem(client, name):
    answer = api(client, "get", name)
    assert answer.status_code in (401, 403)
    assert answer["Content-Type"] == PROBLEM


def test_a_session_post_without_its_csrf_token_is_refused(alice, world):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    answer = strict.post(reverse("api_grant_revoke", args=[world["grant"].public_id]), content_type="application/json")
    assert answer.status_code == 403
    world["grant"].refresh_from_db()
    assert world["grant"].status == "active"


def test_the_record_list_takes_a_constant_number_of_queries(client, alice, carol, world, django_assert_max_num_queries):
    from records.clinical.services import record_create

    for i in range(10):
        record_create(patient=alice, author=alice, kind="document", content={"title": f"doc {i}", "files": []})
    login(client, alice)
    with django_assert_max_num_queries(8):
        answer = api(client, "get", "api_records")
    assert len(answer.json()["results"]) == 11


# -- the schema and its pages ----------------------------------------------------------------------
def test_the_schema_validates_without_warnings(capsys):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")


def test_the_api_documentation_is_served_from_this_node(client, alice):
    login(client, alice)
    docs = client.get(reverse("api_docs"))
    assert docs.status_code == 200
    assert loaded_from_elsewhere(docs.content.decode()) == []
    assert client.get(reverse("api_redoc")).status_code == 200
    assert client.get(reverse("api_schema")).status_code == 200


# -- the clinician writes ---------------------------------------------------------------------------------
def note(title: str = "Follow-up", text: str = "Doing well.") -> dict:
    return {"title": title, "text": text}


def test_a_clinician_opens_a_visit_writes_signs_and_amends_through_the_api(client, alice, carol, node):
    from records.models import MedicalRecord

    login(client, carol)
    visit = api(client, "post", "api_visits", data={"patient": alice.email, "kind": "outpatient"})
    assert visit.status_code == 201, visit.content
    visit_id = visit.json()["id"]
    made = api(client, "post", "api_records", data={"visit": visit_id, "kind": "note", "content": note()})
    assert made.status_code == 201, made.content
    record_id = made.json()["id"]
    etag = made["ETag"]
    assert made.json()["status"] == "draft"

    changed = client.patch(
        reverse("api_record", args=[record_id]),
        data={"content": note(text="Better.")},
        content_type="application/json",
        HTTP_IF_MATCH=etag,
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["content"]["text"] == "Better."
    stale = client.patch(
        reverse("api_record", args=[record_id]),
        data={"content": note(text="Lost update")},
        content_type="application/json",
        HTTP_IF_MATCH=etag,
        HTTP_ACCEPT_LANGUAGE="en",
    )
    assert stale.status_code == 412
    assert stale["Content-Type"] == PROBLEM

    signed = api(client, "post", "api_record_sign", record_id, HTTP_IF_MATCH=changed["ETag"])
    assert signed.status_code == 200, signed.content
    assert signed.json()["status"] == "final"
    again = api(client, "post", "api_record_sign", record_id)
    assert again.status_code == 409

    amend = {"content": note(text="Corrected."), "reason": "Typo"}
    missing = api(client, "post", "api_record_amend", record_id, data=amend)
    assert missing.status_code == 428
    old = api(client, "post", "api_record_amend", record_id, data=amend, HTTP_IF_MATCH=etag)
    assert old.status_code == 412
    amended = api(client, "post", "api_record_amend", record_id, data=amend, HTTP_IF_MATCH=signed["ETag"])
    assert amended.status_code == 200, amended.content
    assert amended.json()["shown_version"] == 2
    assert amended.json()["content"]["text"] == "Corrected."
    assert MedicalRecord.objects.get(public_id=record_id).versions.count() == 2
    closed = api(client, "post", "api_visit_close", visit_id)
    assert closed.json()["status"] == "closed"


def test_invalid_content_names_each_field_and_writes_nothing(client, alice, carol, visit):
    from records.models import MedicalRecord

    login(client, carol)
    bad = {"title": "", "instructions": "", "medications": [{"name": "Amoxicillin", "dose": "", "route": "by air"}]}
    refused = api(
        client, "post", "api_records", data={"visit": str(visit.public_id), "kind": "prescription", "content": bad}
    )
    assert refused.status_code == 400
    errors = refused.json()["errors"]
    assert "title" in errors
    assert "medications[0].dose" in errors
    assert "medications[0].route" in errors
    assert not MedicalRecord.objects.exists()


def test_patients_and_other_hospitals_cannot_write(client, alice, bob, dave, visit):
    from records.models import MedicalRecord

    for who in (alice, dave):
        login(client, who)
        answer = api(
            client, "post", "api_records", data={"visit": str(visit.public_id), "kind": "note", "content": note()}
        )
        assert answer.status_code in (403, 404), who
        client.logout()
    login(client, dave)
    assert api(client, "post", "api_visit_close", visit.public_id).status_code == 403
    assert not MedicalRecord.objects.exists()


@pytest.mark.parametrize(
    "path", ["records/not-a-uuid/", "records/%0A/", "nothing-here/", "records/%C3%BC%0Ax/files/y/"]
)
def test_any_other_path_under_the_api_is_a_problem_not_a_page(client, alice, path):
    login(client, alice)
    answer = client.get(f"/api/v1/{path}", HTTP_ACCEPT_LANGUAGE="en")
    assert answer.status_code == 404
    assert answer["Content-Type"] == PROBLEM
