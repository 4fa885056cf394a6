"""FHIR Bulk Data ``$export``: kick-off, progress, manifest, encrypted files, who may ask, redrive, expiry;
and ``Patient/$everything`` in a constant number of queries."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_application_model

from records.clinical import storage
from records.clinical.services import record_create, record_finalize_imported, visit_open
from records.fhir import bulk, tasks
from records.fhir.mapping import validate
from records.models import AccessEvent, BulkExport, MedicalRecord
from tests import factories
from tests.records.conftest import login

pytestmark = pytest.mark.django_db

FHIR = "application/fhir+json"
SENTINEL = "SENTINEL-ZEBRA-4417"


@pytest.fixture
def exports(settings, tmp_path) -> Path:
    settings.BULK_EXPORT_DIR = tmp_path / "exports"
    return settings.BULK_EXPORT_DIR


@pytest.fixture
def records(chart, alice, carol, visit, exports):
    """Alice's five records at North Hospital (one note carries the sentinel), signed and stored."""
    note = record_create(
        patient=alice,
        author=carol,
        kind="note",
        visit=visit,
        content={"title": f"Plan {SENTINEL}", "text": SENTINEL},
        imported=True,
    )
    record_finalize_imported(record=note)
    storage.version_store(note.current_version_id)
    return [r for r in chart.values() if isinstance(r, MedicalRecord)] + [note]


@pytest.fixture
def bobs_record(bob, dave):
    """A record of another institution (South Hospital): never in North's export."""
    record = record_create(
        patient=bob,
        author=dave,
        kind="note",
        visit=visit_open(clinician=dave, patient=bob),
        content={"title": "Elsewhere", "text": "Not North's"},
        imported=True,
    )
    record_finalize_imported(record=record)
    return record


@pytest.fixture
def south_admin(other_hospital):
    user = factories.UserFactory(
        email="south-admin@example.org", role="institution_admin", institution=other_hospital, verified=True
    )
    factories.enable_totp(user)
    return user


def kickoff(client, query: str = "", *, prefer: str | None = "respond-async", **extra):
    headers = {"HTTP_ACCEPT": FHIR, "HTTP_ACCEPT_LANGUAGE": "en", **extra}
    if prefer is not None:
        headers["HTTP_PREFER"] = prefer
    return client.get(f"/fhir/r4/$export{query}", **headers)


def started(client, query: str = "") -> BulkExport:
    answer = kickoff(client, query)
    assert answer.status_code == 202, answer.content[:400]
    job_id = answer["Content-Location"].rsplit("/", 1)[1]
    return BulkExport.objects.get(public_id=job_id)


def status(client, job: BulkExport, method: str = "get"):
    return getattr(client, method)(
        reverse("fhir_export_status", args=[job.public_id]), HTTP_ACCEPT=FHIR, HTTP_ACCEPT_LANGUAGE="en"
    )


def download(client, url: str) -> list[dict]:
    answer = client.get(url)
    assert answer.status_code == 200, answer.content[:300] if not answer.streaming else answer.status_code
    assert answer["Content-Type"] == "application/fhir+ndjson"
    text = b"".join(answer.streaming_content).decode()
    return [json.loads(line) for line in text.splitlines()]


