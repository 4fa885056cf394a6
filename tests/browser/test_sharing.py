"""The patient shares with a doctor at another hospital through the wizard, the
doctor reads, the patient revokes, the doctor is denied on the next request.
Screenshots go to test-artifacts/sharing-*.png.
"""

from __future__ import annotations

import pytest

from tests.browser.test_records_flow import sign_in
from tests.factories import InstitutionFactory, UserFactory, enable_totp

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def story(chromium_available, node):
    from chain.ledger_services import chain_seal
    from records.clinical import storage
    from records.clinical.services import record_create, record_finalize_imported, visit_open
    from records.models import RecordVersion

    east = InstitutionFactory(code="east", kind="hospital", name="东院", name_en="East Hospital")
    west = InstitutionFactory(code="west", kind="hospital", name="西院", name_en="West Hospital")
    author = UserFactory(
        email="dr.lin@example.org", role="clinician", institution=east, verified=True, name="林医生", name_en="Dr Lin"
    )
    enable_totp(author)
    doctor = UserFactory(
        email="dr.zhao@example.org", role="clinician", institution=west, verified=True, name="赵医生", name_en="Dr Zhao"
    )
    secret = enable_totp(doctor)
    patient = UserFactory(email="mei@example.org", role="patient", name="王美", name_en="Wang Mei")
    visit = visit_open(clinician=author, patient=patient)
    record = record_create(
        patient=patient,
        author=author,
        kind="lab_report",
        content={"title": "Full blood count", "summary": "Haemoglobin slightly low"},
        visit=visit,
    )
    record_finalize_imported(record=record)
    for version in RecordVersion.objects.filter(storage="pending"):
        storage.version_store(version.pk)
    chain_seal()  # key registrations and the anchor
    return patient, doctor, secret, record


def test_patient_grants_doctor_reads_patient_revokes(browser, live_server, story, artifacts_dir):
    from chain.ledger_services import chain_seal
    from records.models import AccessEvent, Grant

    patient, doctor, secret, record = story
    base = live_server.url
    record_url = f"{base}/records/{record.public_id}/"

    doc_ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    doc = doc_ctx.new_page()
    sign_in(doc, base, doctor.email, secret)
    doc.wait_for_url(f"{base}/clinic/")
    assert doc.goto(record_url).status == 403  # not shared yet

    pat_ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    pat = pat_ctx.new_page()
    sign_in(pat, base, patient.email)
    pat.wait_for_url(f"{base}/patient/")
    pat.click("nav.mainnav a[href='/patient/sharing/']")
    pat.wait_for_url(f"{base}/patient/sharing/")
    pat.click("text=Share records")
    pat.wait_for_url("**/patient/sharing/new/")
    pat.check("input[name=grantee_kind][value=user]")
    pat.fill("input[name=grantee_email]", doctor.email)
    pat.check("input[name=scope][value=kinds]")
    pat.check("input[name=kinds][value=lab_report]")
    pat.select_option("select[name=purpose]", "second_opinion")
    pat.screenshot(path=artifacts_dir / "sharing-wizard.png", full_page=True)
    pat.click("form.grant-form .actions button[type=submit]")
    pat.wait_for_url(f"{base}/patient/sharing/")
    assert pat.locator("#grants-active .grant").count() == 1
    pat.screenshot(path=artifacts_dir / "sharing-active.png", full_page=True)
    chain_seal()  # the grant goes on chain

    # The doctor finds the patient under "Shared with you" and reads the record.
    doc.goto(f"{base}/clinic/patients/")
    assert doc.locator("#shared-with-me").get_by_text("Wang Mei").count() == 1
    doc.screenshot(path=artifacts_dir / "sharing-doctor-shared-with-me.png", full_page=True)
    doc.locator("#shared-with-me a").first.click()
    doc.wait_for_url("**/clinic/patients/**")
    doc.locator(f"a[href='/records/{record.public_id}/']").click()
    doc.wait_for_url(record_url)
    assert "Full blood count" in doc.content()
    doc.screenshot(path=artifacts_dir / "sharing-doctor-reads.png", full_page=True)
    event = AccessEvent.objects.filter(actor=doctor, record=record, outcome="allowed").latest("at")
    assert (event.basis, event.purpose) == ("grant", "second_opinion")

    # The patient revokes; the doctor's very next request is refused.
    pat.goto(f"{base}/patient/sharing/")
    pat.locator("#grants-active .grant-revoke summary").click()
    pat.screenshot(path=artifacts_dir / "sharing-revoke-confirm.png", full_page=True)
    pat.click("text=Revoke access now")
    pat.wait_for_url(f"{base}/patient/sharing/")
    assert pat.locator("#grants-past .grant-revoked").count() == 1
    pat.screenshot(path=artifacts_dir / "sharing-revoked.png", full_page=True)
    assert doc.goto(record_url).status == 403
    doc.screenshot(path=artifacts_dir / "sharing-doctor-denied.png", full_page=True)
    assert AccessEvent.objects.filter(actor=doctor, record=record, outcome="denied").count() == 2
    grant = Grant.objects.get()
    assert grant.status == "revoked" and grant.revoked_tx  # the grant was sealed: revocation on chain at once
    doc_ctx.close()
    pat_ctx.close()


