"""The research endpoints: a cleared researcher's datasets, their k-anonymous summaries and audited exports.

The study of the portal's tests (tests/records/research): six women in their
early forties and Bob, a lone older man, all consenting to Erin's institute;
Bob's group stays under k = 5 and is suppressed. Outsiders: Frank (a
researcher of another institute), Gil (not verified), Hal (no 2FA), Alice (a
patient), Carol and Dave (clinicians), a caller not signed in, and apps
without the scope.
"""

from __future__ import annotations

import csv
import hashlib
import io

import pytest
from django.urls import reverse

from records.models import AccessEvent, ResearchDataset, ResearchExport
from records.research import services as research
from records.sharing.grants import grant_revoke
from tests.api.test_care_api import staff_token
from tests.api.test_oauth import app, bearer  # noqa: F401  (app: a fixture)
from tests.records.conftest import login
from tests.records.research.test_research import _assert_clean, other_researchers, study  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


@pytest.fixture
def studied(request):
    """The portal tests' study population and Erin's dataset (tests/records/research)."""
    return request.getfixturevalue("study")


@pytest.fixture
def outsiders(request):
    """Frank (another institute), Gil (not verified), Hal (no 2FA): the portal tests' other researchers."""
    return request.getfixturevalue("other_researchers")


def call(client, method: str, name: str, *args, data=None, **headers):
    url = reverse(name, args=args)
    if method == "post":
        return client.post(url, data=data or {}, content_type="application/json", HTTP_ACCEPT_LANGUAGE="en", **headers)
    return client.get(url, HTTP_ACCEPT_LANGUAGE="en", **headers)


def released_records(studied) -> int:
    """Three records each of the six women; Bob's are suppressed."""
    return 3 * (len(studied["patients"]) - 1)


# -- the researcher ---------------------------------------------------------------------------------
def test_a_researcher_lists_reads_and_creates_datasets(client, studied, erin):
    login(client, erin)
    listed = call(client, "get", "api_research_datasets")
    assert listed.status_code == 200
    [row] = listed.json()["results"]
    assert row["id"] == str(studied["dataset"].public_id)
    assert row["title"] == "Adults 2026"
    assert row["kinds"] == ["lab_report", "note", "prescription"]
    assert row["institution"] == "lab"
    assert row["export_count"] == 0

    read = call(client, "get", "api_research_dataset", studied["dataset"].public_id)
    assert read.status_code == 200
    summary = read.json()["summary"]
    assert summary["k"] == 5
    assert summary["patients"] == 7
    assert summary["records"] == 21
    assert summary["released_patients"] == 6
    assert summary["released_records"] == released_records(studied)
    assert summary["suppressed_patients"] == 1  # Bob, alone in his band even when widened
    assert all(group["count"] >= 5 for group in summary["groups"])
    assert {k["kind"]: k["count"] for k in summary["kinds"]} == {"lab_report": 6, "note": 6, "prescription": 6}
    assert not AccessEvent.objects.filter(actor=erin).exists()  # counts only: nothing decrypted, nothing audited

    made = call(client, "post", "api_research_datasets", data={"title": "  Notes only ", "kinds": ["note"]})
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["title"] == "Notes only"
    assert body["kinds"] == ["note"]
    assert body["created_by"] == erin.display_name
    assert body["summary"]["released_records"] == 6
    assert ResearchDataset.objects.filter(public_id=body["id"], institution=erin.institution).exists()
    assert [d["id"] for d in call(client, "get", "api_research_datasets").json()["results"]] == [
        body["id"],
        str(studied["dataset"].public_id),
    ]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kinds": ["note"]}, "title"),
        ({"title": "   ", "kinds": ["note"]}, "title"),
        ({"title": "x" * 201, "kinds": ["note"]}, "title"),
        ({"title": 42, "kinds": ["note"]}, "title"),
        ({"title": "Notes"}, "kinds"),
        ({"title": "Notes", "kinds": []}, "kinds"),
        ({"title": "Notes", "kinds": ["gossip"]}, "kinds"),
        ({"title": "Notes", "kinds": "note"}, "kinds"),
    ],
)
def test_a_bad_dataset_is_a_problem_naming_the_field_and_nothing_is_made(client, studied, erin, data, field):
    login(client, erin)
    refused = call(client, "post", "api_research_datasets", data=data)
    assert refused.status_code == 400
    assert refused["Content-Type"] == PROBLEM
    assert field in refused.json()["errors"]
    assert ResearchDataset.objects.count() == 1


