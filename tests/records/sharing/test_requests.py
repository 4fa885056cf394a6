"""Access requests and notifications: the doctor asks, only the patient decides, both are told."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from chain.ledger_services import chain_seal
from chain.models import Transaction as TxRow
from records.ledger import ACCESS_REQUESTED
from records.models import AccessEvent, AccessRequest, Grant, Notification
from records.notices import with_texts
from records.sharing.requests import (
    access_request_approve,
    access_request_create,
    access_request_decline,
    access_request_reason,
    access_request_withdraw,
)
from tests.factories import UserFactory, enable_totp
from tests.records.conftest import login
from tests.records.sharing.test_grants import can_read, write

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _english(settings):
    """These tests read English messages; the portal's default language is Chinese."""
    from django.utils import translation

    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


REASON = "Suspected HIV seroconversion; need prior viral load results"


@pytest.fixture
def keys_sealed(node, alice, bob, carol, dave, erin, hospital, other_hospital, institute):
    chain_seal()


def ask(requester, patient, **kwargs):
    defaults = {"scope": "all", "kinds": (), "purpose": "treatment", "reason": REASON, "days": 14}
    return access_request_create(requester=requester, patient=patient, **{**defaults, **kwargs})


def test_request_notifies_approve_grants_and_tells_the_doctor(
    client, keys_sealed, alice, carol, dave, visit, django_capture_on_commit_callbacks
):
    record = write(alice, carol, visit)
    assert not can_read(dave, record)
    with django_capture_on_commit_callbacks(execute=True):
        request = ask(dave, alice, scope="kinds", kinds=["prescription"])
    assert request.status == "pending"
    (notice,) = with_texts([Notification.objects.get(user=alice)])
    assert notice.kind == "request_received" and dave.display_name in notice.text
    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == [alice.email]
    assert dave.display_name in email.subject + email.body
    for clinical in ("HIV", "viral", "seroconversion", "prescription", "Amoxicillin"):
        assert clinical not in email.subject + email.body
    assert AccessEvent.objects.filter(actor=dave, action="request", patient=alice).exists()

    # The patient sees it with the reason decrypted, and the badge counts it.
    login(client, alice)
    page = client.get(reverse("patient_sharing")).content.decode()
    assert str(request.public_id) in page and "seroconversion" in page
    assert "data-notification-count>1<" in page
    listing = client.get(reverse("notifications")).content.decode()
    assert dave.display_name in listing
    assert Notification.objects.get(user=alice).read_at is not None
    assert "data-notification-count" not in client.get(reverse("patient_sharing")).content.decode()

    until = timezone.localdate() + timedelta(days=7)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("patient_request_approve", args=[request.public_id]), {"valid_until": until.isoformat()}
        )
    assert response.status_code == 302
    request.refresh_from_db()
    assert request.status == "approved" and request.grant is not None and request.decided_at
    grant = request.grant
    assert (grant.grantee_user, grant.scope, grant.kinds, grant.purpose) == (
        dave,
        "kinds",
        ["prescription"],
        "treatment",
    )
    assert timezone.localtime(grant.valid_until).date() == until + timedelta(days=1)
    assert can_read(dave, record)
    event = AccessEvent.objects.filter(actor=dave, record=record, outcome="allowed").latest("at")
    assert event.basis == "grant"
    assert Notification.objects.filter(user=dave, kind="request_approved").exists()
    assert mail.outbox[-1].to == [dave.email]
    assert "HIV" not in mail.outbox[-1].body

    login(client, dave)
    page = client.get(reverse("clinic_patients")).content.decode()
    assert str(request.public_id) in page and "Approved" in page


def test_decline(client, keys_sealed, alice, carol, dave, visit):
    record = write(alice, carol, visit)
    request = ask(dave, alice)
    login(client, alice)
    assert client.post(reverse("patient_request_decline", args=[request.public_id])).status_code == 302
    request.refresh_from_db()
    assert request.status == "declined" and request.grant is None
    assert not can_read(dave, record)
    assert Notification.objects.filter(user=dave, kind="request_declined").exists()
    assert AccessEvent.objects.filter(actor=alice, action="decline").exists()
    # Answered once: no second decision.
    with pytest.raises(ValidationError):
        access_request_approve(patient=alice, request=request)
    assert not Grant.objects.exists()