def test_kickoff_progress_manifest_and_files(client, hospital_admin, alice, records, bobs_record, monkeypatch):
    monkeypatch.setattr(bulk, "STEP", 2)
    login(client, hospital_admin)
    answer = kickoff(client)
    assert answer.status_code == 202
    assert answer["Content-Location"].startswith("http://testserver/fhir/r4/$export-status/")
    job = BulkExport.objects.get()
    assert job.total == len(records) == 6

    polled = status(client, job)
    assert polled.status_code == 202
    assert polled["X-Progress"] == "0 of 6 records"
    assert int(polled["Retry-After"]) > 0
    assert bulk.export_step(job.pk)
    assert status(client, job)["X-Progress"] == "2 of 6 records"

    assert bulk.export_run(job.pk) == "done"
    done = status(client, job)
    assert done.status_code == 200
    assert done["Content-Type"].startswith("application/json")
    manifest = done.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == "http://testserver/fhir/r4/$export"
    assert manifest["error"] == []
    assert manifest["transactionTime"]
    types = {o["type"] for o in manifest["output"]}
    assert types >= {"Patient", "Encounter", "MedicationRequest", "DiagnosticReport", "Observation", "ImagingStudy"}
    assert types >= {"DocumentReference", "Provenance"}

    seen: dict[str, set[str]] = {}
    for output in manifest["output"]:
        found = download(client, output["url"])
        assert len(found) == output["count"] > 0
        for resource in found:
            assert resource["resourceType"] == output["type"]
            validate(resource)
            seen.setdefault(output["type"], set()).add(resource["id"])
            subject = resource.get("subject") or resource.get("patient")
            if subject:
                assert subject["reference"] == f"Patient/{alice.public_id}"
    assert seen["Patient"] == {str(alice.public_id)}
    assert len(seen["Provenance"]) == 6  # each record exactly once, over three steps
    assert str(bobs_record.public_id) not in json.dumps(sorted(map(sorted, seen.values())))

    downloads = AccessEvent.objects.filter(actor=hospital_admin, action="download", basis="institution")
    assert set(downloads.exclude(record=None).values_list("record_id", flat=True)) == {r.pk for r in records}
    assert set(downloads.values_list("patient_id", flat=True)) == {alice.pk}
    reads = AccessEvent.objects.filter(actor=hospital_admin, action="view", basis="institution", outcome="allowed")
    assert reads.count() == 6


def test_an_export_holds_only_its_own_institutions_records(client, south_admin, bob, records, bobs_record):
    login(client, south_admin)
    job = started(client)
    bulk.export_run(job.pk)
    manifest = status(client, job).json()
    everything = [r for o in manifest["output"] for r in download(client, o["url"])]
    assert {r["id"] for r in everything if r["resourceType"] == "Patient"} == {str(bob.public_id)}
    assert "Elsewhere" in json.dumps(everything)
    assert SENTINEL not in json.dumps(everything)
    assert len([r for r in everything if r["resourceType"] == "Provenance"]) == 1