def test_no_kinds_says_what_the_portal_says(client, studied, erin):
    login(client, erin)
    refused = call(client, "post", "api_research_datasets", data={"title": "Notes", "kinds": []})
    assert refused.json()["errors"]["kinds"] == ["Choose at least one kind of record."]


# -- exports ----------------------------------------------------------------------------------------
def test_an_export_answers_the_file_and_is_audited_as_the_portals(client, studied, erin, alice):
    login(client, erin)
    dataset = studied["dataset"]
    made = call(
        client, "post", "api_research_exports", dataset.public_id, data={"format": "csv"}, HTTP_ACCEPT="text/csv"
    )
    assert made.status_code == 201, made.content
    assert made["Content-Type"].startswith("text/csv")
    assert made["Content-Disposition"].startswith('attachment; filename="dataset-')
    assert made["Cache-Control"] == "private, no-store"
    assert made["X-Content-Type-Options"] == "nosniff"
    _assert_clean(made.content, studied["patients"])
    rows = list(csv.DictReader(io.StringIO(made.content.decode("utf-8-sig"))))
    assert len({r["subject"] for r in rows}) == 6  # Bob is not in the file

    export = ResearchExport.objects.get()
    assert made["Location"] == reverse("api_research_export", args=[dataset.public_id, export.public_id])
    assert export.sha256 == hashlib.sha256(made.content).hexdigest()
    assert export.suppressed_patients == 1
    exported = AccessEvent.objects.filter(actor=erin, action="export", outcome="allowed", purpose="research")
    assert exported.count() == released_records(studied)
    assert exported.filter(patient=alice).count() == 3  # in Alice's footprint, one row per record
    assert all(str(export.public_id) in e.detail for e in exported)
    assert set(exported.values_list("client", flat=True)) == {"api"}  # marked with the calling application

    described = call(client, "get", "api_research_export", dataset.public_id, export.public_id)
    assert described.status_code == 200
    assert described.json()["sha256"] == export.sha256
    assert described.json()["patient_count"] == 6

    fhir = call(client, "post", "api_research_exports", dataset.public_id, data={"format": "fhir"})
    assert fhir.status_code == 201
    assert fhir["Content-Type"].startswith("application/fhir+json")
    assert fhir.json()["resourceType"] == "Bundle"
    _assert_clean(fhir.content, studied["patients"])
    listed = call(client, "get", "api_research_exports", dataset.public_id)
    assert [e["format"] for e in listed.json()["results"]] == ["fhir", "csv"]
    assert call(client, "get", "api_research_dataset", dataset.public_id).json()["export_count"] == 2


def test_a_bad_format_names_the_field_and_exports_nothing(client, studied, erin):
    login(client, erin)
    for data in ({"format": "xlsx"}, {}):
        refused = call(client, "post", "api_research_exports", studied["dataset"].public_id, data=data)
        assert refused.status_code == 400
        assert refused["Content-Type"] == PROBLEM
        assert "format" in refused.json()["errors"]
    assert not ResearchExport.objects.exists()
    assert not AccessEvent.objects.filter(action="export").exists()


def test_nothing_to_release_is_refused_as_the_portal_does(client, studied, erin):
    """The portal's Download is disabled when k-anonymity leaves nobody: the API answers 409."""
    login(client, erin)
    imaging = research.dataset_create(user=erin, title="Scans", kinds=["imaging"])
    refused = call(client, "post", "api_research_exports", imaging.public_id, data={"format": "csv"})
    assert refused.status_code == 409
    assert refused["Content-Type"] == PROBLEM
    assert "smaller than 5 patients" in refused.json()["detail"]

    # Two women withdraw: four women remain, under k even in a 20-year band, so everyone is suppressed.
    for patient in studied["women"][:2]:
        grant_revoke(patient=patient, grant=studied["grants"][patient.pk])
    summary = call(client, "get", "api_research_dataset", studied["dataset"].public_id).json()["summary"]
    assert summary["released_patients"] == 0
    assert summary["suppressed_patients"] == 5
    refused = call(client, "post", "api_research_exports", studied["dataset"].public_id, data={"format": "fhir"})
    assert refused.status_code == 409
    assert not ResearchExport.objects.exists()
    assert not AccessEvent.objects.filter(action="export").exists()


