"""A researcher defines a dataset over consented records, sees the k-anonymised summary and downloads
the CSV; the patient's footprint shows the research use. Screenshots go to test-artifacts/research-*.png.
"""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.browser.test_records_flow import sign_in
from tests.factories import InstitutionFactory, UserFactory, enable_totp

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WOMEN = [("王丽娟", "Wang Lijuan"), ("刘芳华", "Liu Fanghua"), ("陈静怡", "Chen Jingyi"), ("杨雪梅", "Yang Xuemei")]
MEN = [("周建国", "Zhou Jianguo")]


@pytest.fixture
def study(chromium_available, node):
    from django.utils import timezone

    from accounts.models import User
    from chain.ledger_services import chain_seal
    from records.clinical import storage
    from records.clinical.services import record_create, record_finalize_imported, visit_open
    from records.sharing.grants import grant_issue

    hospital = InstitutionFactory(code="east", kind="hospital", name="东院", name_en="East Hospital")
    institute = InstitutionFactory(code="lab", kind="research", name="研究院", name_en="Research Institute")
    doctor = UserFactory(email="dr.lin@example.org", role="clinician", institution=hospital, verified=True)
    enable_totp(doctor)
    researcher = UserFactory(
        email="dr.qian@example.org", role="researcher", institution=institute, verified=True, name_en="Dr Qian"
    )
    secret = enable_totp(researcher)
    today = timezone.localdate()
    patients = []
    for i, (name, name_en) in enumerate([*WOMEN, ("吴敏", "Wu Min"), *MEN]):
        sex = "male" if (name, name_en) in MEN else "female"
        patient = UserFactory(email=f"p{i}@example.org", role="patient", name=name, name_en=name_en)
        User.objects.filter(pk=patient.pk).update(birth_date=date(today.year - 42, 3, 1 + i), sex=sex)
        patients.append(patient)
    chain_seal()
    for patient in patients:
        visit = visit_open(clinician=doctor, patient=patient)
        record = record_create(
            patient=patient,
            author=doctor,
            kind="lab_report",
            visit=visit,
            content={
                "title": f"Blood count for {patient.name_en}",
                "specimen": "venous blood",
                "observations": [{"name": "Hb", "value": "128", "unit": "g/L", "reference_range": "115–150"}],
            },
        )
        record = record_finalize_imported(record=record)
        storage.version_store(record.current_version_id)
        grant_issue(
            patient=patient,
            grantee_institution=institute,
            scope="all",
            purpose="research",
            valid_from=timezone.now() - timedelta(minutes=1),
            valid_until=timezone.now() + timedelta(days=365),
        )
    chain_seal()
    return researcher, secret, patients


def test_researcher_builds_and_exports_a_dataset(browser, live_server, study, artifacts_dir):
    from records.models import AccessEvent, ResearchExport

    researcher, secret, patients = study
    base = live_server.url
    ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    sign_in(page, base, researcher.email, secret)
    page.wait_for_url(f"{base}/research/")
    page.screenshot(path=artifacts_dir / "research-home-empty.png", full_page=True)
    page.fill("input[name=title]", "Haemoglobin in adults")
    page.check("input[name=kinds][value=lab_report]")
    page.click("form[action='/research/datasets/new/'] button[type=submit]")
    page.wait_for_url("**/research/datasets/**")
    # Five women in their early forties are released; the one man is a group of one and is left out.
    assert page.locator(".fp-stat strong").first.inner_text() == "5"
    page.screenshot(path=artifacts_dir / "research-dataset.png", full_page=True)
    with page.expect_download() as download_info:
        page.click("text=Download CSV")
    path = download_info.value.path()
    text = Path(path).read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len({row["subject"] for row in rows}) == 5
    for patient in patients:
        assert patient.name not in text and patient.name_en not in text and patient.email not in text
    assert ResearchExport.objects.get().row_count == len(rows)
    page.reload()
    assert page.locator("#past-exports tbody tr").count() == 1
    page.screenshot(path=artifacts_dir / "research-dataset-exported.png", full_page=True)

    # The patient sees the research use in their footprint.
    patient = patients[0]
    assert AccessEvent.objects.filter(patient=patient, action="export", purpose="research").count() == 1
    pat_ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    pat = pat_ctx.new_page()
    sign_in(pat, base, patient.email)
    pat.wait_for_url(f"{base}/patient/")
    pat.goto(f"{base}/patient/footprint/?action=export")
    assert pat.locator(".fp-entry").count() == 1
    pat.screenshot(path=artifacts_dir / "research-footprint-zh-CN.png", full_page=True)
    ctx.close()
    pat_ctx.close()
