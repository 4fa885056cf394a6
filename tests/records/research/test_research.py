"""Research datasets: consented records only, de-identified (k = 5), exported as CSV and FHIR, audited."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import date, timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from django.utils import timezone, translation
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.models import User
from chain.ledger_services import chain_seal
from records.clinical import storage
from records.clinical.services import record_create, record_finalize_imported, visit_open
from records.models import AccessEvent, Grant, RecordVersion, ResearchDataset, ResearchExport
from records.research import deid
from records.research import services as research
from records.sharing.grants import grant_issue, grant_revoke
from tests.factories import InstitutionFactory, UserFactory, enable_totp
from tests.records.conftest import login

NOW = timezone.now
ID_NUMBER = "11010519840101002X"
PHONE = "13812345678"
MRN = "MRN 20260412"


# -- the pure rules ---------------------------------------------------------------------------------
def test_age_bands():
    assert deid.age_band(42) == "40-44"
    assert deid.age_band(0) == "0-4"
    assert deid.age_band(89) == "85-89"
    assert deid.age_band(90) == "90+"
    assert deid.age_band(None) == "unknown"
    assert deid.age_band(42, width=20) == "40-59"
    assert deid.age_band(95, width=20) == "80+"
    assert deid.age_on(date(1984, 6, 2), date(2026, 6, 1)) == 41
    assert deid.age_on(date(1984, 6, 2), date(2026, 6, 2)) == 42


subjects_strategy = st.dictionaries(
    st.text(alphabet="abcdef0123456789", min_size=4, max_size=8),
    st.fixed_dictionaries(
        {
            "age": st.one_of(st.none(), st.integers(min_value=0, max_value=110)),
            "sex": st.sampled_from(["female", "male", "other", ""]),
        }
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(subjects=subjects_strategy, k=st.integers(min_value=1, max_value=8))
def test_k_anonymity_holds_for_any_population(subjects, k):
    release = deid.k_anonymise(subjects, k=k)
    assert set(release.released) | release.suppressed == set(subjects)
    assert not set(release.released) & release.suppressed
    for combination, count in release.groups().items():
        assert count >= k, combination
    # A released band is the subject's own age band, fine or widened.
    for key, (band, sex) in release.released.items():
        age = subjects[key]["age"]
        assert band in (deid.age_band(age), deid.age_band(age, width=20))
        assert sex == deid.sex_of(subjects[key]["sex"])


def test_small_groups_are_widened_then_suppressed():
    subjects = {f"f{i}": {"age": 40 + i % 2 * 10, "sex": "female"} for i in range(6)}  # 3 at 40, 3 at 50
    subjects["lonely"] = {"age": 77, "sex": "male"}
    release = deid.k_anonymise(subjects)
    assert {release.released[f"f{i}"] for i in range(6)} == {("40-59", "female")}
    assert release.suppressed == {"lonely"}


def test_scrubber_removes_identifiers_and_dates():
    text = (
        "张晓梅（晓梅, Zhang Xiaomei）身份证 11010519840101002X，电话 138 1234 5678 / +86 13812345678，"
        "座机 0571-88886666，邮箱 zxm@example.org，https://example.org/p?id=1，"
        "复诊 2026-03-05, 2026/3/5, 2026年3月5日, 3月5日, 3/5/2026, March 5, 2026, 5 March 2026. MRN 0012345678."
    )
    out = deid.scrub(text, names=["张晓梅", "Zhang Xiaomei"])
    for leaked in (
        "张晓梅",
        "晓梅",
        "Zhang",
        "Xiaomei",
        "1101",
        "1381",
        "5678",
        "8888",
        "zxm",
        "example",
        "2026",
        "3/5",
    ):
        assert leaked not in out, (leaked, out)
    assert "March" not in out and "3月" not in out
    kept = deid.scrub("WBC 10.8 10^9/L (3.5–9.5), 3.50-9.50, 500 mg twice daily for 7 days, Lipid panel", names=["Li"])
    assert kept == "WBC 10.8 10^9/L (3.5–9.5), 3.50-9.50, 500 mg twice daily for 7 days, Lipid panel"


# -- a study population -----------------------------------------------------------------------------
FEMALE_NAMES = [
    ("王丽娟", "Wang Lijuan"),
    ("刘芳华", "Liu Fanghua"),
    ("陈静怡", "Chen Jingyi"),
    ("杨雪梅", "Yang Xuemei"),
    ("赵丹妮", "Zhao Danni"),
]


def _patient(email, name, name_en, *, birth, sex):
    user = UserFactory(email=email, role="patient", name=name, name_en=name_en)
    User.objects.filter(pk=user.pk).update(birth_date=birth, sex=sex)
    user.refresh_from_db()
    return user


def _note_text(patient) -> str:
    today = timezone.localdate()
    return (
        f"{patient.name} ({patient.name_en}) seen today. ID {ID_NUMBER}, phone {PHONE}, {patient.email}. "
        f"Follow-up after {today.isoformat()} / {today:%Y/%m/%d} / {today.year}年{today.month}月{today.day}日 / "
        f"{today.month}/{today.day}/{today.year} / {today:%B} {today.day}, {today.year}. {MRN}. Stable."
    )


def _write(patient, doctor):
    visit = visit_open(clinician=doctor, patient=patient)
    lab = record_create(
        patient=patient,
        author=doctor,
        kind="lab_report",
        visit=visit,
        content={
            "title": f"Blood count for {patient.name_en}",
            "specimen": "venous blood",
            "observations": [
                {"name": "WBC", "value": "10.8", "unit": "10^9/L", "reference_range": "3.5–9.5", "flag": "high"},
                {"name": "Culture", "value": "no growth", "unit": "", "reference_range": "", "flag": "normal"},
            ],
        },
    )
    note = record_create(
        patient=patient,
        author=doctor,
        kind="note",
        visit=visit,
        content={"title": f"Note on {patient.name}", "text": _note_text(patient)},
    )
    rx = record_create(
        patient=patient,
        author=doctor,
        kind="prescription",
        visit=visit,
        content={
            "title": "Amoxicillin",
            "medications": [
                {"name": "Amoxicillin", "dose": "500 mg", "route": "oral", "frequency": "tid", "duration": "7 days"}
            ],
        },
    )
    records = [record_finalize_imported(record=r) for r in (lab, note, rx)]
    for record in records:
        storage.version_store(record.current_version_id)
    return records


@pytest.fixture
def study(node, carol, alice, bob, erin, dave, institute, hospital):
    """Six women in their early forties (alice and five more) and bob, a lone older man, all consenting."""
    today = timezone.localdate()
    forties = date(today.year - 42, 1, 1)
    User.objects.filter(pk=alice.pk).update(birth_date=forties, sex="female", name="爱丽丝", name_en="Alice")
    User.objects.filter(pk=bob.pk).update(birth_date=date(today.year - 76, 1, 1), sex="male")
    alice.refresh_from_db()
    bob.refresh_from_db()
    women = [
        _patient(f"p{i}@example.org", name, name_en, birth=forties + timedelta(days=30 * i), sex="female")
        for i, (name, name_en) in enumerate(FEMALE_NAMES)
    ]
    chain_seal()  # the grant and anchor validators look keys up in sealed state
    patients = [alice, *women, bob]
    records = {p.pk: _write(p, carol) for p in patients}
    grants = {
        p.pk: grant_issue(
            patient=p,
            grantee_institution=institute,
            scope="all",
            purpose="research",
            valid_from=NOW() - timedelta(minutes=1),
            valid_until=NOW() + timedelta(days=365),
        )
        for p in patients
    }
    dataset = research.dataset_create(user=erin, title="Adults 2026", kinds=["lab_report", "note", "prescription"])
    return {"patients": patients, "women": women, "records": records, "grants": grants, "dataset": dataset}


def _export(client, user, dataset, fmt="csv"):
    login(client, user)
    return client.post(reverse("research_dataset_export", args=[dataset.public_id]), {"format": fmt})


def _rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


def _forbidden_strings(patients) -> list[str]:
    today = timezone.localdate()
    strings = [ID_NUMBER, PHONE, "20260412", today.isoformat(), f"{today:%Y/%m/%d}", f"{today.month}/{today.day}/"]
    strings += [f"{today.year}年{today.month}月", f"{today:%B} {today.day}"]
    for p in patients:
        strings += [p.name, p.name_en, p.email, str(p.public_id), p.birth_date.isoformat()]
    return [s for s in strings if s]


def _assert_clean(data: bytes, patients):
    text = data.decode("utf-8-sig")
    for leaked in _forbidden_strings(patients):
        assert leaked not in text, leaked


@pytest.mark.django_db
def test_csv_export_is_deidentified_and_k_anonymous(client, study, erin, bob):
    response = _export(client, erin, study["dataset"])
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="dataset-')
    assert response["Content-Disposition"].endswith('.csv"')
    assert response["X-Content-Type-Options"] == "nosniff"
    _assert_clean(response.content, study["patients"])
    rows = _rows(response)
    assert list(rows[0]) == list(research.CSV_COLUMNS)
    # k-anonymity: each released (age band, sex) covers at least 5 subjects; bob's group of one is left out.
    groups = defaultdict(set)
    for row in rows:
        groups[(row["age_band"], row["sex"])].add(row["subject"])
    assert groups and all(len(s) >= deid.K for s in groups.values())
    assert set(groups) == {("40-44", "female")}
    assert len({row["subject"] for row in rows}) == 6
    # No exact dates: the year of the subject's first record and a per-subject offset.
    assert {row["first_year"] for row in rows} == {str(timezone.localdate().year)}
    assert {row["day_offset"] for row in rows} == {"0"}
    assert "[REMOVED]" in "".join(row["value"] for row in rows if row["field"] == "text")
    assert any(r["field"] == "observation" and r["name"] == "WBC" and r["value"] == "10.8" for r in rows)
    assert any(r["field"] == "medication" and r["dose"] == "500 mg" and r["route"] == "oral" for r in rows)
    export = ResearchExport.objects.get()
    assert (export.format, export.patient_count, export.suppressed_patients) == ("csv", 6, 1)
    assert export.row_count == len(rows)
    import hashlib

    assert export.sha256 == hashlib.sha256(response.content).hexdigest()
    # Nothing of bob's was used, so nothing of his was audited as exported.
    assert not AccessEvent.objects.filter(patient=bob, action="export").exists()


@pytest.mark.django_db
def test_fhir_export_validates_and_is_deidentified(client, study, erin):
    response = _export(client, erin, study["dataset"], fmt="fhir")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    assert response["Content-Disposition"].endswith('.fhir.json"')
    _assert_clean(response.content, study["patients"])
    bundle = json.loads(response.content)
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    resources = [e["resource"] for e in bundle["entry"]]
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) == 6
    for patient in patients:
        assert set(patient) == {"resourceType", "id", "gender", "extension"}
        assert patient["gender"] == "female"
        assert patient["extension"] == [
            {"url": research.AGE_BAND_URL, "valueString": "40-44"},
            {"url": research.FIRST_YEAR_URL, "valueInteger": timezone.localdate().year},
        ]
    kinds = defaultdict(int)
    for resource in resources:
        kinds[resource["resourceType"]] += 1
        # No resource carries a date: only the offset from the subject's first record.
        assert not {"effectiveDateTime", "effectivePeriod", "date", "context"} & set(resource)
    assert kinds == {
        "Patient": 6,
        "Observation": 12,
        "DiagnosticReport": 6,
        "MedicationStatement": 6,
        "DocumentReference": 6,
    }
    quantity = next(r for r in resources if r["resourceType"] == "Observation" and "valueQuantity" in r)
    assert quantity["valueQuantity"] == {"value": 10.8, "unit": "10^9/L"}
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(r["subject"]["reference"] in full_urls for r in resources if "subject" in r)

    from fhir.resources.R4B.bundle import Bundle

    parsed = Bundle.model_validate(bundle)
    assert len(parsed.entry) == len(bundle["entry"])


@pytest.mark.django_db
def test_only_current_research_grants_count(client, study, erin, institute, carol):
    today = timezone.localdate()
    # A treatment grant to the institute contributes nothing.
    treated = _patient("t@example.org", "孙美玲", "Sun Meiling", birth=date(today.year - 42, 3, 1), sex="female")
    chain_seal()
    _write(treated, carol)
    grant_issue(
        patient=treated,
        grantee_institution=institute,
        scope="all",
        purpose="treatment",
        valid_from=NOW() - timedelta(minutes=1),
        valid_until=NOW() + timedelta(days=30),
    )
    dataset = study["dataset"]
    summary = research.dataset_summary(erin, dataset)
    assert (summary.patients, summary.released_patients, summary.suppressed_patients) == (7, 6, 1)
    assert "Sun Meiling" not in _export(client, erin, dataset).content.decode("utf-8-sig")

    # A revoked grant drops out of the next export; an expired one too: the group falls under k and goes.
    women = study["women"]
    revoked = grant_revoke(patient=women[0], grant=study["grants"][women[0].pk])
    rows = _rows(_export(client, erin, dataset))
    assert len({r["subject"] for r in rows}) == 5
    Grant.objects.filter(pk=study["grants"][women[1].pk].pk).update(valid_until=NOW() - timedelta(seconds=1))
    rows = _rows(_export(client, erin, dataset))
    assert rows == []
    summary = research.dataset_summary(erin, dataset)
    assert (summary.patients, summary.released_patients, summary.suppressed_patients) == (5, 0, 5)
    late = AccessEvent.objects.filter(patient=women[0], action="export", at__gte=revoked.revoked_at)
    assert not late.exists()


@pytest.mark.django_db
def test_drafts_and_unstored_versions_are_left_out(study, erin, alice, carol):
    visit = visit_open(clinician=carol, patient=alice)
    draft = record_create(patient=alice, author=carol, kind="note", visit=visit, content={"title": "draft"})
    pending = record_finalize_imported(
        record=record_create(patient=alice, author=carol, kind="note", visit=visit, content={"title": "pending"})
    )
    assert RecordVersion.objects.get(pk=pending.current_version_id).storage == "pending"
    ids = {r.pk for r in research.research_records(erin, ["note"])}
    assert draft.pk not in ids and pending.pk not in ids
    assert len(ids) == 7


@pytest.mark.django_db
def test_every_export_is_audited_and_shows_in_the_footprint(client, study, erin, alice, institute):
    response = _export(client, erin, study["dataset"])
    assert response.status_code == 200
    export = ResearchExport.objects.get()
    events = AccessEvent.objects.filter(action="export", actor=erin)
    assert events.count() == 6 * 3  # six released patients, three records each
    assert set(events.values_list("purpose", "basis", "outcome")) == {("research", "grant", "allowed")}
    assert set(events.values_list("actor_institution", flat=True)) == {institute.pk}
    alice_records = {r.pk for r in study["records"][alice.pk]}
    assert set(events.filter(patient=alice).values_list("record", flat=True)) == alice_records
    assert all(str(export.public_id) in e.detail for e in events)

    login(client, alice)
    page = client.get(reverse("patient_footprint"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Exported for research" in page
    assert "Purpose: Research" in page
    assert erin.display_name in page


@pytest.mark.django_db
def test_export_reads_in_constant_queries(client, study, erin, django_assert_max_num_queries):
    login(client, erin)
    url = reverse("research_dataset_export", args=[study["dataset"].public_id])
    with django_assert_max_num_queries(40):  # 18 records; one query each would be far more
        assert client.post(url, {"format": "csv"}).status_code == 200


@pytest.mark.django_db
def test_dataset_page_shows_summary_chart_and_past_exports(client, study, erin):
    dataset = study["dataset"]
    _export(client, erin, dataset)
    page = client.get(reverse("research_dataset", args=[dataset.public_id]), HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<svg" in html and "40-44" in html
    assert "k = 5" in html
    assert ResearchExport.objects.get().sha256[:16] in html
    assert "patient left out" in html  # bob alone: one, in the singular
    assert "in widened bands: 0; left out: 1." in html  # not "1 are left out"
    home = client.get(reverse("research_home"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Adults 2026" in home and "No datasets yet" not in home


@pytest.mark.django_db
def test_researcher_creates_a_dataset_with_clear_errors(client, node, erin):
    login(client, erin)
    home = client.get(reverse("research_home"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "No datasets yet" in home and "New dataset" in home
    url = reverse("research_dataset_new")
    response = client.post(url, {"title": "", "kinds": []}, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert "Choose at least one kind of record." in response.content.decode()
    response = client.post(url, {"title": "x", "kinds": ["nonsense"]}, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    response = client.post(url, {"title": "Lipids", "kinds": ["lab_report"]})
    dataset = ResearchDataset.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("research_dataset", args=[dataset.public_id])
    assert (dataset.institution_id, dataset.created_by_id, dataset.kinds) == (
        erin.institution_id,
        erin.pk,
        ["lab_report"],
    )
    with translation.override("en"), pytest.raises(ValidationError, match="1 to 200"):
        research.dataset_create(user=erin, title="x" * 201, kinds=["note"])


# -- who is denied ----------------------------------------------------------------------------------
def _urls(dataset):
    return [
        ("get", reverse("research_home"), {}),
        ("post", reverse("research_dataset_new"), {"title": "t", "kinds": ["note"]}),
        ("get", reverse("research_dataset", args=[dataset.public_id]), {}),
        ("post", reverse("research_dataset_export", args=[dataset.public_id]), {"format": "csv"}),
    ]


@pytest.fixture
def other_researchers(db, institute):
    elsewhere = InstitutionFactory(code="lab2", kind="research", name="另一研究院", name_en="Other Institute")
    frank = UserFactory(email="frank@example.org", role="researcher", institution=elsewhere, verified=True)
    enable_totp(frank)
    unverified = UserFactory(email="gil@example.org", role="researcher", institution=institute)
    enable_totp(unverified)
    no_2fa = UserFactory(email="hal@example.org", role="researcher", institution=institute, verified=True)
    return {"elsewhere": frank, "unverified": unverified, "no_2fa": no_2fa}


@pytest.mark.django_db
def test_every_url_denies_everyone_else(client, study, alice, carol, dave, other_researchers):
    dataset = study["dataset"]
    for method, url, data in _urls(dataset):
        client.logout()
        response = getattr(client, method)(url, data)
        assert response.status_code == 302 and reverse("account_login") in response["Location"], url
        for user in (alice, carol, dave):
            login(client, user)
            assert getattr(client, method)(url, data).status_code == 403, (url, user)
        login(client, other_researchers["unverified"])
        response = getattr(client, method)(url, data)
        if url != reverse("research_home"):
            assert response.status_code == 403, url
        login(client, other_researchers["no_2fa"])
        response = getattr(client, method)(url, data)
        if url != reverse("research_home"):
            assert response.status_code == 302 and reverse("mfa_activate_totp") in response["Location"], url
    assert ResearchExport.objects.count() == 0
    assert ResearchDataset.objects.count() == 1
    assert not AccessEvent.objects.filter(action="export", outcome="allowed").exists()
    # The home page lists nothing to those not cleared, and says why rather than "No datasets yet".
    expected = {
        "unverified": "once its administrator has verified your account",
        "no_2fa": "once two-factor authentication is on for your account",
    }
    for name, reason in expected.items():
        login(client, other_researchers[name])
        home = client.get(reverse("research_home"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
        assert "Adults 2026" not in home and "No datasets yet" not in home and "New dataset" not in home
        assert reason in home, name


@pytest.mark.django_db
def test_another_institute_gets_404_and_the_attempt_is_audited(client, study, other_researchers):
    frank = other_researchers["elsewhere"]
    dataset = study["dataset"]
    login(client, frank)
    assert client.get(reverse("research_dataset", args=[dataset.public_id])).status_code == 404
    response = client.post(reverse("research_dataset_export", args=[dataset.public_id]), {"format": "csv"})
    assert response.status_code == 404
    assert "Adults 2026" not in client.get(reverse("research_home")).content.decode()
    denied = AccessEvent.objects.filter(actor=frank, outcome="denied")
    assert set(denied.values_list("action", flat=True)) == {"view", "export"}
    assert ResearchExport.objects.count() == 0
    with pytest.raises(PermissionDenied):
        research.dataset_export(user=frank, dataset=dataset, fmt="csv")


@pytest.mark.django_db
def test_services_refuse_researchers_who_are_not_cleared(study, carol, other_researchers):
    for user in (carol, other_researchers["unverified"], other_researchers["no_2fa"]):
        with pytest.raises(PermissionDenied):
            research.research_records(user, ["note"])
        with pytest.raises(PermissionDenied):
            research.dataset_create(user=user, title="t", kinds=["note"])
        with pytest.raises(PermissionDenied):
            research.dataset_export(user=user, dataset=study["dataset"], fmt="csv")


@pytest.mark.django_db
def test_records_across_new_year_do_not_reveal_their_dates(client, study, erin):
    """Each row carries the subject's first year, not its own: a day apart across New Year stays vague."""
    from records.models import MedicalRecord

    lab, note, _rx = study["records"][study["women"][0].pk]
    eve = timezone.make_aware(timezone.datetime(2025, 12, 31, 12))
    MedicalRecord.objects.filter(pk=lab.pk).update(created_at=eve)
    MedicalRecord.objects.filter(pk=note.pk).update(created_at=eve + timedelta(days=1))
    rows = _rows(_export(client, erin, study["dataset"]))
    hers = [r for r in rows if r["first_year"] == "2025"]
    # All her rows (one subject) say 2025, her first record's year; offsets 0, 1 and the days to today.
    assert len({r["subject"] for r in hers}) == 1
    assert {r["kind"] for r in hers} == {"lab_report", "note", "prescription"}
    assert {"0", "1"} <= {r["day_offset"] for r in hers}


@pytest.mark.django_db
def test_k_anonymity_is_computed_over_records_the_researcher_can_open(client, study, erin, institute):
    """Two women whose keys the institute does not hold drop out before grouping, not after."""
    from records.models import WrappedKey

    women = study["women"][:2]
    WrappedKey.objects.filter(institution=institute, version__record__patient__in=women).delete()
    login(client, erin)
    page = client.get(reverse("research_dataset", args=[study["dataset"].public_id]), HTTP_ACCEPT_LANGUAGE="en")
    rows = _rows(_export(client, erin, study["dataset"]))
    released = {row["subject"] for row in rows}
    summary = page.context["summary"]
    assert summary.released_patients == len(released) == 0  # 4 women left: under k, all suppressed
    assert ResearchExport.objects.get().row_count == 0