def test_unknown_ids_are_404_problems(client, studied, erin):
    login(client, erin)
    nobody = "00000000-0000-0000-0000-000000000000"
    for name, args in (
        ("api_research_dataset", (nobody,)),
        ("api_research_exports", (nobody,)),
        ("api_research_export", (studied["dataset"].public_id, nobody)),
    ):
        answer = call(client, "get", name, *args)
        assert answer.status_code == 404, name
        assert answer["Content-Type"] == PROBLEM


# -- the access matrix -------------------------------------------------------------------------------
def endpoints(dataset, export) -> list[tuple[str, str, tuple, dict | None]]:
    return [
        ("get", "api_research_datasets", (), None),
        ("post", "api_research_datasets", (), {"title": "Mine now", "kinds": ["note"]}),
        ("get", "api_research_dataset", (dataset.public_id,), None),
        ("get", "api_research_exports", (dataset.public_id,), None),
        ("post", "api_research_exports", (dataset.public_id,), {"format": "csv"}),
        ("get", "api_research_export", (dataset.public_id, export.public_id), None),
    ]


@pytest.fixture
def exported(studied, erin):
    export, _data = research.dataset_export(user=erin, dataset=studied["dataset"], fmt="csv")
    return export


def _unchanged(exports_before: int) -> None:
    assert ResearchExport.objects.count() == exports_before
    assert ResearchDataset.objects.count() == 1


@pytest.mark.parametrize("who", ["alice", "carol", "dave", "unverified", "no_2fa"])
def test_nobody_but_cleared_researchers_gets_in(request, client, studied, exported, outsiders, who):
    user = outsiders[who] if who in outsiders else request.getfixturevalue(who)
    login(client, user)
    exports_before = ResearchExport.objects.count()
    for method, name, args, data in endpoints(studied["dataset"], exported):
        answer = call(client, method, name, *args, data=data)
        assert answer.status_code == 403, (who, name)
        assert answer["Content-Type"] == PROBLEM
        assert "Adults 2026" not in answer.content.decode()
    _unchanged(exports_before)


def test_a_caller_not_signed_in_gets_a_problem(client, studied, exported):
    for method, name, args, data in endpoints(studied["dataset"], exported):
        answer = call(client, method, name, *args, data=data)
        assert answer.status_code in (401, 403), name
        assert answer["Content-Type"] == PROBLEM
    _unchanged(1)


def test_another_institutes_researcher_sees_nothing_and_each_attempt_is_audited(client, studied, exported, outsiders):
    frank = outsiders["elsewhere"]
    login(client, frank)
    assert call(client, "get", "api_research_datasets").json()["results"] == []
    for method, name, args, data in endpoints(studied["dataset"], exported)[2:]:
        answer = call(client, method, name, *args, data=data)
        assert answer.status_code == 404, name
        assert "Adults 2026" not in answer.content.decode()
    denied = AccessEvent.objects.filter(actor=frank, outcome="denied", purpose="research")
    assert denied.count() == 4
    assert set(denied.values_list("action", flat=True)) == {"view", "export"}
    _unchanged(1)


def test_an_app_needs_the_researchers_staff_scopes(client, studied, erin, app):  # noqa: F811
    narrow = staff_token(client, erin, app, "user/DocumentReference.read")
    assert bearer(client, "api_research_datasets", narrow).status_code == 403
    reader = staff_token(client, erin, app, "user/*.read")
    assert bearer(client, "api_research_datasets", reader).status_code == 200
    assert bearer(client, "api_research_dataset", reader, studied["dataset"].public_id).status_code == 200
    refused = bearer(
        client, "api_research_exports", reader, studied["dataset"].public_id, method="post", data={"format": "csv"}
    )
    assert refused.status_code == 403
    assert not ResearchExport.objects.exists()
    writer = staff_token(client, erin, app, "user/*.read user/*.write")
    made = bearer(
        client, "api_research_exports", writer, studied["dataset"].public_id, method="post", data={"format": "csv"}
    )
    assert made.status_code == 201
    assert ResearchExport.objects.count() == 1


def test_the_dataset_list_takes_a_constant_number_of_queries(client, studied, erin, django_assert_max_num_queries):
    for i in range(10):
        research.dataset_create(user=erin, title=f"Set {i}", kinds=["note"])
    login(client, erin)
    with django_assert_max_num_queries(8):
        answer = call(client, "get", "api_research_datasets")
    assert len(answer.json()["results"]) == 11
