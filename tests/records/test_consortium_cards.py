"""A patient's card reaches another node's hospital with a one-time code, and only so."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import translation

from accounts.models import User
from chain.core import crypto
from chain.ledger_services import chain_seal, tx_sign_and_submit
from chain.peer_apps import Answer
from records.consortium import cards
from records.models import AccessEvent, CardCode, Notification, Visit
from tests.consortium import OtherNode
from tests.records.conftest import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def eastbay(node):
    """Another node's hospital and its listed doctor (home: node-2)."""
    return OtherNode().join()


def ask(other: OtherNode, patient: User, code: str, *, node: str = "node-2", clinician: bytes | None = None):
    message = {
        "health_id": patient.health_id_display,
        "code": code,
        "institution": other.code,
        "clinician": clinician or other.doctor.public,
    }
    return cards.card_release(node, message)


def test_the_right_code_releases_the_card_once_records_the_consent_and_tells_the_patient(eastbay, alice):
    code, _ = cards.card_code_issue(alice)

    status, answer = ask(eastbay, alice, cards.display_code(code).lower())  # typed as read out: any case, a dash
    assert status == 200
    card = answer["card"]
    assert card["public_id"] == str(alice.public_id) and card["health_id"] == alice.health_id
    assert card["sign_public"] == bytes(alice.sign_public) and card["enc_public"] == bytes(alice.enc_public)
    assert card["node"] == "node-1"
    assert "enc_private_wrapped" not in card and "email" not in card and "password" not in card

    release = CardCode.objects.get(patient=alice)
    doctor = User.objects.get(sign_public=eastbay.doctor.public)
    assert release.used_at and release.released_to == doctor and release.released_to_node == "node-2"
    assert release.released_to_institution.code == "eastbay"
    notice = Notification.objects.get(user=alice)
    assert notice.kind == Notification.Kind.CARD_RELEASED and notice.params["institution"] == "eastbay"
    event = AccessEvent.objects.get(patient=alice, action=AccessEvent.Action.CARD)
    assert event.actor == doctor and event.actor_institution.code == "eastbay"

    assert ask(eastbay, alice, code) == (403, {"error": "code"})  # used up


def test_wrong_codes_are_counted_and_burn_the_code(eastbay, alice):
    code, _ = cards.card_code_issue(alice)
    for _attempt in range(5):
        assert ask(eastbay, alice, "ZZZZZZZZ")[0] == 403
    assert ask(eastbay, alice, code)[0] == 403  # burnt: even the right code no longer works
    assert not CardCode.objects.filter(used_at__isnull=False).exists()
    fresh, _ = cards.card_code_issue(alice)
    assert ask(eastbay, alice, fresh)[0] == 200


def test_a_new_code_replaces_the_last_and_an_expired_one_fails(eastbay, alice):
    old, _ = cards.card_code_issue(alice)
    new, row = cards.card_code_issue(alice)
    assert ask(eastbay, alice, old)[0] == 403
    CardCode.objects.filter(pk=row.pk).update(expires_at=row.created_at)
    assert ask(eastbay, alice, new)[0] == 403


def test_only_a_listed_clinician_of_the_asking_nodes_institution_gets_a_card(eastbay, alice):
    code, _ = cards.card_code_issue(alice)
    assert ask(eastbay, alice, code, node="node-3")[0] == 403  # eastbay's node is node-2
    stranger = crypto.new_ed25519()
    assert ask(eastbay, alice, code, clinician=stranger.public)[0] == 403
    assert ask(eastbay, alice, code)[0] == 200  # the code was not spent by the refusals


def test_an_unknown_id_and_a_malformed_message_are_refused(eastbay, alice, bob):
    code, _ = cards.card_code_issue(alice)
    assert ask(eastbay, bob, code)[0] == 403  # bob has no code
    assert cards.card_release("node-2", {"health_id": "YL-0000", "code": code})[0] == 400
    status, _ = cards.card_release(
        "node-2",
        {"health_id": "YL-2345-6789-A", "code": code, "institution": "eastbay", "clinician": eastbay.doctor.public},
    )
    assert status in (400, 404)


def remote_card(node_id: str = "node-3") -> dict:
    """The card another node sends for its patient (their keys registered on chain)."""
    sign, enc = crypto.new_ed25519(), crypto.new_x25519()
    tx_sign_and_submit(
        private_key=sign.private,
        type="accounts.key_registered",
        payload={"kind": "user", "enc_public": enc.public, "sign_public": sign.public},
    )
    chain_seal()
    return {
        "public_id": "9b0f4c52-43a5-4d7f-9f57-3f0c0f1d2a11",
        "health_id": "YL4K7PM2QDX",
        "sign_public": sign.public,
        "enc_public": enc.public,
        "name": "赵六",
        "name_en": "Zhao Liu",
        "birth_date": "1980-02-03",
        "sex": "male",
        "node": node_id,
    }


