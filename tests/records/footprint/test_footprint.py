"""The patient's footprint: who accessed their data, filters, the chart, and the proof on chain."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from chain.ledger_services import TxRejected, chain_seal, tx_sign_and_submit
from chain.models import MempoolEntry
from records import ledger
from records.audit import audit
from records.clinical.services import record_create, record_finalize_imported
from records.footprint import services as footprint
from records.footprint.tasks import log_accesses
from records.models import AccessEvent
from records.policy import RecordAccessDenied, record_get_for_user
from tests.conftest import loaded_from_elsewhere
from tests.records.conftest import login

pytestmark = pytest.mark.django_db

URL = "/patient/footprint/"


@pytest.fixture
def record(visit, carol, alice):
    """A note Dr Carol wrote and signed (her work on a draft joins the footprint at signing)."""
    draft = record_create(patient=alice, author=carol, kind="note", content={"title": "t", "text": "x"}, visit=visit)
    return record_finalize_imported(record=draft)


@pytest.fixture
def accesses(record, carol, dave, bob):
    """Dr Carol reads the note (allowed); Dr Dave and Bob try to (denied)."""
    record_get_for_user(carol, record.public_id)
    for outsider in (dave, bob):
        with pytest.raises(RecordAccessDenied):
            record_get_for_user(outsider, record.public_id)
    return record


def rows_of(response):
    return response.context["rows"]


def test_url_and_nav(client, alice):
    assert reverse("patient_footprint") == URL
    login(client, alice)
    response = client.get(URL)
    assert response.status_code == 200
    active = [item for item in response.context["nav_items"] if item["active"]]
    assert [item["url"] for item in active] == [URL]


def test_patient_sees_the_doctors_read_with_institution_purpose_and_basis(client, alice, carol, accesses):
    login(client, alice)
    response = client.get(URL)
    assert response.status_code == 200
    views = [r for r in rows_of(response) if r["event"].action == "view" and r["event"].outcome == "allowed"]
    assert len(views) == 1
    event = views[0]["event"]
    assert event.actor == carol
    assert event.record == accesses
    assert views[0]["basis"] == footprint.BASES["author"]
    assert views[0]["purpose"] == footprint.PURPOSES["treatment"]
    html = response.content.decode()
    assert carol.name in html
    assert carol.institution.name in html  # 北院 (Chinese is the default language)
    assert reverse("record_detail", args=[accesses.public_id]) in html
    # The visit Carol opened and the record she wrote are there too.
    actions = {r["event"].action for r in rows_of(response)}
    assert {"open_visit", "create", "view"} <= actions


def test_denied_attempts_by_others_are_highlighted(client, alice, dave, bob, accesses):
    login(client, alice)
    response = client.get(URL, HTTP_ACCEPT_LANGUAGE="en")
    denied = [r["event"] for r in rows_of(response) if r["event"].outcome == "denied"]
    assert {e.actor for e in denied} == {dave, bob}
    html = response.content.decode()
    assert html.count('class="fp-entry fp-denied"') == 2
    assert dave.name in html
    assert "South Hospital" not in html or "南院" not in html  # rendered in one language only
    assert response.context["chart"].denied == 2


def test_own_actions_hidden_unless_asked(client, alice, accesses):
    audit(actor=alice, action="view", patient=alice, record=accesses, basis="patient")  # she reads her own record
    login(client, alice)
    default = rows_of(client.get(URL))
    assert all(r["event"].actor_id != alice.pk for r in default)
    with_own = rows_of(client.get(URL, {"mine": "1"}))
    own = [r for r in with_own if r["event"].actor_id == alice.pk]
    assert len(own) == 1
    assert own[0]["own"]
    assert own[0]["basis"] == footprint.BASES["patient"]


@pytest.mark.parametrize("who", ["carol", "dave", "erin", "hospital_admin", "operator"])
def test_staff_researchers_and_admins_are_refused(client, request, who, accesses):
    user = request.getfixturevalue(who)
    login(client, user)
    response = client.get(URL)
    assert response.status_code == 403
    assert str(accesses.public_id) not in response.content.decode()


def test_another_patient_sees_only_their_own_footprint(client, alice, bob, accesses):
    """The URL names no patient: Bob gets his own (empty) footprint, never a row of Alice's."""
    login(client, bob)
    response = client.get(URL, {"mine": "1"})
    assert response.status_code == 200
    assert rows_of(response) == []
    html = response.content.decode()
    assert str(accesses.public_id) not in html
    assert response.context["chart"].total == 0
    # Bob's own refused attempt is in Alice's footprint, not in his.
    login(client, alice)
    assert any(r["event"].actor == bob for r in rows_of(client.get(URL)))


