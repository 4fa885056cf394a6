"""Every portal URL: the right role gets in, everyone else is denied.

Staff reach patient data only once verified by their institution and with
two-factor authentication on.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PORTAL_OWNER = {
    "patient_home": "alice",
    "clinic_home": "carol",
    "clinic_patients": "carol",
    "research_home": "erin",
    "institution_home": "hospital_admin",
    "institution_staff": "hospital_admin",
    "ops_home": "operator",
}
EVERYONE = ["alice", "bob", "carol", "dave", "erin", "hospital_admin", "operator"]


@pytest.mark.parametrize("url_name", sorted(PORTAL_OWNER))
def test_anonymous_visitors_are_sent_to_sign_in(client, url_name):
    response = client.get(reverse(url_name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


@pytest.mark.parametrize("url_name", sorted(PORTAL_OWNER))
def test_only_the_portal_role_gets_in(client, request, url_name):
    owner = PORTAL_OWNER[url_name]
    for name in EVERYONE:
        user = request.getfixturevalue(name)
        client.force_login(user)
        response = client.get(reverse(url_name))
        same_role = user.role == request.getfixturevalue(owner).role
        if name == owner or (same_role and url_name in ("patient_home", "clinic_home", "clinic_patients")):
            assert response.status_code == 200, (name, url_name)
        elif user.is_superuser:
            continue  # the operator may look at every page
        else:
            assert response.status_code == 403, (name, url_name, response.status_code)
        client.logout()


def test_unverified_doctor_reaches_no_patient_data(client, hospital):
    doctor = UserFactory(email="new@example.org", role="clinician", institution=hospital)
    client.force_login(doctor)
    assert client.get(reverse("clinic_home")).status_code == 200
    response = client.get(reverse("clinic_patients"))
    assert response.status_code == 403
    assert "verification" in response.content.decode() or "验证" in response.content.decode()


def test_verified_doctor_without_mfa_is_sent_to_set_it_up(client, hospital):
    doctor = UserFactory(email="nomfa@example.org", role="clinician", institution=hospital, verified=True)
    client.force_login(doctor)
    response = client.get(reverse("clinic_patients"))
    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_activate_totp")


def test_admin_verifies_own_staff_in_the_portal(client, hospital_admin, hospital):
    doctor = UserFactory(email="pending@example.org", role="clinician", institution=hospital)
    client.force_login(hospital_admin)
    page = client.get(reverse("institution_staff"))
    assert doctor.email in page.content.decode()
    response = client.post(reverse("institution_staff_verify", args=[doctor.public_id]))
    assert response.status_code == 302
    doctor.refresh_from_db()
    assert doctor.is_verified_staff and doctor.verified_by == hospital_admin
    client.post(reverse("institution_staff_unverify", args=[doctor.public_id]))
    doctor.refresh_from_db()
    assert not doctor.is_verified_staff


def test_admin_cannot_verify_another_institutions_staff(client, hospital_admin, other_hospital):
    outsider = UserFactory(email="out@example.org", role="clinician", institution=other_hospital)
    client.force_login(hospital_admin)
    response = client.post(reverse("institution_staff_verify", args=[outsider.public_id]))
    assert response.status_code == 404
    outsider.refresh_from_db()
    assert outsider.verified_at is None


def test_verify_requires_post(client, hospital_admin, hospital):
    doctor = UserFactory(email="get@example.org", role="clinician", institution=hospital)
    client.force_login(hospital_admin)
    assert client.get(reverse("institution_staff_verify", args=[doctor.public_id])).status_code == 405


def test_admin_verifies_staff_in_django_admin(client, hospital_admin, hospital, other_hospital):
    mine = UserFactory(email="mine@example.org", role="clinician", institution=hospital)
    theirs = UserFactory(email="theirs@example.org", role="clinician", institution=other_hospital)
    client.force_login(hospital_admin)
    changelist = client.get(reverse("admin:accounts_user_changelist"))
    assert changelist.status_code == 200
    body = changelist.content.decode()
    assert mine.email in body and theirs.email not in body
    client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "verify_staff", "_selected_action": [mine.pk, theirs.pk]},
    )
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.is_verified_staff
    assert theirs.verified_at is None


def test_patients_cannot_open_the_admin_site(client, alice):
    client.force_login(alice)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302


def test_admin_without_2fa_is_sent_to_set_it_up_before_verifying(client, hospital):
    from tests.factories import UserFactory

    admin_user = UserFactory(email="admin2@example.org", role="institution_admin", institution=hospital, verified=True)
    doctor = UserFactory(email="waiting@example.org", role="clinician", institution=hospital)
    client.force_login(admin_user)
    assert client.get(reverse("institution_home")).status_code == 200
    assert client.get(reverse("institution_staff"))["Location"] == reverse("mfa_activate_totp")
    client.post(reverse("institution_staff_verify", args=[doctor.public_id]))
    doctor.refresh_from_db()
    assert doctor.verified_at is None


def test_admin_site_signs_in_through_allauth(client):
    response = client.get("/admin/login/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
