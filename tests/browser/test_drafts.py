"""The draft page keeps what the doctor typed: signing signs what is on the screen, uploading
keeps unsaved text, and the record page polls until anchored. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re

import pytest

from records.keys import decrypt_content
from records.models import AccessEvent, MedicalRecord
from records.policy import record_get_for_user
from tests.browser.test_records_flow import SIGNED, doctor_opens_visit
from tests.records.conftest import png_bytes

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _saved_text(doctor, record) -> dict:
    access = record_get_for_user(doctor, record.public_id, quiet=True)
    return decrypt_content(access.dek, access.version)


@pytest.fixture
def draft_page(browser, live_server, people):
    """The doctor on the edit page of a saved note draft."""
    doctor, _secret, patient = people
    context, page = doctor_opens_visit(browser, live_server.url, people, patient_as=patient.email)
    page.click("a.btn:has-text('Note')")
    page.fill("input[name=title]", "Follow-up")
    page.fill("textarea[name=text]", "saved text")
    page.click("text=Save draft")
    page.wait_for_url("**/edit/")
    yield page, doctor, MedicalRecord.objects.get()
    context.close()


def test_signing_signs_the_unsaved_text_on_the_screen(draft_page, artifacts_dir):
    from chain.ledger_services import chain_seal

    page, doctor, record = draft_page
    page.fill("textarea[name=text]", "typed after saving, never saved by hand")
    views = AccessEvent.objects.filter(actor=doctor, record=record, action="view", outcome="allowed")
    before = views.count()  # the edit page itself
    page.screenshot(path=artifacts_dir / "doctor-draft-unsaved.png", full_page=True)
    page.click("[data-finalize-button]")
    page.wait_for_url(SIGNED)
    record.refresh_from_db()
    assert record.status == "final"
    assert _saved_text(doctor, record)["text"] == "typed after saving, never saved by hand"
    # The page polls until anchored and shows it; polls are not views.
    chain_seal()
    page.wait_for_selector("text=Anchored in block", timeout=20_000)
    page.screenshot(path=artifacts_dir / "doctor-signed-anchored.png", full_page=True)
    assert views.count() == before + 1  # the record page once, however often it polled


def test_uploading_a_file_keeps_the_unsaved_text(draft_page, artifacts_dir, tmp_path):
    page, doctor, record = draft_page
    page.fill("textarea[name=text]", "typed, then a file attached")
    scan = tmp_path / "wound.png"
    scan.write_bytes(png_bytes())
    page.set_input_files("#id_file", str(scan))
    page.click("[data-upload-button]")
    page.wait_for_selector("text=wound.png")
    assert page.input_value("textarea[name=text]") == "typed, then a file attached"
    assert _saved_text(doctor, record)["text"] == "typed, then a file attached"
    page.screenshot(path=artifacts_dir / "doctor-draft-after-upload.png", full_page=True)


def test_the_doctor_discards_a_draft(draft_page, artifacts_dir):
    page, _doctor, record = draft_page
    page.click("summary:has-text('Discard draft')")
    page.screenshot(path=artifacts_dir / "doctor-draft-discard.png", full_page=True)
    page.click("text=Yes, discard it")
    page.wait_for_url(re.compile(r"/clinic/visits/"))
    assert not MedicalRecord.objects.filter(pk=record.pk).exists()
    assert "Follow-up" not in page.content()
