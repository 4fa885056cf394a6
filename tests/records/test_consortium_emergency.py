"""Break-glass across nodes: the home node releases a time-boxed emergency grant only for a committed session."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.keys import signing_private_key
from accounts.models import User
from chain.ledger_services import chain_seal, datetime_to_ms, tx_sign_and_submit
from chain.peer_apps import Answer
from records.consortium.cards import card_of
from records.ledger import BREAK_GLASS_CLOSED, BREAK_GLASS_OPENED
from records.models import AccessEvent, BreakGlass, Delivery, Grant, Notification, RekeyJob
from records.sharing import emergency
from tests.consortium import OtherNode
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def session(node, alice):
    """Dr Qian of East Bay (node-2) broke the glass; the opening is committed on chain."""
    eastbay = OtherNode().join()
    session_id = os.urandom(16)
    tx_sign_and_submit(
        private_key=eastbay.doctor.private,
        type=BREAK_GLASS_OPENED,
        payload={
            "session": session_id,
            "pseudonym": os.urandom(32),
            "reason": "unconscious",
            "not_after": datetime_to_ms(timezone.now() + timedelta(hours=2)),
        },
    )
    chain_seal()
    message = {
        "health_id": alice.health_id_display,
        "session": session_id,
        "clinician": eastbay.doctor.public,
        "institution": "eastbay",
    }
    return {"eastbay": eastbay, "id": session_id, "message": message}


def test_the_home_node_releases_a_grant_until_the_sessions_end_to_that_clinician_only(session, alice):
    status, answer = emergency.emergency_release("node-2", session["message"])
    assert status == 200 and answer["card"]["public_id"] == str(alice.public_id)
    grant = Grant.objects.get()
    doctor = User.objects.get(sign_public=session["eastbay"].doctor.public)
    assert grant.grantee_user == doctor and grant.purpose == "emergency" and bytes(grant.session) == session["id"]
    assert grant.scope == "all" and grant.include_sensitive
    assert timedelta(hours=1, minutes=59) < grant.valid_until - timezone.now() <= timedelta(hours=2)
    assert Delivery.objects.get(grant=grant).node == "node-2"  # the records go there, sealed to this doctor
    assert Notification.objects.get(user=alice).kind == Notification.Kind.BREAK_GLASS
    assert AccessEvent.objects.get(patient=alice, action="break_glass").actor == doctor
    assert emergency.emergency_release("node-2", session["message"])[0] == 200  # asked again: the same grant
    assert Grant.objects.count() == 1


def test_nothing_is_released_without_an_open_session_of_that_clinician_from_that_node(session, bob):
    message = session["message"]
    assert emergency.emergency_release("node-3", message)[0] == 403  # East Bay is node-2's
    assert emergency.emergency_release("node-2", {**message, "clinician": os.urandom(32)})[0] == 403
    assert emergency.emergency_release("node-2", {**message, "session": os.urandom(16)})[0] == 409
    assert emergency.emergency_release("node-2", {**message, "health_id": "YL-2345"})[0] == 400
    assert emergency.emergency_release("node-2", {"session": 1})[0] == 400
    assert not Grant.objects.exists()


def test_the_grant_ends_when_the_session_is_closed_on_chain_or_its_time_is_up(session, alice, carol):
    emergency.emergency_release("node-2", session["message"])
    grant = Grant.objects.get()
    chain_seal()  # the grant is on chain
    assert emergency.emergency_grants_end() == 0  # open and in time: nothing ends
    tx_sign_and_submit(  # a reviewer closes the session
        private_key=signing_private_key(carol),
        type=BREAK_GLASS_CLOSED,
        payload={"session": session["id"], "outcome": "justified"},
    )
    chain_seal()
    emergency.sessions_changed([f"breakglass/{session['id'].hex()}"])
    grant.refresh_from_db()
    assert grant.status == "revoked" and RekeyJob.objects.filter(grant=grant).exists()  # and so re-keyed


def test_an_expired_emergency_grant_is_revoked_by_the_redrive(session, alice):
    emergency.emergency_release("node-2", session["message"])
    past = timezone.now() - timedelta(seconds=1)
    Grant.objects.update(valid_from=past - timedelta(hours=1), valid_until=past)
    assert emergency.emergency_grants_end() == 1
    assert Grant.objects.get().status == "revoked"


@pytest.fixture
def remote_patient_card(node):
    """A card of a patient whose home is node-3 (their keys registered on chain), as that node sends it."""
    from tests.records.test_consortium_cards import remote_card

    return remote_card("node-3")


def test_the_emergency_doctor_opens_a_session_once_the_home_node_released(monkeypatch, carol, remote_patient_card):
    from accounts.health_id import new_health_id

    remote_patient_card["health_id"] = new_health_id()
    asked = []
    monkeypatch.setattr(emergency, "_wait_committed", lambda cid: chain_seal())
    monkeypatch.setattr(emergency, "consortium_nodes", lambda: ["node-2", "node-3"])
    monkeypatch.setattr(
        emergency,
        "call_each",
        lambda nodes, name, value, timeout: (
            asked.append(value)
            or [Answer("node-2", 404, {"error": "unknown"}), Answer("node-3", 200, {"card": remote_patient_card})]
        ),
    )
    monkeypatch.setattr("records.sharing.breakglass.staff_cleared", lambda user: True)
    row, released = emergency.break_glass_open_remote(
        clinician=carol,
        health_id=remote_patient_card["health_id"],
        reason="unconscious",
        detail="Found unconscious, no relatives",
        credential=PASSWORD,
        hours=2,
    )
    assert released and row.patient.home_node == "node-3" and row.clinician == carol
    assert asked[0]["session"] == bytes(row.chain_id) and asked[0]["clinician"] == bytes(carol.sign_public)
    assert not Notification.objects.filter(user=row.patient).exists()  # the home node tells the patient
    assert BreakGlass.objects.count() == 1


def test_with_the_home_node_down_only_a_known_patient_opens_on_what_this_node_holds(monkeypatch, node, carol, alice):
    chain_seal()  # the doctor's key is on chain
    monkeypatch.setattr(emergency, "_wait_committed", lambda cid: chain_seal())
    monkeypatch.setattr(emergency, "consortium_nodes", lambda: ["node-2"])
    monkeypatch.setattr(emergency, "call_each", lambda *a, **k: [Answer("node-2", 0, {"error": "unreachable"})])
    monkeypatch.setattr("records.sharing.breakglass.staff_cleared", lambda user: True)
    ask = {"clinician": carol, "reason": "unconscious", "detail": "x", "credential": PASSWORD, "hours": 1}
    with pytest.raises(emergency.HomeUnreachable):
        emergency.break_glass_open_remote(health_id="YL4K7PM2QDX", **ask)
    assert not BreakGlass.objects.exists()

    User.objects.filter(pk=alice.pk).update(home_node="node-2")  # Alice's card was given here before
    row, released = emergency.break_glass_open_remote(health_id=alice.health_id, **ask)
    assert row.patient == alice and not released


def test_the_release_carries_the_card_only_of_the_patient_asked_for(session, alice, bob):
    _status, answer = emergency.emergency_release("node-2", session["message"])
    assert answer["card"] == card_of(alice) and answer["card"]["sign_public"] != bytes(bob.sign_public)


def test_the_patient_sees_the_emergency_grant_on_their_sharing_page_and_may_end_it(session, client, alice):
    from django.urls import reverse

    from tests.records.conftest import login

    emergency.emergency_release("node-2", session["message"])
    login(client, alice)
    page = client.get(reverse("patient_sharing"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    active = page.split('id="grants-active"', 1)[1].split("</section>", 1)[0]
    assert "Dr. Qian" in active and "East Bay Hospital" in active and "Emergency (break-glass)" in active
    assert "directory.invalid" not in page  # a doctor of another node has no address here


def test_the_emergency_form_sends_a_patient_of_another_node_to_their_home_node(node, alice, monkeypatch):
    from records.sharing.forms import BreakGlassForm

    monkeypatch.setattr("records.sharing.forms.in_consortium", lambda: True)
    data = {"reason": "unconscious", "detail": "x", "hours": 1, "credential": "pw"}
    User.objects.filter(pk=alice.pk).update(home_node="node-2")  # her card was shown here once
    form = BreakGlassForm({**data, "patient": alice.health_id_display})
    assert form.is_valid() and form.cleaned_data["patient"] == alice.health_id  # never a local session
    from accounts.health_id import formatted, new_health_id

    elsewhere = new_health_id()  # nobody here: perhaps someone of another node
    stranger = BreakGlassForm({**data, "patient": formatted(elsewhere)})
    assert stranger.is_valid() and stranger.cleaned_data["patient"] == elsewhere
