"""The patient opens her footprint: the doctor's reads, a refused attempt, the chart,
and a chain proof that her browser checks itself. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.browser.test_records_flow import sign_in
from tests.factories import InstitutionFactory, UserFactory, enable_totp

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def history(chromium_available, node):
    """Three months of accesses to Wang Mei's data, logged and sealed; the last few still pending."""
    from django.utils import timezone

    from chain.ledger_services import chain_seal
    from records.clinical.services import record_create, record_finalize_imported, visit_open
    from records.footprint.tasks import log_accesses
    from records.models import AccessEvent
    from records.policy import RecordAccessDenied, record_get_for_user

    east = InstitutionFactory(code="east", kind="hospital", name="东院", name_en="East Hospital")
    west = InstitutionFactory(code="west", kind="hospital", name="西院", name_en="West Hospital")
    doctor = UserFactory(
        email="dr.lin@example.org", role="clinician", institution=east, verified=True, name="林医生", name_en="Dr Lin"
    )
    enable_totp(doctor)
    stranger = UserFactory(
        email="dr.zhao@example.org", role="clinician", institution=west, verified=True, name="赵医生", name_en="Dr Zhao"
    )
    enable_totp(stranger)
    patient = UserFactory(email="mei@example.org", role="patient", name="王美", name_en="Wang Mei")

    now = timezone.now()
    past = []
    for day in range(2, 88, 3):
        for n in range(1 + day % 4):
            past.append(
                AccessEvent(
                    actor=doctor,
                    actor_institution=east,
                    patient=patient,
                    action="view_chart",
                    outcome="allowed",
                    basis="care-team",
                    at=now - timedelta(days=day, hours=n),
                )
            )
        if day % 17 == 0:
            past.append(
                AccessEvent(
                    actor=stranger,
                    actor_institution=west,
                    patient=patient,
                    action="view_chart",
                    outcome="denied",
                    detail="no visit at this institution",
                    at=now - timedelta(days=day, hours=5),
                )
            )
    AccessEvent.objects.bulk_create(past)
    visit = visit_open(clinician=doctor, patient=patient)
    record = record_create(
        patient=patient, author=doctor, kind="prescription", content={"title": "Amoxicillin"}, visit=visit
    )
    record = record_finalize_imported(record=record)  # a draft's own work joins the footprint at signing
    record_get_for_user(doctor, record.public_id)
    with pytest.raises(RecordAccessDenied):
        record_get_for_user(stranger, record.public_id)
    while log_accesses():
        pass
    chain_seal()
    record_get_for_user(doctor, record.public_id, action="download")  # not logged yet: pending
    return patient


def test_patient_footprint(browser, live_server, history, artifacts_dir):
    base = live_server.url
    for locale in ("en-US", "zh-CN"):
        context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        sign_in(page, base, history.email)
        page.wait_for_url(f"{base}/patient/")
        page.click("nav.mainnav a[href='/patient/footprint/']")
        page.wait_for_url(f"{base}/patient/footprint/")
        page.wait_for_selector("#merkle-browser-check.ok")  # the browser checked the proof itself
        assert page.locator(".fp-entry.fp-denied").count() >= 1
        assert page.locator(".fp-chart rect.fp-denied-bar").count() >= 1
        assert page.locator(".fp-chain .badge-ok").count() >= 1
        assert page.locator(".fp-chain .badge-warn").count() == 1  # the download waits for its block
        page.screenshot(path=artifacts_dir / f"patient-footprint-{locale}.png", full_page=True)
        if locale == "en-US":
            entry = page.locator(".fp-entry.fp-denied").first
            entry.locator("details summary").click()
            entry.locator("text=Check this proof in your browser").click()
            page.wait_for_selector("#merkle-browser-check.ok")
            page.locator(".fp-entry.fp-denied details").first.evaluate("el => el.open = true")
            page.locator(".fp-entry.fp-denied").first.scroll_into_view_if_needed()
            page.screenshot(path=artifacts_dir / "patient-footprint-proof.png")
            page.select_option("select[name=outcome]", "denied")
            page.wait_for_url("**outcome=denied**")
            assert page.locator(".fp-entry").count() == page.locator(".fp-entry.fp-denied").count()
            page.screenshot(path=artifacts_dir / "patient-footprint-denied-filter.png", full_page=True)
        context.close()