def test_another_patient_cannot_see_or_decide(client, keys_sealed, alice, bob, dave):
    request = ask(dave, alice)
    login(client, bob)
    page = client.get(reverse("patient_sharing")).content.decode()
    assert str(request.public_id) not in page and "seroconversion" not in page
    assert (
        client.post(
            reverse("patient_request_approve", args=[request.public_id]),
            {"valid_until": timezone.localdate().isoformat()},
        ).status_code
        == 404
    )
    assert client.post(reverse("patient_request_decline", args=[request.public_id])).status_code == 404
    with pytest.raises(PermissionDenied):
        access_request_approve(patient=bob, request=request)
    with pytest.raises(PermissionDenied):
        access_request_decline(patient=bob, request=request)
    with pytest.raises(PermissionDenied):
        access_request_reason(request, user=bob)
    request.refresh_from_db()
    assert request.status == "pending" and not Grant.objects.exists()
    # The doctor cannot decide for the patient either.
    login(client, dave)
    assert client.post(reverse("patient_request_decline", args=[request.public_id])).status_code == 403


def test_only_cleared_doctors_request(client, keys_sealed, alice, bob, erin, other_hospital):
    unverified = UserFactory(email="jo@example.org", role="clinician", institution=other_hospital)
    enable_totp(unverified)
    no_2fa = UserFactory(email="kim@example.org", role="clinician", institution=other_hospital, verified=True)
    for user in (unverified, no_2fa, erin, bob):
        with pytest.raises(PermissionDenied):
            ask(user, alice)
    assert not AccessRequest.objects.exists()
    login(client, erin)
    response = client.post(reverse("clinic_request_new"), {"patient": alice.email})
    assert response.status_code == 403
    login(client, bob)
    assert client.post(reverse("clinic_request_new"), {"patient": alice.email}).status_code == 403
    assert not AccessRequest.objects.exists()


def test_duplicate_pending_request_is_refused_with_a_message(client, keys_sealed, alice, dave):
    login(client, dave)
    data = {"patient": alice.email, "scope": "all", "purpose": "treatment", "reason": REASON, "days": "10"}
    assert client.post(reverse("clinic_request_new"), data).status_code == 302
    response = client.post(reverse("clinic_request_new"), {**data, "patient": alice.health_id_display})
    assert response.status_code == 400
    assert "already have a request waiting" in " ".join(response.context["request_form"].non_field_errors())
    assert AccessRequest.objects.count() == 1
    # Answered, a new one may be sent.
    access_request_decline(patient=alice, request=AccessRequest.objects.get())
    assert client.post(reverse("clinic_request_new"), data).status_code == 302
    assert AccessRequest.objects.count() == 2


def test_the_answer_never_tells_whether_an_account_exists_or_whose_it_is(client, keys_sealed, alice, dave):
    login(client, dave)
    data = {"scope": "all", "purpose": "treatment", "reason": "x", "days": "10"}
    answers = {}
    for typed in (alice.email, "nobody@example.org", alice.health_id_display):
        if typed == alice.health_id_display:
            AccessRequest.objects.filter(patient=alice).update(status="withdrawn")
        response = client.post(reverse("clinic_request_new"), {**data, "patient": typed}, follow=True)
        assert response.status_code == 200
        page = response.content.decode()
        answers[typed] = page.replace(typed, "<typed>")
        assert alice.display_name not in page and alice.name not in page
    first, unknown, _by_id = answers.values()
    message = "Request sent. If <typed> is a Yilian patient"
    assert message in first and message in unknown
    # Nobody answers to the unknown address: kept as an unanswered request, nobody notified.
    phantom = AccessRequest.objects.get(asked_as="nobody@example.org")
    assert phantom.patient is None and phantom.status == "pending" and not phantom.requested_tx
    assert not Notification.objects.filter(params__request=str(phantom.public_id)).exists()
    access_request_withdraw(requester=dave, request=phantom)


