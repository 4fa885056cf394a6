"""Every URL that names one patient's data, tried by everyone who has no business there.

Alice's world: a record (with a file) by Dr Carol at North Hospital, a grant to
Dr Carol, an access request from Dr Dave, a break-glass session of Dr Fay at
South Hospital, and a research dataset of the institute (Alice gave no research
consent). Outsiders: another patient (Bob), a doctor at another hospital
without a grant (Dave, whose request is still pending), a doctor at a third
hospital (Gus), a researcher without consent (Erin), and an administrator of
another institution (North's, for South's break-glass). Each is refused (403 or
404), sees nothing of Alice, and every refusal that touched Alice's data is an
audit row. Anonymous visitors are sent to sign in.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.demo import DEMO_PASSWORD
from chain.ledger_services import chain_seal
from records.models import AccessEvent, RecordFile
from records.research.services import dataset_create
from records.sharing.breakglass import break_glass_open
from records.sharing.grants import grant_issue
from records.sharing.requests import access_request_create
from tests.factories import InstitutionFactory, UserFactory, enable_totp
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(request, alice, bob, carol, dave, erin, hospital, other_hospital, institute, hospital_admin, visit):
    from datetime import timedelta

    from django.utils import timezone

    record = request.getfixturevalue("stored_record")
    east = InstitutionFactory(code="east", kind="hospital", name="东院", name_en="East Hospital")
    gus = UserFactory(email="gus@example.org", role="clinician", institution=east, verified=True)
    enable_totp(gus)
    fay = UserFactory(email="fay@example.org", role="clinician", institution=other_hospital, verified=True)
    enable_totp(fay)
    chain_seal()
    grant = grant_issue(
        patient=alice,
        grantee_user=carol,
        scope="all",
        purpose="treatment",
        valid_from=timezone.now() - timedelta(minutes=1),
        valid_until=timezone.now() + timedelta(days=30),
    )
    request = access_request_create(
        requester=dave, patient=alice, scope="all", purpose="treatment", reason="follow-up", days=7
    )
    session = break_glass_open(
        clinician=fay, patient=alice, reason="unconscious", detail="RTA", credential=DEMO_PASSWORD
    )
    dataset = dataset_create(user=erin, title="All notes", kinds=["imaging", "note"])
    return {
        "record": record,
        "file": RecordFile.objects.get(version__record=record),
        "grant": grant,
        "request": request,
        "session": session,
        "dataset": dataset,
        "gus": gus,
        "visit": visit,
    }


def alices_urls(w) -> list[tuple[str, str, str]]:
    """(name, method, url) of every URL that names Alice's data."""
    r, f, v = w["record"].public_id, w["file"].public_id, w["visit"].public_id
    return [
        ("record_detail", "get", reverse("record_detail", args=[r])),
        ("record_status", "get", reverse("record_status", args=[r])),
        ("record_history", "get", reverse("record_history", args=[r])),
        ("record_amend", "get", reverse("record_amend", args=[r])),
        ("record_file", "get", reverse("record_file", args=[r, f])),
        ("record_file_preview", "get", reverse("record_file_preview", args=[r, f])),
        ("record_edit", "get", reverse("record_edit", args=[r])),
        ("record_set_sensitive", "post", reverse("record_set_sensitive", args=[r])),
        ("record_file_upload", "post", reverse("record_file_upload", args=[r])),
        ("record_file_remove", "post", reverse("record_file_remove", args=[r, f])),
        ("record_finalize", "post", reverse("record_finalize", args=[r])),
        ("clinic_chart", "get", reverse("clinic_chart", args=[w["record"].patient.public_id])),
        ("clinic_visit", "get", reverse("clinic_visit", args=[v])),
        ("clinic_visit_close", "post", reverse("clinic_visit_close", args=[v])),
        ("clinic_record_new", "get", reverse("clinic_record_new", args=[v, "note"])),
        ("patient_grant_revoke", "post", reverse("patient_grant_revoke", args=[w["grant"].public_id])),
        ("patient_request_approve", "post", reverse("patient_request_approve", args=[w["request"].public_id])),
        ("patient_request_decline", "post", reverse("patient_request_decline", args=[w["request"].public_id])),
        (
            "institution_break_glass_detail",
            "get",
            reverse("institution_break_glass_detail", args=[w["session"].public_id]),
        ),
    ]