def test_break_glass_doctor_opens_patient_sees_admin_closes(browser, live_server, story, artifacts_dir):
    from accounts.demo import DEMO_PASSWORD
    from records.models import AccessEvent, BreakGlass

    patient, doctor, secret, record = story
    admin = UserFactory(
        email="admin.west@example.org", role="institution_admin", institution=doctor.institution, verified=True
    )
    admin_secret = enable_totp(admin)
    base = live_server.url
    record_url = f"{base}/records/{record.public_id}/"

    doc_ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    doc = doc_ctx.new_page()
    sign_in(doc, base, doctor.email, secret)
    doc.wait_for_url(f"{base}/clinic/")
    assert doc.goto(record_url).status == 403
    doc.goto(f"{base}/clinic/patients/")
    doc.click("text=Emergency access")
    doc.wait_for_url(f"{base}/clinic/break-glass/")
    doc.fill("input[name=patient]", patient.email)
    doc.check("input[name=reason][value=unconscious]")
    doc.fill("textarea[name=detail]", "Brought in unconscious; checking anticoagulants before surgery")
    doc.fill("input[name=credential]", "not my password")
    doc.click("text=Break the glass")
    assert doc.locator(".field.has-error").get_by_text("not your password").count() == 1
    doc.fill("input[name=credential]", DEMO_PASSWORD)
    doc.screenshot(path=artifacts_dir / "break-glass-form.png", full_page=True)
    doc.click("text=Break the glass")
    doc.wait_for_url(f"{base}/clinic/patients/{patient.public_id}/")
    assert doc.locator(".bg-banner").count() == 1
    doc.screenshot(path=artifacts_dir / "break-glass-chart.png", full_page=True)
    doc.locator(f"a[href='/records/{record.public_id}/']").click()
    doc.wait_for_url(record_url)
    assert "Full blood count" in doc.content()
    read = AccessEvent.objects.filter(actor=doctor, record=record, outcome="allowed").latest("at")
    assert (read.basis, read.purpose) == ("break-glass", "emergency")

    # The patient sees it, in red, at the top of the footprint.
    pat_ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    pat = pat_ctx.new_page()
    sign_in(pat, base, patient.email)
    pat.wait_for_url(f"{base}/patient/")
    pat.goto(f"{base}/patient/footprint/")
    assert pat.locator("#emergency-access").count() == 1
    assert pat.locator(".fp-entry.fp-breakglass").count() >= 1
    pat.screenshot(path=artifacts_dir / "break-glass-footprint-zh-CN.png", full_page=True)

    # The west hospital's administrator reviews and closes it; the doctor's next request is refused.
    adm_ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    adm = adm_ctx.new_page()
    sign_in(adm, base, admin.email, admin_secret)
    adm.wait_for_url(f"{base}/accounts/institution/")
    adm.click("a[href='/institution/break-glass/']")
    adm.wait_for_url(f"{base}/institution/break-glass/")
    adm.screenshot(path=artifacts_dir / "break-glass-review-list.png", full_page=True)
    adm.locator("tr[data-session] a").first.click()
    adm.wait_for_url("**/institution/break-glass/**/")
    assert "checking anticoagulants" in adm.content()
    adm.check("input[name=review][value=justified]")
    adm.fill("textarea[name=note]", "Confirmed with the emergency department log")
    adm.screenshot(path=artifacts_dir / "break-glass-review.png", full_page=True)
    adm.click("text=Record the review and close")
    adm.wait_for_url(f"{base}/institution/break-glass/")
    session = BreakGlass.objects.get()
    assert session.review == "justified" and session.closed_by == admin
    assert doc.goto(record_url).status == 403
    for ctx in (doc_ctx, pat_ctx, adm_ctx):
        ctx.close()