def test_a_mistyped_yilian_id_is_a_typo_not_a_miss(client, keys_sealed, alice, dave):
    login(client, dave)
    typo = alice.health_id_display[:-1] + ("0" if alice.health_id_display[-1] != "0" else "1")
    data = {"patient": typo, "scope": "all", "purpose": "treatment", "reason": "x", "days": "10"}
    response = client.post(reverse("clinic_request_new"), data, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert response.context["request_form"].has_error("patient", "invalid_id")
    assert not AccessRequest.objects.exists()


def test_requested_tx_is_sealed_and_carries_no_personal_data(keys_sealed, alice, dave):
    request = ask(dave, alice)
    chain_seal()
    row = TxRow.objects.get(cid=request.requested_tx, type=ACCESS_REQUESTED)
    payload = row.payload
    assert set(payload) == {"request", "pseudonym", "purpose"}
    text = str(payload)
    for personal in (alice.email, str(alice.public_id), alice.display_name, dave.email, str(request.public_id)):
        assert personal not in text
    assert "seroconversion" not in text
    # The pseudonym is the one a grant for this relationship carries.
    grant = access_request_approve(patient=alice, request=request).grant
    assert grant.pseudonym == request.pseudonym


def test_reason_is_not_stored_in_plaintext(keys_sealed, alice, dave):
    request = ask(dave, alice)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM records_accessrequest WHERE id = %s", [request.pk])
        row = cursor.fetchone()
    blob = b"".join(bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row)
    assert b"seroconversion" not in blob and b"HIV" not in blob
    assert access_request_reason(request, user=alice) == REASON
    assert access_request_reason(request, user=dave) == REASON


def test_doctor_withdraws_a_pending_request_and_the_patient_notice_goes(client, keys_sealed, alice, bob, carol, dave):
    request = ask(dave, alice)
    assert Notification.objects.filter(user=alice, kind="request_received").count() == 1
    url = reverse("clinic_request_withdraw", args=[request.public_id])
    # Nobody else withdraws it: another doctor gets 404, a patient 403.
    client.force_login(carol)
    assert client.post(url).status_code == 404
    client.force_login(alice)
    assert client.post(url).status_code == 403
    request.refresh_from_db()
    assert request.status == "pending"

    client.force_login(dave)
    response = client.post(url)
    assert response.status_code == 302
    request.refresh_from_db()
    assert request.status == "withdrawn" and request.decided_at is not None
    assert not Notification.objects.filter(user=alice, kind="request_received").exists()
    assert AccessEvent.objects.filter(actor=dave, action="withdraw", patient=alice).exists()
    # An answered request cannot be withdrawn, nor approved afterwards.
    follow = client.post(url, follow=True)
    assert "already been answered" in follow.content.decode()
    with pytest.raises(ValidationError):
        access_request_approve(patient=alice, request=request)
    assert not Grant.objects.exists()


def test_notices_name_people_in_the_readers_language_and_emails_use_theirs(
    client, keys_sealed, alice, dave, django_capture_on_commit_callbacks
):
    from accounts.models import User

    dave.name, dave.name_en = "吴医生", "Dr Wu"
    dave.save(update_fields=["name", "name_en"])
    User.objects.filter(pk=alice.pk).update(language="en")
    alice.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        ask(dave, alice)
    email = mail.outbox[-1]
    assert "Dr Wu asks to see your records" in email.subject
    assert "http://" in email.body and "/patient/sharing/#requests" in email.body  # an absolute link
    login(client, alice)
    chinese = client.get(reverse("notifications"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "吴医生" in chinese and "Dr Wu" not in chinese
    english = client.get(reverse("notifications"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Dr Wu at" in english


def test_the_portal_remembers_the_language_for_emails(client, alice):
    login(client, alice)
    client.get(reverse("patient_home"), HTTP_ACCEPT_LANGUAGE="en")
    alice.refresh_from_db()
    assert alice.language == "en"
    client.get(reverse("patient_home"), HTTP_ACCEPT_LANGUAGE="zh-hans")
    alice.refresh_from_db()
    assert alice.language == "zh-hans"


def test_answering_a_request_clears_its_notice(keys_sealed, alice, dave):
    request = ask(dave, alice)
    assert Notification.objects.get(user=alice, kind="request_received").read_at is None
    access_request_decline(patient=alice, request=request)
    assert Notification.objects.get(user=alice, kind="request_received").read_at is not None