# URLs whose denial is decided before Alice's data is looked at (a role gate): no audit row.
ROLE_GATED = {
    "patient": {
        "clinic_chart",
        "clinic_visit",
        "clinic_visit_close",
        "clinic_record_new",
        "record_edit",
        "record_finalize",
        "record_file_remove",
        "institution_break_glass_detail",
    },
    "clinician": {
        "record_set_sensitive",
        "patient_grant_revoke",
        "patient_request_approve",
        "patient_request_decline",
        "institution_break_glass_detail",
    },
    "researcher": {
        "clinic_chart",
        "clinic_visit",
        "clinic_visit_close",
        "clinic_record_new",
        "record_edit",
        "record_finalize",
        "record_file_remove",
        "record_set_sensitive",
        "patient_grant_revoke",
        "patient_request_approve",
        "patient_request_decline",
        "institution_break_glass_detail",
    },
    "institution_admin": {
        "clinic_chart",
        "clinic_visit",
        "clinic_visit_close",
        "clinic_record_new",
        "record_edit",
        "record_finalize",
        "record_file_remove",
        "record_set_sensitive",
        "patient_grant_revoke",
        "patient_request_approve",
        "patient_request_decline",
    },
}
# Objects that are not patient data reached by another route: a grant, a request, a session, found only by their owner.
NOT_AUDITED = {
    "patient_grant_revoke",
    "patient_request_approve",
    "patient_request_decline",
    "institution_break_glass_detail",
}


@pytest.mark.parametrize("outsider", ["bob", "dave", "gus", "erin", "hospital_admin"])
def test_outsiders_are_refused_every_url_that_names_alices_data(client, request, world, alice, outsider):
    user = world["gus"] if outsider == "gus" else request.getfixturevalue(outsider)
    client.force_login(user)
    for name, method, url in alices_urls(world):
        before = AccessEvent.objects.filter(actor=user, outcome="denied").count()
        response = getattr(client, method)(url)
        assert response.status_code in (403, 404), (outsider, name, response.status_code)
        body = response.content.decode(errors="replace")
        assert alice.email not in body and alice.display_name not in body, (outsider, name)
        audited = AccessEvent.objects.filter(actor=user, outcome="denied").count() > before
        if name not in ROLE_GATED.get(user.role, set()) and name not in NOT_AUDITED:
            assert audited, (outsider, name, "refusal not audited")
    # Nothing changed hands.
    world["grant"].refresh_from_db()
    world["request"].refresh_from_db()
    world["session"].refresh_from_db()
    assert (world["grant"].status, world["request"].status, world["session"].closed_at) == ("active", "pending", None)


def test_a_researcher_without_consent_gets_nothing_of_alice(client, world, alice, erin):
    client.force_login(erin)
    page = client.get(reverse("research_dataset", args=[world["dataset"].public_id]))
    assert page.status_code == 200 and page.context["summary"].released_patients == 0
    export = client.post(reverse("research_dataset_export", args=[world["dataset"].public_id]), {"format": "csv"})
    assert alice.email not in export.content.decode(errors="replace")
    assert not AccessEvent.objects.filter(patient=alice, action="export", outcome="allowed").exists()


def test_own_portal_pages_show_nothing_of_another_patient(client, world, alice, bob):
    client.force_login(bob)
    for name in ("patient_home", "patient_footprint", "patient_sharing", "notifications"):
        body = client.get(reverse(name)).content.decode()
        assert str(world["record"].public_id) not in body and alice.email not in body, name
        assert str(world["grant"].public_id) not in body and str(world["request"].public_id) not in body, name


def test_anonymous_visitors_are_sent_to_sign_in(client, world):
    for name, method, url in alices_urls(world):
        response = getattr(client, method)(url)
        if name in ("record_status", "record_file_preview", "record_file_upload"):
            assert response.status_code in (401, 403), name  # fetched by scripts and <img>: no redirect
            continue
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], name


def test_a_refused_record_page_says_once_that_the_attempt_is_recorded(client, world, dave):
    client.force_login(dave)
    url = next(url for name, _method, url in alices_urls(world) if name == "record_detail")
    body = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "The attempt has been recorded." in body
    assert "Attempts to open data you are not allowed to see are recorded." not in body
    client.force_login(world["gus"])  # a page of another portal: the general line, since nothing names a record
    body = client.get(reverse("patient_footprint"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Attempts to open data you are not allowed to see are recorded." in body