def test_type_and_since_narrow_the_export(client, hospital_admin, records):
    login(client, hospital_admin)
    job = started(client, "?_type=MedicationRequest,Patient&_outputFormat=ndjson")
    assert job.total == 1
    bulk.export_run(job.pk)
    assert {o["type"] for o in status(client, job).json()["output"]} == {"MedicationRequest", "Patient"}
    later = (timezone.now() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    job = started(client, f"?_since={later}")
    assert job.total == 0
    bulk.export_run(job.pk)
    assert {o["type"] for o in status(client, job).json()["output"]} <= {"Patient", "Encounter"}


@pytest.mark.parametrize("output_format", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_the_three_ndjson_formats_are_accepted(client, hospital_admin, exports, output_format):
    login(client, hospital_admin)
    assert kickoff(client, "?" + urlencode({"_outputFormat": output_format})).status_code == 202


@pytest.mark.parametrize(
    ("query", "prefer"),
    [
        ("", None),
        ("", "return=representation"),
        ("?_outputFormat=text/csv", "respond-async"),
        ("?_type=Spaceship", "respond-async"),
        ("?_type=Patient,Consent", "respond-async"),
        ("?_since=yesterday", "respond-async"),
        ("?_since=2026-01-01T00:00:00", "respond-async"),  # no time zone
        ("?_typeFilter=Patient%3Factive%3Dtrue", "respond-async"),
    ],
)
def test_bad_kickoffs_are_refused_with_an_operation_outcome(client, hospital_admin, exports, query, prefer):
    login(client, hospital_admin)
    answer = kickoff(client, query, prefer=prefer)
    assert answer.status_code == 400
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "invalid"
    assert body["issue"][0]["diagnostics"]
    assert not BulkExport.objects.exists()


@pytest.mark.parametrize("who", ["alice", "dave", "south_admin", "erin", "nobody", "unverified_admin"])
def test_only_the_requesting_cleared_admin_reaches_an_export(request, client, hospital_admin, records, who):
    login(client, hospital_admin)
    job = started(client)
    bulk.export_run(job.pk)
    file_url = status(client, job).json()["output"][0]["url"]
    client.logout()
    if who == "unverified_admin":
        user = factories.UserFactory(
            email="new@example.org", role="institution_admin", institution=hospital_admin.institution
        )
        login(client, user)
    elif who != "nobody":
        login(client, request.getfixturevalue(who))
    answers = [status(client, job), client.get(file_url), status(client, job, "delete")]
    if who != "south_admin":  # who may start an export of their own institution's records
        answers.append(kickoff(client))
    for answer in answers:
        assert answer.status_code in (401, 403, 404), (who, answer.status_code)
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert BulkExport.objects.filter(institution=hospital_admin.institution).count() == 1
    assert not AccessEvent.objects.filter(action="download").exists()


def test_an_app_token_needs_a_scope_for_everything(client, hospital_admin, exports):
    application = get_application_model().objects.create(
        name="Archive", client_type="confidential", authorization_grant_type="authorization-code"
    )

    def token(value: str, scope: str) -> str:
        get_access_token_model().objects.create(
            user=hospital_admin,
            application=application,
            token=value,
            scope=scope,
            expires=timezone.now() + timedelta(hours=1),
        )
        return f"Bearer {value}"

    narrow = kickoff(client, HTTP_AUTHORIZATION=token("narrow-token", "user/Patient.read"))
    assert narrow.status_code == 403
    assert narrow.json()["resourceType"] == "OperationOutcome"
    wide = kickoff(client, HTTP_AUTHORIZATION=token("wide-token", "user/*.read"))
    assert wide.status_code == 202
    assert BulkExport.objects.get().client == f"app:{application.client_id}"


def test_cancelling_deletes_the_job_and_its_files(
    client, hospital_admin, records, exports, django_capture_on_commit_callbacks
):
    login(client, hospital_admin)
    job = started(client)
    bulk.export_run(job.pk)
    folder = exports / str(job.public_id)
    assert any(folder.iterdir())
    with django_capture_on_commit_callbacks(execute=True):
        answer = status(client, job, "delete")
    assert answer.status_code == 202
    assert not BulkExport.objects.exists()
    assert not folder.exists()
    assert status(client, job).status_code == 404


def test_a_killed_job_is_redriven_and_exports_each_record_once(client, hospital_admin, records, monkeypatch):
    monkeypatch.setattr(bulk, "STEP", 2)
    login(client, hospital_admin)
    job = started(client)
    assert bulk.export_step(job.pk)  # the first step is committed

    real_write = bulk._write

    def killed(*args, **kwargs):
        real_write(*args, **kwargs)  # the file is on disk, but the worker dies before the step commits
        raise SystemExit("worker killed")

    monkeypatch.setattr(bulk, "_write", killed)
    with pytest.raises(SystemExit):
        bulk.export_run(job.pk)
    monkeypatch.setattr(bulk, "_write", real_write)
    job.refresh_from_db()
    assert job.status == "running"
    assert job.done == 2

    assert tasks.bulk_export_sweep()["stale"] == 0  # not stale yet
    BulkExport.objects.filter(pk=job.pk).update(updated_at=timezone.now() - bulk.STALE_AFTER - timedelta(minutes=1))
    queued = []
    monkeypatch.setattr(tasks.bulk_export_run, "delay", queued.append)
    assert tasks.bulk_export_sweep()["stale"] == 1
    assert queued == [job.pk]
    tasks.bulk_export_run(job.pk)
    assert tasks.bulk_export_run(job.pk) == "gone"  # a second message for a finished job does nothing

    manifest = status(client, job).json()
    ids = [r["id"] for o in manifest["output"] if o["type"] == "Provenance" for r in download(client, o["url"])]
    assert sorted(ids) == sorted(set(ids))
    assert len(ids) == 6


def test_no_plaintext_on_disk_and_expired_exports_are_removed(client, hospital_admin, alice, records, exports):
    login(client, hospital_admin)
    job = started(client)
    bulk.export_run(job.pk)
    files = [p for p in exports.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert SENTINEL.encode() not in data
        assert str(alice.public_id).encode() not in data
        assert b"resourceType" not in data
    notes = [o["url"] for o in status(client, job).json()["output"] if o["type"] == "DocumentReference"]
    assert SENTINEL in json.dumps([download(client, url) for url in notes])

    BulkExport.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.bulk_export_sweep()["expired"] == 1
    assert not BulkExport.objects.exists()
    assert not (exports / str(job.public_id)).exists()


def test_a_failing_job_ends_failed_and_says_so(client, hospital_admin, records, monkeypatch):
    login(client, hospital_admin)
    job = started(client)
    BulkExport.objects.filter(pk=job.pk).update(attempts=bulk.MAX_ATTEMPTS - 1)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bulk, "_write", broken)
    with pytest.raises(OSError, match="disk full"):
        bulk.export_run(job.pk)
    answer = status(client, job)
    assert answer.status_code == 500
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "disk full" not in answer.content.decode()


def test_the_exports_page_starts_shows_progress_and_links_the_files(client, hospital_admin, south_admin, records):
    login(client, hospital_admin)
    page = reverse("institution_exports")
    empty = client.get(page, HTTP_ACCEPT_LANGUAGE="en")
    assert empty.status_code == 200
    assert "No exports yet" in empty.content.decode()
    assert client.post(page, HTTP_ACCEPT_LANGUAGE="en").status_code == 302
    job = BulkExport.objects.get()
    running = client.get(page, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "<progress" in running
    assert "0 of 6 records" in running
    bulk.export_run(job.pk)
    ready = client.get(page, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    job.refresh_from_db()
    first = job.outputs[0]["name"]
    assert reverse("fhir_export_file", args=[job.public_id, first]) in ready
    assert "<progress" not in ready

    login(client, south_admin)
    theirs = client.get(page, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert str(job.public_id) not in theirs
    assert "No exports yet" in theirs


def test_clinicians_do_not_reach_the_exports_page(client, carol):
    login(client, carol)
    assert client.get(reverse("institution_exports")).status_code == 403


# -- $everything ---------------------------------------------------------------------------------------
def _everything_queries(client, patient) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        answer = client.get(f"/fhir/r4/Patient/{patient.public_id}/$everything", HTTP_ACCEPT=FHIR)
        bundle = json.loads(b"".join(answer.streaming_content))
    return len(queries), len(bundle["entry"])


def test_everything_costs_the_same_queries_for_3_or_12_records(
    client, alice, carol, visit, django_assert_max_num_queries
):
    def add(n: int) -> None:
        for i in range(n):
            record = record_create(
                patient=alice,
                author=carol,
                kind="note",
                visit=visit,
                content={"title": f"n{i}", "text": "x"},
                imported=True,
            )
            record_finalize_imported(record=record)

    login(client, alice)
    add(3)
    _everything_queries(client, alice)  # the first request fills what every request shares
    few, few_entries = _everything_queries(client, alice)
    add(9)
    many, many_entries = _everything_queries(client, alice)
    assert many_entries > few_entries
    assert many == few
    with django_assert_max_num_queries(few):
        client.get(f"/fhir/r4/Patient/{alice.public_id}/$everything", HTTP_ACCEPT=FHIR).getvalue()
    reads = AccessEvent.objects.filter(actor=alice, action="view", record__isnull=False, client="api")
    assert reads.count() == 3 + 3 + 12 + 12


@pytest.mark.parametrize("who", ["alice", "carol", "dave", "dave_granted", "erin", "hospital_admin", "bob"])
def test_the_batch_access_check_decides_as_the_single_one(request, chart, bobs_record, who):
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    from chain.ledger_services import chain_seal
    from records.policy import record_get_for_user, records_get_for_user
    from records.sharing.grants import grant_issue

    user = request.getfixturevalue(who.removesuffix("_granted"))
    if who == "dave_granted":  # a grant naming two of Alice's records, sealed to Dave
        chain_seal()  # Dave's key registration: the grant validator looks it up on chain
        grant_issue(
            patient=chart["note"].patient,
            grantee_user=user,
            scope="records",
            records=[chart["note"], chart["lab_report"]],
            purpose="treatment",
            valid_from=timezone.now() - timedelta(minutes=1),
            valid_until=timezone.now() + timedelta(days=1),
        )
    ids = [r.public_id for r in chart.values() if isinstance(r, MedicalRecord)] + [bobs_record.public_id]
    single = {}
    for record_id in ids:
        with contextlib.suppress(PermissionDenied, Http404):
            single[record_id] = record_get_for_user(user, record_id).basis
    batch = {a.record.public_id: a.basis for a in records_get_for_user(user, ids)}
    assert batch == single
    if who == "dave_granted":
        assert sorted(single.values()) == ["author", "grant", "grant"]
    events = AccessEvent.objects.filter(actor=user, action="view", record__public_id__in=ids)
    assert events.filter(outcome="allowed").count() == 2 * len(single)
    assert events.filter(outcome="denied").count() == 2 * (len(ids) - len(single))
    exported = {a.record.public_id for a in records_get_for_user(user, ids, institution_export=True)}
    assert exported == (set(ids) - {bobs_record.public_id} if who == "hospital_admin" else set())
