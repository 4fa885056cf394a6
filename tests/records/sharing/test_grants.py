"""Patient-issued grants and revocation: who reads what, on chain, in constant queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from chain.ledger_services import TxRejected, chain_seal, tx_sign_and_submit, tx_submit
from chain.models import MempoolEntry
from chain.models import Transaction as TxRow
from records.clinical.services import record_create, record_finalize_imported
from records.keys import decrypt_content
from records.ledger import GRANT_ISSUED, GRANT_REVOKED
from records.models import AccessEvent, Grant, MedicalRecord, WrappedKey
from records.policy import RecordAccessDenied, grant_in_scope, record_get_for_user
from records.sharing.grants import grant_issue, grant_revoke, grants_redrive
from tests.factories import UserFactory, enable_totp
from tests.records.conftest import login

pytestmark = pytest.mark.django_db

NOW = timezone.now


@pytest.fixture
def keys_sealed(node, alice, bob, carol, dave, erin, hospital, other_hospital, institute):
    """Everyone's key registration sealed: the grant validator looks keys up on chain."""
    chain_seal()


def write(patient, author, visit, kind="prescription", title="Amoxicillin", sensitive=False):
    record = record_create(patient=patient, author=author, kind=kind, content={"title": title}, visit=visit)
    record = record_finalize_imported(record=record)
    if sensitive:
        MedicalRecord.objects.filter(pk=record.pk).update(sensitive=True)
        record.refresh_from_db()
    return record


def issue(patient, **kwargs):
    defaults = {
        "scope": "all",
        "purpose": "treatment",
        "valid_from": NOW() - timedelta(minutes=1),
        "valid_until": NOW() + timedelta(days=30),
    }
    return grant_issue(patient=patient, **{**defaults, **kwargs})


def can_read(user, record) -> bool:
    try:
        access = record_get_for_user(user, record.public_id)
    except RecordAccessDenied:
        return False
    assert decrypt_content(access.dek, access.version)["title"]
    return True


def test_grant_lets_a_doctor_elsewhere_read_and_revocation_denies_the_next_request(
    client, keys_sealed, alice, carol, dave, visit
):
    record = write(alice, carol, visit)
    login(client, dave)
    url = reverse("record_detail", args=[record.public_id])
    assert client.get(url).status_code == 403
    grant = issue(alice, grantee_user=dave, scope="kinds", kinds=["prescription"], purpose="second_opinion")
    response = client.get(url)
    assert response.status_code == 200
    assert "Amoxicillin" in response.content.decode()
    event = AccessEvent.objects.filter(actor=dave, record=record, outcome="allowed").latest("at")
    assert (event.basis, event.purpose) == ("grant", "second_opinion")

    # A record written later, in scope, is readable without the patient doing anything.
    later = write(alice, carol, visit, title="Ibuprofen")
    assert client.get(reverse("record_detail", args=[later.public_id])).status_code == 200
    # Out of scope (another kind) stays closed.
    note = write(alice, carol, visit, kind="note", title="Note")
    assert client.get(reverse("record_detail", args=[note.public_id])).status_code == 403

    grant_revoke(patient=alice, grant=grant)
    assert client.get(url).status_code == 403
    denied = AccessEvent.objects.filter(actor=dave, record=record, outcome="denied").latest("at")
    assert denied.detail == "no basis"


def test_expired_and_pending_grants_deny(keys_sealed, alice, carol, dave, visit):
    record = write(alice, carol, visit)
    grant = issue(alice, grantee_user=dave)
    assert can_read(dave, record)
    Grant.objects.filter(pk=grant.pk).update(valid_until=NOW() - timedelta(seconds=1))
    assert not can_read(dave, record)
    Grant.objects.filter(pk=grant.pk).update(
        valid_from=NOW() + timedelta(days=1), valid_until=NOW() + timedelta(days=2)
    )
    assert not can_read(dave, record)


def test_institution_grant_reaches_cleared_staff_only(keys_sealed, alice, carol, other_hospital, visit):
    record = write(alice, carol, visit)
    issue(alice, grantee_institution=other_hospital)
    cleared = UserFactory(email="ivy@example.org", role="clinician", institution=other_hospital, verified=True)
    enable_totp(cleared)
    unverified = UserFactory(email="jo@example.org", role="clinician", institution=other_hospital)
    enable_totp(unverified)
    no_2fa = UserFactory(email="kim@example.org", role="clinician", institution=other_hospital, verified=True)
    assert can_read(cleared, record)
    assert not can_read(unverified, record)
    assert not can_read(no_2fa, record)
    assert WrappedKey.objects.filter(institution=other_hospital, version=record.current_version).exists()


def test_sensitive_records_only_when_named(keys_sealed, alice, carol, dave, visit):
    plain = write(alice, carol, visit)
    secret = write(alice, carol, visit, kind="note", title="HIV test", sensitive=True)
    grant = issue(alice, grantee_user=dave)
    assert can_read(dave, plain)
    assert not can_read(dave, secret)
    assert not grant_in_scope(grant, secret)
    named = issue(alice, grantee_user=dave, scope="records", records=[secret])
    assert grant_in_scope(named, secret)
    assert can_read(dave, secret)


