"""Two things a new user hit in the first hour: the Chinese share form could not be submitted
(its date inputs held 2026/12/04), and DICOM files with a TIFF-looking preamble showed a broken
image. Screenshots go to test-artifacts/."""

from __future__ import annotations

import time

import pytest

from tests.browser.test_records_flow import SIGNED, doctor_opens_visit, sign_in
from tests.records.conftest import dicom_bytes

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_chinese_share_form_finds_a_doctor_by_name_and_submits(browser, live_server, people, artifacts_dir):
    from chain.ledger_services import chain_seal
    from records.models import Grant

    doctor, _secret, patient = people
    chain_seal()  # key registrations: a grant names a registered key
    base = live_server.url
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    sign_in(page, base, patient.email)
    page.wait_for_url(f"{base}/patient/")
    page.goto(f"{base}/patient/sharing/new/")
    for name in ("valid_from", "valid_until"):
        value = page.input_value(f"input[name={name}]")
        assert len(value) == 10 and value[4] == "-" and value[7] == "-", value  # ISO, or Chrome drops it
    page.fill("input[name=grantee_query]", "林医生")
    page.click("button[name=find]")
    page.wait_for_selector("input[name=grantee_choice]")
    page.check(f"input[name=grantee_choice][value='{doctor.public_id}']")
    page.screenshot(path=artifacts_dir / "sharing-zh-find-doctor.png", full_page=True)
    page.click("form.grant-form .actions button[type=submit]")
    page.wait_for_url(f"{base}/patient/sharing/")
    grant = Grant.objects.get()
    assert grant.grantee_user == doctor
    page.screenshot(path=artifacts_dir / "sharing-zh-granted.png", full_page=True)
    assert grant.last_day.isoformat() in page.content()
    context.close()


def test_dicom_previews_show_or_say_why_not(browser, live_server, people, artifacts_dir, tmp_path):
    _doctor, _secret, patient = people
    context, page = doctor_opens_visit(
        browser, live_server.url, people, patient_as=patient.health_id_display, height=1000
    )
    page.click("a.btn:has-text('Imaging study')")
    page.fill("input[name=title]", "CT chest")
    page.select_option("select[name=modality]", "CT")
    page.fill("input[name=body_site]", "Chest")
    page.fill("textarea[name=findings]", "Clear")
    page.click("text=Save draft")
    page.wait_for_url("**/edit/")
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(dicom_bytes(64, 64, preamble=b"II*\x00" + bytes(124)))
    report = tmp_path / "report.dcm"
    report.write_bytes(dicom_bytes(pixels=False))
    page.set_input_files("#id_file", [str(ct), str(report)])
    page.click("[data-upload-button]")
    page.wait_for_selector("text=report.dcm")
    page.click("[data-finalize-button]")
    page.wait_for_url(SIGNED)
    page.wait_for_selector("img.file-preview")
    # Polled from here: wait_for_function compiles its predicate with eval, which the page's CSP forbids.
    deadline = time.monotonic() + 15
    while page.locator("img.file-preview").evaluate("img => img.naturalWidth") == 0:
        assert time.monotonic() < deadline, "the DICOM preview never loaded"
        page.wait_for_timeout(100)
    assert page.locator("img.file-preview").count() == 1  # only the file that has an image
    assert page.locator("text=No preview for this DICOM file").count() == 1
    page.screenshot(path=artifacts_dir / "doctor-dicom-previews.png", full_page=True)
    context.close()