def test_anonymous_is_sent_to_sign_in(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_filters(client, alice, carol, dave, accesses):
    login(client, alice)
    by_institution = rows_of(client.get(URL, {"institution": "south"}))
    assert {r["event"].actor for r in by_institution} == {dave}
    denied = rows_of(client.get(URL, {"outcome": "denied"}))
    assert len(denied) == 2
    assert all(r["event"].outcome == "denied" for r in denied)
    created = rows_of(client.get(URL, {"action": "create"}))
    assert [r["event"].actor for r in created] == [carol]
    today = timezone.localdate()
    every = 6  # written, signed, one read, two denied attempts
    assert len(rows_of(client.get(URL, {"date_from": today.isoformat(), "date_to": today.isoformat()}))) == every
    assert rows_of(client.get(URL, {"date_to": (today - timedelta(days=1)).isoformat()})) == []
    assert rows_of(client.get(URL, {"date_from": (today + timedelta(days=1)).isoformat()})) == []
    # A value that is not a choice is ignored, not an error.
    assert len(rows_of(client.get(URL, {"institution": "nowhere", "action": "x", "date_from": "junk"}))) == every


def test_empty_footprint_and_empty_filter_results(client, alice, accesses):
    login(client, alice)
    response = client.get(URL, {"action": "amend"})
    assert response.status_code == 200
    assert rows_of(response) == []
    assert response.context["filtered"]


def test_newest_first_and_paginated(client, alice, carol, visit):
    now = timezone.now()
    for i in range(60):
        AccessEvent.objects.create(
            actor=carol,
            actor_institution=carol.institution,
            patient=alice,
            visit=visit,
            action="view_chart",
            outcome="allowed",
            at=now - timedelta(minutes=i),
        )
    login(client, alice)
    first = client.get(URL)
    page = first.context["page"]
    assert page.paginator.count == 61  # and the visit opening
    times = [r["event"].at for r in rows_of(first)]
    assert len(times) == 50
    assert times == sorted(times, reverse=True)
    second = client.get(URL, {"page": 2})
    assert len(rows_of(second)) == 11


def test_chart_counts_last_90_days_stacked(client, alice, carol, visit):
    now = timezone.now()
    for days_ago, outcome in [(0, "allowed"), (0, "denied"), (3, "allowed"), (89, "allowed"), (95, "allowed")]:
        AccessEvent.objects.create(
            actor=carol, patient=alice, action="view", outcome=outcome, at=now - timedelta(days=days_ago)
        )
    login(client, alice)
    response = client.get(URL)
    chart = response.context["chart"]
    assert chart.days == 90
    assert chart.total == 5  # 95 days ago is outside; the visit opening today is inside
    assert chart.denied == 1
    html = response.content.decode()
    assert "<svg" in html
    assert 'class="fp-denied-bar"' in html
    assert loaded_from_elsewhere(html) == []  # the chart is drawn here, with no library from a CDN


# -- on chain -----------------------------------------------------------------------------------------


def test_logging_batches_events_into_one_transaction_and_is_idempotent(alice, accesses):
    unlogged = AccessEvent.objects.filter(chain_tx="").count()
    assert unlogged >= 5
    assert log_accesses() == unlogged
    batches = MempoolEntry.objects.filter(type=ledger.ACCESS_LOGGED)
    assert batches.count() == 1
    cid = batches.get().cid
    assert set(AccessEvent.objects.values_list("chain_tx", flat=True)) == {cid}
    assert all(len(d) == 64 for d in AccessEvent.objects.values_list("chain_digest", flat=True))
    # Running again logs nothing new.
    assert log_accesses() == 0
    assert MempoolEntry.objects.filter(type=ledger.ACCESS_LOGGED).count() == 1


def test_logging_splits_into_batches_of_at_most_the_limit(alice, carol, visit):
    for _ in range(7):
        audit(actor=carol, action="view_chart", patient=alice, visit=visit)
    assert footprint.access_events_log(limit=3) == (3, MempoolEntry.objects.get(type=ledger.ACCESS_LOGGED).cid)
    while footprint.access_events_log(limit=3)[0]:
        pass
    assert MempoolEntry.objects.filter(type=ledger.ACCESS_LOGGED).count() == 3  # 3 + 3 + 2 (with the visit)
    assert not AccessEvent.objects.filter(chain_tx="").exists()
    chain_seal()
    from chain.models import Transaction

    assert Transaction.objects.filter(type=ledger.ACCESS_LOGGED).count() == 3


def test_no_personal_data_on_chain(alice, carol, accesses):
    log_accesses()
    chain_seal()
    from chain.models import Transaction

    tx = Transaction.objects.get(type=ledger.ACCESS_LOGGED)
    text = str(tx.payload)
    for secret in (str(alice.public_id), str(carol.public_id), str(accesses.public_id), "view", "denied"):
        assert secret not in text
    assert set(tx.payload) == {"events"}


def test_page_shows_waiting_then_verified_on_chain(client, alice, accesses):
    login(client, alice)
    response = client.get(URL, HTTP_ACCEPT_LANGUAGE="en")
    assert {r["chain"].state for r in rows_of(response)} == {"unlogged"}
    assert "waiting for the next block" in response.content.decode()
    assert response.context["selected"] is None

    log_accesses()
    response = client.get(URL, HTTP_ACCEPT_LANGUAGE="en")
    assert {r["chain"].state for r in rows_of(response)} == {"pending"}
    assert "waiting for the next block" in response.content.decode()

    height = chain_seal().height
    response = client.get(URL, HTTP_ACCEPT_LANGUAGE="en")
    rows = rows_of(response)
    assert {r["chain"].state for r in rows} == {"verified"}
    proof = rows[0]["chain"]
    assert proof.height == height
    assert proof.from_store
    assert proof.position is not None
    assert 1 <= proof.position <= proof.batch_size
    html = response.content.decode()
    assert "verified on chain" in html
    assert f"block {height}" in html
    assert 'id="merkle-data"' in html
    assert "js/merkle.js" in html
    # The proof the browser gets verifies with the core's own verifier.
    from chain.core.cid import CID
    from chain.core.merkle import MerkleProof, verify_proof

    doc = proof.browser_doc
    assert verify_proof(
        bytes.fromhex(doc["root"]),
        CID.decode(doc["cid"]),
        MerkleProof.from_dict(doc["proof"]),
        leaf_count=doc["leaf_count"],
    )
    # Choosing an entry puts its proof in the browser-check panel.
    chosen = rows[-1]["event"]
    response = client.get(URL, {"check": str(chosen.public_id)})
    assert response.context["selected"]["event"] == chosen


def test_tampered_row_does_not_verify(client, alice, accesses):
    log_accesses()
    chain_seal()
    denied = AccessEvent.objects.filter(outcome="denied").order_by("pk").first()
    AccessEvent.objects.filter(pk=denied.pk).update(action="view_chart")  # someone rewrites history
    login(client, alice)
    response = client.get(URL, HTTP_ACCEPT_LANGUAGE="en")
    states = {r["event"].pk: r["chain"] for r in rows_of(response)}
    assert states[denied.pk].state == "failed"
    assert states[denied.pk].position is None
    assert states[denied.pk].reasons
    assert all(proof.state == "verified" for pk, proof in states.items() if pk != denied.pk)
    assert "does not verify" in response.content.decode()


def test_tampered_projection_payload_does_not_help(alice, accesses):
    """Rewriting the row and the database copy of the batch still fails: the chain store is checked."""
    from chain.models import Transaction

    log_accesses()
    chain_seal()
    event = AccessEvent.objects.select_related(*footprint.EVENT_RELATED).filter(outcome="denied").first()
    event.outcome = "allowed"
    event.save(update_fields=["outcome"])
    forged = footprint.event_digest(event)
    tx = Transaction.objects.get(type=ledger.ACCESS_LOGGED)
    from chain.ledger_services import to_dag_json

    tx.payload = to_dag_json({"events": [forged]})
    tx.save(update_fields=["payload"])
    assert footprint.chain_proofs([event])[event.pk].state == "failed"


def test_access_logged_validator(node):
    from chain.core import crypto

    stranger = crypto.new_ed25519().private
    with pytest.raises(TxRejected, match="authority"):
        tx_sign_and_submit(private_key=stranger, type=ledger.ACCESS_LOGGED, payload={"events": [b"\0" * 32]})
    node_key = footprint._node_key()
    with pytest.raises(TxRejected, match="32 bytes"):
        tx_sign_and_submit(private_key=node_key, type=ledger.ACCESS_LOGGED, payload={"events": [b"\0" * 31]})
    with pytest.raises(TxRejected, match="once"):
        tx_sign_and_submit(private_key=node_key, type=ledger.ACCESS_LOGGED, payload={"events": [b"\1" * 32] * 2})
    with pytest.raises(TxRejected):
        tx_sign_and_submit(private_key=node_key, type=ledger.ACCESS_LOGGED, payload={"events": [b"\2" * 32] * 501})


def _make_events(alice, carol, visit, n):
    now = timezone.now()
    AccessEvent.objects.bulk_create(
        AccessEvent(
            actor=carol,
            actor_institution=carol.institution,
            patient=alice,
            visit=visit,
            action="view_chart",
            outcome="denied" if i % 3 == 0 else "allowed",
            at=now - timedelta(hours=i),
        )
        for i in range(n)
    )


def test_constant_queries(client, alice, carol, visit, node, django_assert_max_num_queries):
    login(client, alice)
    _make_events(alice, carol, visit, 4)  # five with the visit opening
    for limit in (2, 3):  # several batches, so several transactions to prove
        footprint.access_events_log(limit=limit)
    chain_seal()
    with CaptureQueriesContext(connection) as small:
        assert client.get(URL).status_code == 200
    _make_events(alice, carol, visit, 55)
    for _ in range(10):
        footprint.access_events_log(limit=7)
    chain_seal()
    _make_events(alice, carol, visit, 5)  # some still waiting
    with django_assert_max_num_queries(len(small)):
        response = client.get(URL)
    assert len(rows_of(response)) == 50
