"""No page breaks its own Content-Security-Policy: Chromium reports no violation anywhere."""

from __future__ import annotations

import pytest

from tests.browser.test_records_flow import sign_in
from tests.records.conftest import pdf_bytes

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + e.sourceFile + ":" + e.lineNumber);
});
"""


def _visit(page, url, seen):
    page.goto(url)
    page.wait_for_load_state("networkidle")
    seen.extend(f"{url}: {v}" for v in page.evaluate("window.__csp || []"))


def _context(browser, seen):
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    context.add_init_script(WATCH)
    page = context.new_page()
    page.on("console", lambda m: "Content Security Policy" in m.text and seen.append(f"console: {m.text}"))
    return context, page


def test_no_page_violates_the_policy(browser, live_server, people, tmp_path):
    from records.clinical.services import record_create, record_finalize_imported, visit_open
    from records.models import MedicalRecord

    doctor, secret, patient = people
    base = live_server.url
    visit = visit_open(clinician=doctor, patient=patient)
    record = record_create(
        patient=patient, author=doctor, kind="note", content={"title": "Note", "text": "x"}, visit=visit
    )
    record_finalize_imported(record=record)
    seen: list[str] = []

    context, page = _context(browser, seen)
    _visit(page, f"{base}/accounts/login/", seen)
    sign_in(page, base, doctor.email, secret)
    page.wait_for_url(f"{base}/clinic/")
    for path in (
        "/clinic/",
        "/clinic/patients/",
        f"/clinic/patients/{patient.public_id}/",
        f"/clinic/visits/{visit.public_id}/",
    ):
        _visit(page, base + path, seen)
    page.goto(f"{base}/clinic/visits/{visit.public_id}/")
    page.click("a.btn:has-text('Note')")
    page.fill("input[name=title]", "Draft")
    page.fill("textarea[name=text]", "draft")
    page.click("text=Save draft")
    page.wait_for_url("**/edit/")
    seen.extend(page.evaluate("window.__csp || []"))
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(pdf_bytes("letter"))
    page.set_input_files("#id_file", str(pdf))
    page.click("[data-upload-button]")
    page.wait_for_selector("text=letter.pdf")
    page.click("[data-finalize-button]")
    page.wait_for_url("**/records/**/")
    page.wait_for_load_state("networkidle")
    seen.extend(page.evaluate("window.__csp || []"))
    context.close()

    context, page = _context(browser, seen)
    sign_in(page, base, patient.email)
    page.wait_for_url(f"{base}/patient/")
    drafted = MedicalRecord.objects.exclude(pk=record.pk).get()
    for path in (
        "/patient/",
        "/patient/footprint/",
        "/patient/sharing/",
        "/patient/sharing/new/",
        "/patient/upload/",
        "/notifications/",
        "/accounts/profile/",
        f"/records/{record.public_id}/",
        f"/records/{drafted.public_id}/",  # with its PDF in a frame
    ):
        _visit(page, base + path, seen)
    context.close()
    assert not seen, "\n".join(seen)
