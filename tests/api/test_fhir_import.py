"""FHIR import: a transaction Bundle becomes signed, anchored records; a bad one is refused whole, naming each."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from django.urls import reverse

from records.clinical import reading
from records.models import MedicalRecord, RecordFile, Visit
from records.policy import record_get_for_user
from tests.records.conftest import login, pdf_bytes
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.django_db

FHIR = "application/fhir+json"
SKIPPED = {"Provenance", "Consent"}  # not clinical content: signatures and grants stay with their node


def transaction_of(everything: dict, download) -> dict:
    """``$everything`` as another EMR would send it: files inlined (``download(url)`` gives them), as a transaction."""
    entries = []
    for entry in everything["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in SKIPPED:
            continue
        for content in resource.get("content") or []:
            attachment = content["attachment"]
            if "url" in attachment:
                attachment["data"] = base64.b64encode(download(attachment.pop("url"))).decode()
        entries.append(
            {
                "fullUrl": entry["fullUrl"],
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def exported(client, patient) -> dict:
    """Her records as another EMR would send them: $everything, files inlined, as a transaction."""
    login(client, patient)
    everything = json.loads(b"".join(client.get(f"/fhir/r4/Patient/{patient.public_id}/$everything").streaming_content))
    bundle = transaction_of(everything, lambda url: b"".join(client.get(url).streaming_content))
    client.logout()
    return bundle


def post(client, bundle, **extra):
    return client.post(
        "/fhir/r4/", data=json.dumps(bundle), content_type=FHIR, HTTP_ACCEPT=FHIR, HTTP_ACCEPT_LANGUAGE="en", **extra
    )


def contents(user, records) -> dict[str, list[dict]]:
    """Each record's content by kind, without its file ids (new files have new ids)."""
    out: dict[str, list[dict]] = {}
    for record in records:
        access = record_get_for_user(user, record.public_id, quiet=True)
        content = reading.content_of(access)
        content["files"] = sorted(f["name"] for f in content.get("files", []))
        out.setdefault(record.kind, []).append(content)
    return out


def test_an_export_imported_at_another_hospital_gives_the_same_clinical_content(client, alice, dave, chart):
    bundle = exported(client, alice)
    before = set(MedicalRecord.objects.values_list("pk", flat=True))
    login(client, dave)
    answer = post(client, bundle)
    assert answer.status_code == 200, answer.content[:2000]
    assert answer.json()["type"] == "transaction-response"
    made = list(MedicalRecord.objects.exclude(pk__in=before))
    assert len(made) == 5
    assert {r.institution.code for r in made} == {"south"}
    assert all(r.status == "final" for r in made)
    originals = [chart[k] for k in ("prescription", "lab_report", "pathology", "imaging", "note")]
    assert contents(alice, made) == contents(alice, originals)
    pdf = RecordFile.objects.filter(version__record__in=made).get()
    assert pdf.media_type == "application/pdf"
    assert Visit.objects.filter(institution__code="south", patient=alice).count() == 1


def _bad_bundles(bundle: dict) -> dict[str, tuple[dict, str]]:
    def changed(change) -> dict:
        copied = copy.deepcopy(bundle)
        change(copied)
        return copied

    def first(copied, kind):
        return next(e["resource"] for e in copied["entry"] if e["resource"]["resourceType"] == kind)

    def drop_observation_code(copied):
        del first(copied, "Observation")["code"]

    def bad_status(copied):
        first(copied, "MedicationRequest")["status"] = "sort-of"

    def unknown_type(copied):
        copied["entry"].append(
            {
                "resource": {
                    "resourceType": "Appointment",
                    "status": "booked",
                    "participant": [{"status": "accepted"}],
                },
                "request": {"method": "POST", "url": "Appointment"},
            }
        )

    def duplicate(copied):
        copied["entry"].append(copy.deepcopy(copied["entry"][-1]))

    def huge(copied):
        doc = next(
            e["resource"]
            for e in copied["entry"]
            if e["resource"]["resourceType"] == "DocumentReference" and e["resource"]["id"].endswith("-files")
        )
        doc["content"][0]["attachment"]["data"] = base64.b64encode(pdf_bytes("x" * 5000)).decode()

    def bad_gender(copied):
        first(copied, "Patient")["gender"] = "robot"

    return {
        "missing element": (changed(drop_observation_code), "code"),
        "bad code": (changed(bad_status), "sort-of"),
        "unknown type": (changed(unknown_type), "Appointment"),
        "duplicate id": (changed(duplicate), "two entries"),
        "oversized attachment": (changed(huge), "larger than the limit"),
        "bad gender": (changed(bad_gender), "robot"),
    }


@pytest.mark.parametrize(
    "case", ["missing element", "bad code", "unknown type", "duplicate id", "oversized attachment", "bad gender"]
)
def test_a_bad_bundle_is_refused_whole_with_an_operation_outcome(client, alice, dave, chart, settings, case):
    settings.FHIR_ATTACHMENT_MAX_BYTES = 4096
    bad, says = _bad_bundles(exported(client, alice))[case]
    counts = (MedicalRecord.objects.count(), Visit.objects.count(), RecordFile.objects.count())
    login(client, dave)
    answer = post(client, bad)
    assert answer.status_code == 400, answer.content[:1000]
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert any(says in (i.get("diagnostics") or "") + " ".join(i.get("expression", [])) for i in body["issue"]), body
    assert all(i["expression"] for i in body["issue"])
    assert (MedicalRecord.objects.count(), Visit.objects.count(), RecordFile.objects.count()) == counts


def test_every_problem_is_named_at_once(client, alice, dave, chart):
    bundles = _bad_bundles(exported(client, alice))
    both = bundles["bad code"][0]
    both["entry"].append(bundles["unknown type"][0]["entry"][-1])
    login(client, dave)
    issues = post(client, both).json()["issue"]
    assert len(issues) >= 2


def test_patients_and_apps_without_write_scopes_cannot_import(client, alice, chart):
    bundle = exported(client, alice)
    login(client, alice)
    answer = post(client, bundle)
    assert answer.status_code == 403
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_a_patient_not_registered_here_is_refused(client, alice, dave, chart):
    bundle = exported(client, alice)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"] = [{"system": "urn:yilian:health-id", "value": "YL0000000"}]
            entry["resource"]["id"] = "somebody-else"
    login(client, dave)
    answer = post(client, bundle)
    assert answer.status_code == 400
    assert "not registered here" in answer.content.decode()


def test_not_a_bundle_is_refused(client, dave, node):
    login(client, dave)
    assert post(client, {"resourceType": "Patient"}).status_code == 400
    assert reverse("fhir_transaction") == "/fhir/r4/"