def test_researchers_never_open_single_records_even_under_a_research_grant(
    keys_sealed, alice, carol, erin, institute, visit
):
    """Research grants feed de-identified datasets (records.research), never the identified record."""
    record = write(alice, carol, visit)
    issue(alice, grantee_institution=institute, purpose="treatment")
    assert not can_read(erin, record)
    issue(alice, grantee_institution=institute, purpose="research")
    assert not can_read(erin, record)
    event = AccessEvent.objects.filter(actor=erin, record=record).latest("at")
    assert (event.outcome, event.detail) == ("denied", "no basis")


def test_another_patient_cannot_see_or_revoke(client, keys_sealed, alice, bob, dave):
    grant = issue(alice, grantee_user=dave)
    login(client, bob)
    page = client.get(reverse("patient_sharing"))
    assert page.status_code == 200
    assert str(grant.public_id) not in page.content.decode()
    response = client.post(reverse("patient_grant_revoke", args=[grant.public_id]))
    assert response.status_code == 404
    grant.refresh_from_db()
    assert grant.status == "active"
    with pytest.raises(PermissionDenied):
        grant_revoke(patient=bob, grant=grant)
    login(client, dave)
    assert client.get(reverse("patient_sharing")).status_code == 403


def test_patient_grants_and_revokes_through_the_pages(client, keys_sealed, alice, carol, dave, visit):
    record = write(alice, carol, visit)
    login(client, alice)
    assert client.get(reverse("patient_grant_new")).status_code == 200
    today = timezone.localdate()
    response = client.post(
        reverse("patient_grant_new"),
        {
            "grantee_kind": "user",
            "grantee_email": "dave@example.org",
            "scope": "records",
            "records": [str(record.public_id)],
            "purpose": "treatment",
            "valid_from": today.isoformat(),
            "valid_until": (today + timedelta(days=7)).isoformat(),
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    grant = Grant.objects.get()
    assert grant.grantee_user == dave and list(grant.records.all()) == [record]
    assert can_read(dave, record)
    page = client.get(reverse("patient_sharing")).content.decode()
    assert "dave@example.org" in page or dave.display_name in page
    # Bad dates are refused.
    response = client.post(
        reverse("patient_grant_new"),
        {
            "grantee_kind": "user",
            "grantee_email": "dave@example.org",
            "scope": "all",
            "purpose": "treatment",
            "valid_from": today.isoformat(),
            "valid_until": (today - timedelta(days=1)).isoformat(),
        },
    )
    assert response.status_code == 200 and Grant.objects.count() == 1
    response = client.post(reverse("patient_grant_revoke", args=[grant.public_id]))
    assert response.status_code == 302
    assert not can_read(dave, record)


def test_the_same_grant_sent_twice_is_made_once(client, keys_sealed, alice, carol, dave, visit):
    """A double click on Share, or the form sent again from the back button: revoking "the" grant must end access."""
    record = write(alice, carol, visit)
    login(client, alice)
    today = timezone.localdate()
    form = {
        "grantee_kind": "user",
        "grantee_email": "dave@example.org",
        "scope": "kinds",
        "kinds": ["lab_report", "prescription"],
        "purpose": "treatment",
        "valid_from": today.isoformat(),
        "valid_until": (today + timedelta(days=7)).isoformat(),
    }
    assert client.post(reverse("patient_grant_new"), form).status_code == 302
    again = {**form, "kinds": ["prescription", "lab_report"]}
    page = client.post(reverse("patient_grant_new"), again, follow=True, HTTP_ACCEPT_LANGUAGE="en")
    assert Grant.objects.count() == 1
    assert "You already share exactly this with" in page.content.decode()
    page = client.post(reverse("patient_grant_new"), form, follow=True, HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "您已与" in page.content.decode()
    assert Grant.objects.count() == 1

    # Other terms are another grant; so is the same once the first is revoked.
    assert client.post(reverse("patient_grant_new"), {**form, "purpose": "second_opinion"}).status_code == 302
    assert Grant.objects.count() == 2
    first = Grant.objects.order_by("created_at").first()
    assert client.post(reverse("patient_grant_revoke", args=[first.public_id])).status_code == 302
    assert client.post(reverse("patient_grant_new"), form).status_code == 302
    assert Grant.objects.filter(status="active").count() == 2 and Grant.objects.count() == 3
    assert can_read(dave, record)


def test_ledger_grant_and_revoke_are_sealed_and_replays_refused(keys_sealed, alice, bob, dave):
    grant = issue(alice, grantee_user=dave)
    raw = bytes(MempoolEntry.objects.get(cid=grant.issued_tx).raw)
    # Revoking before the grant is sealed waits in the outbox.
    grant_revoke(patient=alice, grant=grant)
    grant.refresh_from_db()
    assert grant.revoked_tx == ""
    chain_seal()
    assert TxRow.objects.filter(cid=grant.issued_tx, type=GRANT_ISSUED).exists()
    assert grants_redrive() == 1
    grant.refresh_from_db()
    chain_seal()
    assert TxRow.objects.filter(cid=grant.revoked_tx, type=GRANT_REVOKED).exists()

    with pytest.raises(TxRejected) as replay:
        tx_submit(raw)
    assert replay.value.reason == "replay"
    payload = TxRow.objects.get(cid=grant.issued_tx).payload
    from accounts.keys import signing_private_key
    from chain.core.transaction import Transaction as CoreTx

    # The same grant, re-signed with a fresh sequence number after its revocation.
    original = CoreTx.decode(raw)
    with pytest.raises(TxRejected) as again:
        tx_sign_and_submit(private_key=signing_private_key(alice), type=GRANT_ISSUED, payload=original.payload)
    assert "already exists" in again.value.message
    assert payload  # the explorer shows it (pseudonym, no name)
    assert alice.email not in str(payload)


def test_only_the_issuer_revokes_on_chain(keys_sealed, alice, bob, dave):
    from accounts.keys import signing_private_key

    grant = issue(alice, grantee_user=dave)
    chain_seal()
    with pytest.raises(TxRejected) as refused:
        tx_sign_and_submit(
            private_key=signing_private_key(bob), type=GRANT_REVOKED, payload={"grant": bytes(grant.chain_id)}
        )
    assert "only the patient" in refused.value.message
    with pytest.raises(TxRejected):
        tx_sign_and_submit(private_key=signing_private_key(alice), type=GRANT_REVOKED, payload={"grant": b"\x00" * 16})
    grant_revoke(patient=alice, grant=grant)
    grant.refresh_from_db()
    assert grant.revoked_tx  # sealed grant: the revocation goes out at once
    chain_seal()
    with pytest.raises(TxRejected):
        tx_sign_and_submit(
            private_key=signing_private_key(alice), type=GRANT_REVOKED, payload={"grant": bytes(grant.chain_id)}
        )


def test_pseudonyms_differ_per_relationship(keys_sealed, alice, dave, other_hospital):
    one = issue(alice, grantee_user=dave, purpose="treatment")
    two = issue(alice, grantee_user=dave, purpose="research")
    three = issue(alice, grantee_institution=other_hospital, purpose="treatment")
    four = issue(alice, grantee_user=dave, purpose="treatment")
    assert len({one.pseudonym, two.pseudonym, three.pseudonym}) == 3
    assert one.pseudonym == four.pseudonym
    assert len(bytes.fromhex(one.pseudonym)) == 32


def _decision_queries(user, record) -> int:
    with CaptureQueriesContext(connection) as ctx:
        record_get_for_user(user, record.public_id)
    return len(ctx.captured_queries)


def test_access_decision_costs_constant_queries(keys_sealed, alice, carol, dave, other_hospital, visit):
    records = [write(alice, carol, visit, title=f"R{i}") for i in range(5)]
    for _ in range(5):
        issue(alice, grantee_user=dave, scope="records", records=records[:3])
    issue(alice, grantee_institution=other_hospital)
    small = _decision_queries(dave, records[0])
    records += [write(alice, carol, visit, title=f"R{i}") for i in range(45)]
    for _ in range(45):
        issue(alice, grantee_user=dave, scope="records", records=records[:30])
    large = _decision_queries(dave, records[0])
    assert small == large


def test_doctor_sees_shared_patients_and_their_granted_records_only(
    client, keys_sealed, alice, bob, carol, dave, visit
):
    shared = write(alice, carol, visit, kind="lab_report", title="FBC")
    hidden = write(alice, carol, visit, kind="note", title="Note")
    login(client, dave)
    chart = reverse("clinic_chart", args=[alice.public_id])
    assert client.get(chart).status_code == 403
    grant = issue(alice, grantee_user=dave, scope="kinds", kinds=["lab_report"])
    page = client.get(reverse("clinic_patients")).content.decode()
    assert chart in page and str(bob.public_id) not in page
    body = client.get(chart).content.decode()
    assert str(shared.public_id) in body and str(hidden.public_id) not in body
    assert 'class="timeline-title">FBC</strong>' in body  # its title, as the patient sees it
    assert AccessEvent.objects.filter(actor=dave, action="view_chart", outcome="allowed", basis="grant").exists()
    grant_revoke(patient=alice, grant=grant)
    assert client.get(chart).status_code == 403
    assert chart not in client.get(reverse("clinic_patients")).content.decode()


def test_patient_marks_a_record_sensitive_and_the_grant_stops_covering_it(
    client, keys_sealed, alice, bob, carol, dave, visit
):
    record = write(alice, carol, visit)
    issue(alice, grantee_user=dave)
    assert can_read(dave, record)
    url = reverse("record_set_sensitive", args=[record.public_id])
    login(client, bob)
    assert client.post(url, {"sensitive": "1"}).status_code in (403, 404)
    login(client, alice)
    assert client.post(url, {"sensitive": "1"}).status_code == 302
    assert not can_read(dave, record)
    client.post(url, {"sensitive": "0"})
    assert can_read(dave, record)
