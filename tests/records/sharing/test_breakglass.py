"""Break-glass: re-authenticated, time-boxed emergency access the patient sees and an admin reviews."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from django.utils import timezone

from chain.ledger_services import TxRejected, chain_seal, tx_submit
from chain.models import MempoolEntry
from chain.models import Transaction as TxRow
from records.keys import decrypt_content
from records.ledger import BREAK_GLASS_CLOSED, BREAK_GLASS_OPENED
from records.models import AccessEvent, BreakGlass, Notification
from records.notices import with_texts
from records.policy import RecordAccessDenied, record_get_for_user
from records.sharing.breakglass import (
    ReauthenticationFailed,
    break_glass_close,
    break_glass_detail,
    break_glass_open,
    break_glass_redrive,
    break_glass_review_note,
)
from tests.factories import PASSWORD, UserFactory, enable_totp, totp_code
from tests.records.conftest import login
from tests.records.sharing.test_grants import can_read, write

pytestmark = pytest.mark.django_db

DETAIL = "Unconscious after a road accident; need allergies and current medication"


@pytest.fixture(autouse=True)
def _english(settings):
    from django.utils import translation

    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


@pytest.fixture
def other_admin(other_hospital):
    """The other hospital's verified administrator (reviews dave's sessions)."""
    user = UserFactory(email="otto@example.org", role="institution_admin", institution=other_hospital, verified=True)
    enable_totp(user)
    return user


@pytest.fixture
def keys_sealed(node, alice, bob, carol, dave, erin, hospital, other_hospital, institute, other_admin):
    chain_seal()


def open_for(clinician, patient, **kwargs):
    defaults = {"reason": "unconscious", "detail": DETAIL, "credential": PASSWORD, "hours": 4}
    return break_glass_open(clinician=clinician, patient=patient, **{**defaults, **kwargs})


def test_break_glass_opens_records_for_four_hours_notifies_and_stands_out(
    client, keys_sealed, alice, carol, dave, visit, django_capture_on_commit_callbacks
):
    record = write(alice, carol, visit, title="Warfarin 5 mg")
    assert not can_read(dave, record)
    with django_capture_on_commit_callbacks(execute=True):
        session = open_for(dave, alice)
    assert session.expires_at - session.opened_at == timedelta(hours=4)
    access = record_get_for_user(dave, record.public_id)
    assert access.basis == "break-glass"
    assert decrypt_content(access.dek, access.version)["title"] == "Warfarin 5 mg"
    read = AccessEvent.objects.filter(actor=dave, record=record, outcome="allowed").latest("at")
    assert read.basis == "break-glass" and read.purpose == "emergency"
    # No key was delivered to the clinician: nothing outlives the session.
    assert not record.current_version.wrapped_keys.filter(user=dave).exists()

    # The patient is told, in the portal and by email, without clinical content.
    (notice,) = with_texts([Notification.objects.get(user=alice, kind="break_glass")])
    assert dave.display_name in notice.text
    to_patient = next(m for m in mail.outbox if m.to == [alice.email])
    assert "accident" not in to_patient.body and "Warfarin" not in to_patient.body
    # South hospital's administrator is asked to review it (names only, a link to the session).
    review = Notification.objects.get(kind="break_glass_review")
    assert review.user.institution_id == dave.institution_id and review.user.role == "institution_admin"
    assert review.link == reverse("institution_break_glass_detail", args=[session.public_id])
    to_reviewer = next(m for m in mail.outbox if m.to == [review.user.email])
    assert alice.display_name not in to_reviewer.body and "accident" not in to_reviewer.body
    assert len(mail.outbox) == 2

    # It stands out in the footprint, with the clinician's words opened by the patient's key.
    login(client, alice)
    page = client.get(reverse("patient_footprint"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert 'id="emergency-access"' in page and DETAIL in page and "fp-breakglass" in page
    only = client.get(reverse("patient_footprint") + "?basis=break-glass", HTTP_ACCEPT_LANGUAGE="en")
    assert (
        only.context["page"].paginator.count
        == AccessEvent.objects.filter(patient=alice, basis="break-glass").exclude(actor=alice).count()
    )

    # The chart opens with the emergency banner and lists the record.
    client.force_login(dave)
    chart = client.get(reverse("clinic_chart", args=[alice.public_id]), HTTP_ACCEPT_LANGUAGE="en")
    assert chart.status_code == 200 and "bg-banner" in chart.content.decode()
    assert str(record.public_id) in chart.content.decode()
    assert 'class="timeline-title">Warfarin 5 mg</strong>' in chart.content.decode()


def test_the_break_glass_chart_of_a_patient_without_records_speaks_to_the_doctor(client, keys_sealed, alice, dave):
    open_for(dave, alice)
    client.force_login(dave)
    page = client.get(reverse("clinic_chart", args=[alice.public_id]), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "This patient has no signed records" in page
    assert "records a visit for you" not in page and "upload your own documents" not in page


def test_after_a_break_glass_at_another_nodes_patient_the_chart_waits_for_the_release(
    client, keys_sealed, alice, dave, monkeypatch
):
    from accounts.models import User
    from records.sharing import emergency

    session = open_for(dave, alice)
    User.objects.filter(pk=alice.pk).update(home_node="node-2")  # her home is another node, which released
    session = BreakGlass.objects.select_related("patient").get(pk=session.pk)
    monkeypatch.setattr("records.sharing.forms.in_consortium", lambda: True)
    monkeypatch.setattr(emergency, "break_glass_open_remote", lambda **ask: (session, True))
    client.force_login(dave)
    form = {"patient": alice.health_id_display, "reason": "unconscious", "detail": DETAIL, "hours": 4}
    answer = client.post(reverse("clinic_break_glass"), {**form, "credential": PASSWORD})
    chart = reverse("clinic_chart", args=[alice.public_id])
    assert answer.status_code == 302 and answer["Location"] == f"{chart}?arriving=1"
    page = client.get(answer["Location"], HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Records on their way" in page and 'http-equiv="refresh"' in page  # not "no records anywhere"
    assert "This patient has no signed records" not in page
    # A minute on, nothing came (the home node went down meanwhile): the page stops looking.
    BreakGlass.objects.filter(pk=session.pk).update(opened_at=timezone.now() - timedelta(minutes=2))
    page = client.get(answer["Location"], HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "This patient has no signed records" in page and 'http-equiv="refresh"' not in page
    # Nothing released: the chart does not wait.
    monkeypatch.setattr(emergency, "break_glass_open_remote", lambda **ask: (session, False))
    answer = client.post(reverse("clinic_break_glass"), {**form, "credential": PASSWORD})
    assert answer["Location"] == chart


def test_break_glass_expires_by_itself_and_skips_drafts(keys_sealed, alice, carol, dave, visit):
    from records.clinical.services import record_create

    record = write(alice, carol, visit)
    draft = record_create(patient=alice, author=carol, kind="note", content={"title": "unsigned"}, visit=visit)
    session = open_for(dave, alice, hours=1)
    assert can_read(dave, record)
    assert not can_read(dave, draft)
    past = timezone.now() - timedelta(hours=1, seconds=1)
    BreakGlass.objects.filter(pk=session.pk).update(opened_at=past, expires_at=past + timedelta(hours=1))
    assert not can_read(dave, record)
    denied = AccessEvent.objects.filter(actor=dave, record=record, outcome="denied").latest("at")
    assert denied.detail == "no basis"


def test_reauthentication_password_or_fresh_totp_code(keys_sealed, alice, other_hospital):
    doctor = UserFactory(email="ray@example.org", role="clinician", institution=other_hospital, verified=True)
    secret = enable_totp(doctor)
    chain_seal()
    with pytest.raises(ReauthenticationFailed):
        open_for(doctor, alice, credential="wrong password")
    attempt = AccessEvent.objects.get(actor=doctor, action="break_glass")
    assert attempt.outcome == "denied" and attempt.patient == alice
    assert not BreakGlass.objects.exists()
    code = totp_code(secret)
    assert open_for(doctor, alice, credential=code).pk
    # The same code does not open a second session for another patient.
    other = UserFactory(email="pat@example.org", role="patient")
    with pytest.raises(ReauthenticationFailed):
        open_for(doctor, other, credential=code)


def test_repeated_wrong_credentials_lock_the_clinician_out(keys_sealed, alice, dave):
    for _ in range(5):
        with pytest.raises(ReauthenticationFailed):
            open_for(dave, alice, credential="nope")
    with pytest.raises(ReauthenticationFailed, match="Too many"):
        open_for(dave, alice)  # even the right password
    assert not BreakGlass.objects.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reason": "bored"}, "kind of emergency"),
        ({"detail": "  "}, "Describe the emergency"),
        ({"detail": "x" * 1001}, "Describe the emergency"),
        ({"hours": 13}, "between 1 and 12 hours"),
        ({"hours": 0}, "between 1 and 12 hours"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(keys_sealed, alice, dave, change, message):
    with pytest.raises(ValidationError, match=message):
        open_for(dave, alice, **change)
    assert not BreakGlass.objects.exists()


def test_only_cleared_clinicians_break_the_glass(keys_sealed, alice, bob, erin, hospital, other_admin):
    unverified = UserFactory(email="new@example.org", role="clinician", institution=hospital)
    enable_totp(unverified)
    no_mfa = UserFactory(email="nomfa@example.org", role="clinician", institution=hospital, verified=True)
    for user in (bob, erin, unverified, no_mfa, other_admin):
        with pytest.raises(PermissionDenied):
            open_for(user, alice)
    assert not BreakGlass.objects.exists()


def test_admin_reviews_and_closing_ends_access_at_once(client, keys_sealed, alice, carol, dave, visit, other_admin):
    record = write(alice, carol, visit)
    session = open_for(dave, alice)
    chain_seal()
    assert can_read(dave, record)
    assert break_glass_detail(session, user=other_admin) == DETAIL
    with pytest.raises(PermissionDenied):
        break_glass_detail(session, user=carol)

    client.force_login(other_admin)
    notices = client.get(reverse("notifications"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert f"{dave.display_name} used emergency access. Review it." in notices
    listing = client.get(reverse("institution_break_glass"), HTTP_ACCEPT_LANGUAGE="en")
    assert listing.status_code == 200 and str(session.public_id) in listing.content.decode()
    url = reverse("institution_break_glass_detail", args=[session.public_id])
    page = client.get(url, HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 200 and DETAIL in page.content.decode()
    assert len(page.context["reads"]) >= 1
    # "Not justified" needs a note.
    refused = client.post(url, {"review": "not_justified", "note": ""}, HTTP_ACCEPT_LANGUAGE="en")
    assert refused.status_code == 400 and "note is required" in refused.content.decode()
    assert BreakGlass.objects.get(pk=session.pk).closed_at is None
    done = client.post(url, {"review": "justified", "note": "ICU admission confirmed"})
    assert done.status_code == 302
    session.refresh_from_db()
    assert session.review == "justified" and session.closed_by == other_admin and session.closed_tx
    # The note is sealed like the reason: not in the row, read by the reviewer, the clinician and the patient.
    assert b"ICU admission" not in bytes(session.review_note_ciphertext)
    assert "ICU admission" not in str(session.review_note_keys)
    assert "ICU admission confirmed" in client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    for reader in (alice, dave):
        assert break_glass_review_note(session, user=reader) == "ICU admission confirmed"
    with pytest.raises(PermissionDenied):
        break_glass_review_note(session, user=carol)
    assert not can_read(dave, record)  # closed before its expiry: access ends now
    chain_seal()
    assert TxRow.objects.filter(cid=session.closed_tx, type=BREAK_GLASS_CLOSED).exists()
    with pytest.raises(ValidationError, match="already been reviewed"):
        break_glass_close(reviewer=other_admin, session=session, review="justified")


def test_only_an_admin_of_the_clinicians_institution_reviews(
    client, keys_sealed, alice, carol, dave, hospital_admin, other_admin
):
    session = open_for(dave, alice)
    for user in (hospital_admin, carol, dave, alice):
        with pytest.raises(PermissionDenied):
            break_glass_close(reviewer=user, session=session, review="justified")
    url = reverse("institution_break_glass_detail", args=[session.public_id])
    client.force_login(hospital_admin)
    assert client.get(url).status_code == 404
    assert str(session.public_id) not in client.get(reverse("institution_break_glass")).content.decode()
    for user in (alice, carol, dave):
        client.force_login(user)
        assert client.get(url).status_code == 403
        assert client.get(reverse("institution_break_glass")).status_code == 403
    assert BreakGlass.objects.get(pk=session.pk).closed_at is None


def test_break_glass_page_denies_everyone_but_cleared_clinicians(client, keys_sealed, alice, erin, hospital_admin):
    url = reverse("clinic_break_glass")
    assert client.get(url).status_code == 302  # anonymous: sign in first
    for user in (alice, erin, hospital_admin):
        client.force_login(user)
        assert client.get(url).status_code == 403
        assert client.post(url, {"patient": str(alice.public_id)}).status_code == 403
    assert not BreakGlass.objects.exists()


def test_break_glass_through_the_page(client, keys_sealed, alice, carol, dave, visit):
    record = write(alice, carol, visit)
    client.force_login(dave)
    url = reverse("clinic_break_glass")
    form = {"patient": alice.email, "reason": "unconscious", "detail": DETAIL, "hours": "4"}
    wrong = client.post(url, {**form, "credential": "not it"}, HTTP_ACCEPT_LANGUAGE="en")
    assert wrong.status_code == 400 and "not your password" in wrong.content.decode()
    missing = client.post(url, {**form, "patient": "nobody@example.org", "credential": PASSWORD})
    assert missing.status_code == 400
    assert not BreakGlass.objects.exists()
    opened = client.post(url, {**form, "credential": PASSWORD})
    assert opened.status_code == 302 and opened["Location"] == reverse("clinic_chart", args=[alice.public_id])
    detail = client.get(reverse("record_detail", args=[record.public_id]))
    assert detail.status_code == 200
    listing = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Open until" in listing


def test_ledger_records_open_and_close_and_refuses_replays(keys_sealed, alice, carol, dave, other_admin):
    session = open_for(dave, alice)
    raw = bytes(MempoolEntry.objects.get(cid=session.opened_tx).raw)
    chain_seal()
    assert TxRow.objects.filter(cid=session.opened_tx, type=BREAK_GLASS_OPENED).exists()
    with pytest.raises(TxRejected):
        tx_submit(raw)
    # The opener cannot close their own session on chain.
    from accounts.keys import signing_private_key
    from chain.ledger_services import tx_sign_and_submit

    with pytest.raises(TxRejected, match="does not review"):
        tx_sign_and_submit(
            private_key=signing_private_key(dave),
            type=BREAK_GLASS_CLOSED,
            payload={"session": bytes(session.chain_id), "outcome": "justified"},
        )
    # The pseudonym is not the one of any grant relationship and no identifier is on chain.
    payload_hex = raw.hex()
    assert alice.public_id.hex not in payload_hex and alice.email.encode().hex() not in payload_hex


def test_closing_waits_for_the_opening_to_be_sealed(keys_sealed, alice, dave, other_admin):
    session = open_for(dave, alice)  # not sealed yet
    session = break_glass_close(reviewer=other_admin, session=session, review="justified")
    assert session.closed_tx == ""
    assert break_glass_redrive() == 0
    chain_seal()
    assert break_glass_redrive() == 1
    session.refresh_from_db()
    assert session.closed_tx
    chain_seal()
    assert TxRow.objects.filter(cid=session.closed_tx).exists()


def test_a_second_open_returns_the_running_session(keys_sealed, alice, dave):
    first = open_for(dave, alice)
    assert open_for(dave, alice).pk == first.pk
    assert BreakGlass.objects.count() == 1


def test_break_glass_does_not_reach_other_patients(keys_sealed, alice, bob, carol, dave, visit):
    from records.clinical.services import visit_open

    bob_visit = visit_open(clinician=carol, patient=bob)
    bobs = write(bob, carol, bob_visit)
    open_for(dave, alice)
    with pytest.raises(RecordAccessDenied):
        record_get_for_user(dave, bobs.public_id)


def test_an_unverified_admin_sees_no_sessions(client, keys_sealed, alice, dave, other_hospital):
    session = open_for(dave, alice)
    pending = UserFactory(email="new.admin@example.org", role="institution_admin", institution=other_hospital)
    enable_totp(pending)
    client.force_login(pending)
    listing = client.get(reverse("institution_break_glass"))
    assert listing.status_code == 403 and alice.display_name not in listing.content.decode()
    assert client.get(reverse("institution_break_glass_detail", args=[session.public_id])).status_code == 404


def test_a_reviewer_whose_key_is_not_sealed_yet_still_closes(keys_sealed, alice, carol, dave, visit, other_hospital):
    record = write(alice, carol, visit)
    session = open_for(dave, alice)
    chain_seal()
    fresh = UserFactory(email="fresh.admin@example.org", role="institution_admin", institution=other_hospital)
    enable_totp(fresh)
    from accounts.models import User

    User.objects.filter(pk=fresh.pk).update(verified_at=timezone.now())
    fresh.refresh_from_db()
    session = break_glass_close(reviewer=fresh, session=session, review="justified")
    assert session.closed_at is not None and session.closed_tx == ""
    assert not can_read(dave, record)
    chain_seal()  # the reviewer's key registration
    assert break_glass_redrive() == 1
    session.refresh_from_db()
    assert session.closed_tx


def test_the_review_list_counts_reads_within_each_session(client, keys_sealed, alice, carol, dave, visit, other_admin):
    record = write(alice, carol, visit)
    first = open_for(dave, alice)
    chain_seal()
    break_glass_close(reviewer=other_admin, session=first, review="justified")
    second = open_for(dave, alice)
    assert second.pk != first.pk
    assert can_read(dave, record)
    client.force_login(other_admin)
    sessions = {s.pk: s for s in client.get(reverse("institution_break_glass")).context["sessions"]}
    assert (sessions[first.pk].reads, sessions[second.pk].reads) == (0, 1)


def test_the_lockout_counts_audited_failures_in_the_last_fifteen_minutes(keys_sealed, alice, dave):
    from records.sharing.breakglass import REAUTH_FAILED, REAUTH_FAILURES_MAX, reauthenticate

    for _ in range(REAUTH_FAILURES_MAX):
        with pytest.raises(ReauthenticationFailed):
            reauthenticate(dave, "wrong", patient=alice)
    failures = AccessEvent.objects.filter(actor=dave, detail=REAUTH_FAILED, outcome="denied", patient=alice)
    assert failures.count() == REAUTH_FAILURES_MAX
    with pytest.raises(ReauthenticationFailed, match="Too many"):
        reauthenticate(dave, PASSWORD)
    # Sixteen minutes later the window has passed.
    failures.update(at=timezone.now() - timedelta(minutes=16))
    reauthenticate(dave, PASSWORD)