def test_a_card_from_another_node_becomes_a_directory_row_checked_against_the_chain(node):
    from accounts.health_id import new_health_id

    card = remote_card()
    card["health_id"] = new_health_id()
    patient = cards.card_adopt(card, node="node-3")
    assert patient.home_node == "node-3" and patient.role == "patient" and not patient.has_usable_password()
    assert str(patient.public_id) == card["public_id"] and patient.birth_date.isoformat() == "1980-02-03"
    assert bytes(patient.enc_private_wrapped) == b""
    assert cards.card_adopt({**card, "name": "赵六六"}, node="node-3").pk == patient.pk  # an update, not a second row

    forged = {**card, "enc_public": crypto.new_x25519().public}
    with pytest.raises(ValidationError):
        cards.card_adopt(forged, node="node-3")


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (
            [Answer("node-2", 404, {"error": "unknown"}), Answer("node-3", 403, {"error": "code"})],
            "wrong, used or expired",
        ),
        (
            [Answer("node-2", 404, {"error": "unknown"}), Answer("node-3", 0, {"error": "unreachable"})],
            "cannot be reached",
        ),
        ([Answer("node-2", 404, {"error": "unknown"}), Answer("node-3", 404, {"error": "unknown"})], "No patient"),
    ],
)
def test_the_doctor_is_told_what_to_do_when_no_card_comes(monkeypatch, carol, answers, message):
    monkeypatch.setattr(cards, "consortium_nodes", lambda: ["node-2", "node-3"])
    monkeypatch.setattr(cards, "call_each", lambda nodes, name, value, timeout: answers)
    with translation.override("en"):
        with pytest.raises(ValidationError, match=message):
            cards.card_fetch(health_id="YL4K7PM2QDX", code="7KQM42XP", clinician=carol)
        with pytest.raises(ValidationError, match="8 letters"):
            cards.card_fetch(health_id="YL4K7PM2QDX", code="123", clinician=carol)


def test_a_doctor_opens_a_visit_for_a_patient_of_another_node_with_the_code(monkeypatch, client, node, carol):
    from accounts.health_id import formatted, new_health_id

    card = remote_card()
    card["health_id"] = new_health_id()
    seen = {}

    def fetch(*, health_id, code, clinician):
        seen.update(health_id=health_id, code=code, clinician=clinician)
        return cards.card_adopt(card, node="node-3")

    monkeypatch.setattr("records.clinical.forms.in_consortium", lambda: True)
    monkeypatch.setattr("records.clinical.forms.card_fetch", fetch)
    login(client, carol)
    url = reverse("clinic_patients")
    page = client.post(url, {"patient": formatted(card["health_id"]), "kind": "outpatient"}, HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 200 and "ask them for the one-time code" in page.content.decode()
    assert not Visit.objects.exists()

    done = client.post(url, {"patient": formatted(card["health_id"]), "kind": "outpatient", "card_code": "7kqm-42xp"})
    visit = Visit.objects.get()
    assert done.status_code == 302 and done["Location"] == reverse("clinic_visit", args=[visit.public_id])
    assert visit.patient.home_node == "node-3" and seen["clinician"] == carol and seen["health_id"] == card["health_id"]


def test_the_card_page_makes_a_code_in_a_consortium_and_lists_who_has_the_card(monkeypatch, client, eastbay, alice):
    login(client, alice)
    url = reverse("patient_card")
    alone = client.get(url, HTTP_ACCEPT_LANGUAGE="en")
    assert alone.status_code == 200 and "not part of a consortium" in alone.content.decode()

    monkeypatch.setattr("records.consortium.views.in_consortium", lambda: True)
    made = client.post(url, HTTP_ACCEPT_LANGUAGE="en")
    assert made.status_code == 200 and made["Cache-Control"] == "no-store"
    shown = made.context["code"]
    assert len(shown) == 9 and shown[4] == "-"
    assert ask(eastbay, alice, shown)[0] == 200
    listed = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "East Bay Hospital" in listed and "Dr. Qian" in listed
    assert shown not in listed  # a code is shown once


@pytest.mark.parametrize("who", ["bob", "carol", "erin"])
def test_only_the_patient_reaches_their_card_page(client, node, alice, bob, carol, erin, who):
    login(client, {"bob": bob, "carol": carol, "erin": erin}[who])
    response = client.post(reverse("patient_card"))
    if who == "bob":  # another patient makes a code for their own card, never alice's
        assert not CardCode.objects.filter(patient=alice).exists()
    else:
        assert response.status_code == 403
