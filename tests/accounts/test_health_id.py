"""The patient's Yilian ID: shown in their portal with a QR code, and how clinics find them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import health_id
from accounts.services import doctors_find, patient_find
from records.models import Grant, Visit
from tests.factories import UserFactory
from tests.records.conftest import login
from tests.records.sharing.test_grants import keys_sealed  # noqa: F401 (fixture)


def test_ids_are_short_checked_and_forgiving_to_type():
    value = health_id.new_health_id()
    assert len(value) == 9 and health_id.normalize(value) == value
    shown = health_id.formatted(value)
    assert shown.startswith("YL-") and len(shown) == 14
    for typed in (shown, shown.lower(), shown.replace("-", " "), value, " " + value.lower() + " "):
        assert health_id.normalize(typed) == value
    # Look-alike letters read as the digits they look like.
    assert health_id.normalize("YL-1000-0000-" + health_id.check_symbol("10000000")) == "10000000" + (
        health_id.check_symbol("10000000")
    )
    assert health_id.normalize("YL-I0O0-0000-" + health_id.check_symbol("10000000")) is not None


def test_every_single_mistyped_symbol_is_caught():
    value = health_id.new_health_id()
    for position in range(len(value)):
        for symbol in health_id.ALPHABET:
            if symbol != value[position]:
                assert health_id.normalize(value[:position] + symbol + value[position + 1 :]) is None


@pytest.mark.django_db
def test_every_patient_has_one_and_staff_do_not(alice, bob, carol):
    assert alice.health_id and bob.health_id and alice.health_id != bob.health_id
    assert carol.health_id is None
    late = UserFactory(email="late@example.org", role="operator")
    late.role = "patient"
    late.save(update_fields=["role"])
    late.refresh_from_db()
    assert late.health_id


@pytest.mark.django_db
def test_a_clinic_finds_the_patient_by_id_or_email_and_a_typo_is_an_error(alice):
    assert patient_find(alice.health_id_display) == alice
    assert patient_find(alice.health_id_display.lower().replace("-", "")) == alice
    assert patient_find(alice.email.upper()) == alice
    assert patient_find("someone@example.org") is None
    from django.core.exceptions import ValidationError

    typo = alice.health_id[:-1] + ("0" if alice.health_id[-1] != "0" else "1")
    with pytest.raises(ValidationError):
        patient_find("YL-" + typo)


@pytest.mark.django_db
def test_the_portal_shows_the_id_and_its_qr_code(client, alice):
    login(client, alice)
    page = client.get(reverse("patient_home"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert alice.health_id_display in page and reverse("health_id_qr") in page
    qr = client.get(reverse("health_id_qr"))
    assert qr.status_code == 200 and qr["Content-Type"] == "image/svg+xml"
    assert qr.content.startswith(b"<?xml") or b"<svg" in qr.content[:200]
    profile = client.get(reverse("profile")).content.decode()
    assert alice.health_id_display in profile


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["carol", "erin", "hospital_admin"])
def test_only_the_patient_gets_their_qr_code(client, request, who):
    client.force_login(request.getfixturevalue(who))
    assert client.get(reverse("health_id_qr")).status_code in (302, 403)


@pytest.mark.django_db
def test_a_doctor_opens_a_visit_with_the_id(client, alice, carol):
    login(client, carol)
    response = client.post(reverse("clinic_patients"), {"patient": alice.health_id_display, "kind": "outpatient"})
    assert response.status_code == 302, response.content[:500]
    assert Visit.objects.get().patient == alice


@pytest.mark.django_db
def test_opening_a_visit_again_continues_the_open_one(client, alice, carol):
    login(client, carol)
    asked = {"patient": alice.email, "kind": "outpatient"}
    first = client.post(reverse("clinic_patients"), asked)
    again = client.post(reverse("clinic_patients"), asked, follow=True)
    visit = Visit.objects.get()
    assert first.url == again.redirect_chain[-1][0] == reverse("clinic_visit", args=[visit.public_id])
    assert "尚未结束" in again.content.decode()  # the portal speaks Chinese unless asked otherwise
    # Another kind of visit, or one after this visit is closed, is a new visit.
    client.post(reverse("clinic_patients"), {**asked, "kind": "inpatient"})
    Visit.objects.filter(pk=visit.pk).update(status=Visit.Status.CLOSED)
    client.post(reverse("clinic_patients"), asked)
    assert Visit.objects.filter(patient=alice).count() == 3


@pytest.mark.django_db
def test_the_doctor_directory_lists_verified_clinicians_by_name_and_hospital(carol, dave, hospital, other_hospital):
    UserFactory(email="unverified@example.org", role="clinician", institution=hospital, name=carol.name)
    found = doctors_find(f"{carol.name} {hospital.name_en}")
    assert found == [carol]
    assert dave in doctors_find(other_hospital.name)
    assert all(d.verified_at for d in doctors_find(hospital.name))
    assert doctors_find("") == []


@pytest.mark.django_db
def test_a_patient_finds_their_doctor_by_name_and_shares(client, keys_sealed, alice, dave, other_hospital):  # noqa: F811
    login(client, alice)
    today = timezone.localdate()
    choices = {
        "grantee_kind": "user",
        "scope": "all",
        "purpose": "treatment",
        "valid_from": today.isoformat(),
        "valid_until": (today + timedelta(days=7)).isoformat(),
    }
    found = client.post(
        reverse("patient_grant_new"), {**choices, "grantee_query": dave.name, "find": "1"}, HTTP_ACCEPT_LANGUAGE="en"
    )
    page = found.content.decode()
    assert found.status_code == 200 and str(dave.public_id) in page and other_hospital.name_en in page
    assert not Grant.objects.exists()
    # A query alone is not a choice: the patient sees whom they share with first.
    response = client.post(reverse("patient_grant_new"), {**choices, "grantee_query": dave.name})
    assert response.status_code == 200 and not Grant.objects.exists()
    response = client.post(
        reverse("patient_grant_new"), {**choices, "grantee_query": dave.name, "grantee_choice": str(dave.public_id)}
    )
    assert response.status_code == 302
    assert Grant.objects.get().grantee_user == dave


@pytest.mark.django_db
def test_enter_in_the_email_field_shares_rather_than_finding_nothing(client, keys_sealed, alice, dave):  # noqa: F811
    """Enter submits with the form's first button, Find: with nothing typed to find, it means Share."""
    login(client, alice)
    today = timezone.localdate()
    choices = {
        "grantee_kind": "user",
        "grantee_query": "",
        "grantee_email": dave.email,
        "scope": "all",
        "purpose": "treatment",
        "valid_from": today.isoformat(),
        "valid_until": (today + timedelta(days=7)).isoformat(),
    }
    response = client.post(reverse("patient_grant_new"), {**choices, "find": "1"})
    assert response.status_code == 302
    assert Grant.objects.get().grantee_user == dave
