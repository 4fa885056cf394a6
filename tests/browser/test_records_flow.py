"""Doctor writes records in a visit, uploads an imaging file; the patient sees
them on the timeline, opens them and uploads a PDF with a progress bar.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re

import pytest

from accounts.demo import DEMO_PASSWORD
from tests.factories import totp_code
from tests.records.conftest import dicom_bytes, pdf_bytes

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SIGNED = re.compile(r"/records/[0-9a-f-]{36}/$")  # the record page, not its edit page


def sign_in(page, base, email, secret=None):
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", DEMO_PASSWORD)
    page.click("form.form button[type=submit]")
    if secret:
        page.wait_for_url("**/2fa/authenticate/**")
        page.fill("input[name=code]", totp_code(secret))
        page.click("form.form button[type=submit]")


def doctor_opens_visit(browser, base, people, *, patient_as: str, height: int = 900):
    """The doctor signed in (with their code) on a new visit's page; ``patient_as``: email or Yilian ID."""
    doctor, secret, _patient = people
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": height})
    page = context.new_page()
    sign_in(page, base, doctor.email, secret)
    page.wait_for_url(f"{base}/clinic/")
    page.goto(f"{base}/clinic/patients/")
    page.fill("input[name=patient]", patient_as)
    page.click("text=Open visit")
    page.wait_for_url("**/clinic/visits/**")
    return context, page


def test_doctor_writes_patient_reads_and_uploads(browser, live_server, people, artifacts_dir, tmp_path):
    from chain.ledger_services import chain_seal

    _doctor, _secret, patient = people
    base = live_server.url
    context, page = doctor_opens_visit(browser, base, people, patient_as=patient.email)
    visit_url = page.url

    # A prescription with one medication.
    page.click("a.btn:has-text('Prescription')")
    page.fill("input[name=title]", "Amoxicillin course")
    page.fill("input[name=medications-0-name]", "Amoxicillin")
    page.fill("input[name=medications-0-dose]", "500 mg")
    page.select_option("select[name=medications-0-route]", "oral")
    page.fill("input[name=medications-0-frequency]", "three times daily")
    page.fill("input[name=medications-0-duration]", "7 days")
    page.screenshot(path=artifacts_dir / "doctor-prescription-form.png", full_page=True)
    page.click("text=Save draft")
    page.wait_for_url("**/edit/")
    page.click("[data-finalize-button]")
    page.wait_for_url(SIGNED)

    # A lab report with an abnormal value.
    page.goto(visit_url)
    page.click("a.btn:has-text('Lab report')")
    page.fill("input[name=title]", "Blood count")
    page.fill("input[name=specimen]", "venous blood")
    page.fill("input[name=observations-0-name]", "WBC")
    page.fill("input[name=observations-0-value]", "11.2")
    page.fill("input[name=observations-0-unit]", "10^9/L")
    page.fill("input[name=observations-0-reference_range]", "3.5-9.5")
    page.select_option("select[name=observations-0-flag]", "high")
    page.click("text=Save draft")
    page.wait_for_url("**/edit/")
    page.click("[data-finalize-button]")
    page.wait_for_url(SIGNED)

    # An imaging study with a DICOM file.
    page.goto(visit_url)
    page.click("a.btn:has-text('Imaging study')")
    page.fill("input[name=title]", "MRI brain")
    page.select_option("select[name=modality]", "MR")
    page.fill("input[name=body_site]", "Head")
    page.fill("textarea[name=findings]", "No abnormality")
    page.click("text=Save draft")
    page.wait_for_url("**/edit/")
    scan = tmp_path / "brain.dcm"
    scan.write_bytes(dicom_bytes(64, 64))
    page.set_input_files("#id_file", str(scan))
    page.click("[data-upload-button]")
    page.wait_for_selector("text=brain.dcm")
    page.click("[data-finalize-button]")
    page.wait_for_url(SIGNED)
    chain_seal()
    page.wait_for_selector("text=Anchored in block", timeout=20_000)  # the page polls; nobody reloads
    page.screenshot(path=artifacts_dir / "doctor-imaging-record.png", full_page=True)
    context.close()

    # The patient sees all three on the timeline and opens them.
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, base, patient.email)
    page.wait_for_url(f"{base}/patient/")
    for title in ("Amoxicillin course", "Blood count", "MRI brain"):
        assert page.locator(f"text={title}").count() == 1
    page.screenshot(path=artifacts_dir / "patient-timeline-zh-CN.png", full_page=True)
    page.click("text=Blood count")
    page.wait_for_selector("text=11.2")
    page.go_back()
    page.click("text=MRI brain")
    page.wait_for_selector("img.file-preview")
    page.screenshot(path=artifacts_dir / "patient-imaging-zh-CN.png", full_page=True)

    # The patient uploads a PDF and watches the progress bar.
    page.goto(f"{base}/patient/upload/")
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(pdf_bytes("discharge letter") + b"0" * (3 << 20))
    page.fill("input[name=title]", "Discharge letter")
    page.set_input_files("input[type=file]", str(pdf))
    page.click("form[data-upload] button[type=submit]")
    page.wait_for_selector("[data-progress]:not([hidden])")
    page.screenshot(path=artifacts_dir / "patient-upload-progress.png", full_page=True)
    page.wait_for_url("**/records/**")
    page.wait_for_selector("iframe.pdf-preview")
    page.screenshot(path=artifacts_dir / "patient-document.png", full_page=True)
    page.goto(f"{base}/patient/")
    assert page.locator("text=Discharge letter").count() == 1
    context.close()
