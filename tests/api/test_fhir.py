"""FHIR R4: every resource served validates; reads are audited; outsiders get OperationOutcomes; $everything streams."""

from __future__ import annotations

import json

import pytest

from records.fhir.mapping import validate
from records.models import AccessEvent
from tests.records.conftest import login
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.django_db

FHIR = "application/fhir+json"


def fhir(client, path: str, **extra):
    return client.get(f"/fhir/r4/{path}", HTTP_ACCEPT=FHIR, HTTP_ACCEPT_LANGUAGE="en", **extra)


def entries(answer) -> list[dict]:
    body = answer.json()
    assert body["resourceType"] == "Bundle"
    return [e["resource"] for e in body.get("entry", [])]


def test_the_capability_statement_and_smart_configuration_are_public_and_valid(client):
    metadata = fhir(client, "metadata")
    assert metadata.status_code == 200
    assert metadata["Content-Type"].startswith(FHIR)
    validate(metadata.json())
    smart = client.get("/.well-known/smart-configuration")
    assert smart.status_code == 200
    assert "S256" in smart.json()["code_challenge_methods_supported"]
    assert "patient/*.read" in smart.json()["scopes_supported"]


@pytest.mark.parametrize(
    "resource_type",
    [
        "MedicationRequest",
        "DiagnosticReport",
        "Observation",
        "ImagingStudy",
        "DocumentReference",
        "Provenance",
        "Consent",
        "AuditEvent",
        "Encounter",
        "Patient",
    ],
)
def test_every_resource_a_patient_gets_validates(client, alice, chart, resource_type):
    login(client, alice)
    answer = fhir(client, resource_type)
    assert answer.status_code == 200, answer.content[:500]
    found = entries(answer)
    assert found, resource_type
    for resource in found:
        assert resource["resourceType"] == resource_type
        validate(resource)
        one = fhir(client, f"{resource_type}/{resource['id']}")
        assert one.status_code == 200, (resource_type, resource["id"], one.content[:300])
        assert one.json() == resource


def test_the_clinical_content_is_mapped(client, alice, chart):
    login(client, alice)
    [med] = entries(fhir(client, "MedicationRequest"))
    assert med["medicationCodeableConcept"]["text"] == "Amoxicillin"
    assert med["subject"]["reference"] == f"Patient/{alice.public_id}"
    observations = entries(fhir(client, "Observation"))
    assert {o.get("valueQuantity", {}).get("value") for o in observations} >= {13.5}
    [pdf_doc] = [d for d in entries(fhir(client, "DocumentReference")) if d["id"].endswith("-files")]
    attachment = pdf_doc["content"][0]["attachment"]
    assert attachment["title"] == "scan.pdf"
    assert attachment["url"].startswith("/api/v1/records/")
    provenance = [p for p in entries(fhir(client, "Provenance")) if p.get("signature")]
    assert provenance
    signature = json.loads(__import__("base64").b64decode(provenance[0]["signature"][0]["data"]))
    assert signature["transaction"]
    [consent] = entries(fhir(client, "Consent"))
    assert consent["provision"]["purpose"][0]["code"] == "TREAT"


def test_each_record_read_through_fhir_is_in_the_footprint(client, alice, carol, chart):
    login(client, carol)
    answer = fhir(client, f"DiagnosticReport?patient=Patient/{alice.public_id}")
    assert answer.status_code == 200
    assert len(entries(answer)) == 2  # the lab report and the pathology report
    reads = AccessEvent.objects.filter(actor=carol, patient=alice, action="view", client="api")
    assert reads.count() >= 2


@pytest.mark.parametrize("who", ["bob", "dave", "erin"])
def test_outsiders_get_an_operation_outcome_and_nothing_of_alices(request, client, chart, who):
    login(client, request.getfixturevalue(who))
    alice = chart["note"].patient
    for path in (
        f"DocumentReference/{chart['note'].public_id}",
        f"Patient/{alice.public_id}",
        f"Patient/{alice.public_id}/$everything",
        f"Consent/{chart['grant'].public_id}",
    ):
        answer = fhir(client, path)
        assert answer.status_code in (403, 404), (who, path, answer.status_code)
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert "Doing well" not in answer.content.decode()
    search = fhir(client, f"DocumentReference?patient=Patient/{alice.public_id}")
    if search.status_code == 200:
        assert entries(search) == []


def test_unknown_types_and_bad_paging_are_refused_as_operation_outcomes(client, alice, chart):
    login(client, alice)
    unknown = fhir(client, "Spaceship")
    assert unknown.status_code == 404
    assert unknown.json()["issue"][0]["code"] == "not-found"
    bad = fhir(client, "Observation?_count=lots")
    assert bad.status_code == 400
    assert bad.json()["resourceType"] == "OperationOutcome"
    assert fhir(client, "Patient").status_code == 200
    assert client.get("/fhir/r4/Patient").status_code in (200, 406)


def test_search_pages_follow_their_next_link(client, alice, chart):
    login(client, alice)
    everything = {r["id"] for r in entries(fhir(client, "DocumentReference?_count=200"))}
    seen: list[str] = []
    page = fhir(client, "DocumentReference?_count=1").json()
    pages = 1
    while True:
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            break
        page = client.get(following[0], HTTP_ACCEPT=FHIR).json()
        pages += 1
    assert pages == 5  # one record a page; the last one has no next link
    assert sorted(seen) == sorted(everything)


def test_everything_streams_the_patients_own_bundle(client, alice, chart):
    login(client, alice)
    answer = fhir(client, f"Patient/{alice.public_id}/$everything")
    assert answer.status_code == 200
    assert answer.streaming
    bundle = json.loads(b"".join(answer.streaming_content))
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert types >= {
        "Patient",
        "Encounter",
        "MedicationRequest",
        "DiagnosticReport",
        "Observation",
        "ImagingStudy",
        "DocumentReference",
        "Provenance",
        "Consent",
    }
    for entry in bundle["entry"]:
        validate(entry["resource"])
    assert AccessEvent.objects.filter(actor=alice, action="view", client="api").count() >= 5


def test_a_doctor_may_not_ask_for_everything(client, alice, carol, chart):
    login(client, carol)
    answer = fhir(client, f"Patient/{alice.public_id}/$everything")
    assert answer.status_code == 403
    assert answer.json()["resourceType"] == "OperationOutcome"
