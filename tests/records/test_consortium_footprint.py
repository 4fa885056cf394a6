"""A read at another node reaches the patient's footprint at home, with the chain proof of that node's batch."""

from __future__ import annotations

import pytest

from accounts.models import User
from chain.ledger_services import chain_seal
from records.audit import audit
from records.footprint.forwarding import _event_message, accesses_forward, accesses_receive
from records.footprint.services import EVENT_RELATED, access_events_log, chain_proofs
from records.models import AccessEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_elsewhere(node, carol, alice):
    """Dr Carol read the chart of Alice, whose home is node-2, and this node logged it on chain."""
    User.objects.filter(pk=alice.pk).update(home_node="node-2")
    alice.refresh_from_db()
    allowed = audit(
        actor=carol, action=AccessEvent.Action.VIEW_CHART, patient=alice, purpose="treatment", basis="grant"
    )
    denied = audit(actor=carol, action=AccessEvent.Action.VIEW, patient=alice, outcome=AccessEvent.Outcome.DENIED)
    mine = audit(actor=alice, action=AccessEvent.Action.VIEW, patient=None)
    assert (allowed.forward, denied.forward, mine.forward) == ("pending", "pending", "")
    access_events_log()
    chain_seal()
    events = list(AccessEvent.objects.filter(patient=alice).select_related(*EVENT_RELATED).order_by("pk"))
    return {"events": events, "message": {"events": [_event_message(e) for e in events]}}


def at_alices_home(alice) -> None:
    User.objects.filter(pk=alice.pk).update(home_node="")
    AccessEvent.objects.all().delete()


def test_the_home_node_takes_the_events_and_proves_them_against_the_sending_nodes_batch(logged_elsewhere, alice):
    sent = logged_elsewhere["events"]
    at_alices_home(alice)

    assert accesses_receive("node-1", logged_elsewhere["message"]) == (200, {"taken": 2, "refused": 0})
    events = list(AccessEvent.objects.filter(patient=alice).select_related(*EVENT_RELATED).order_by("at"))
    assert [e.public_id for e in events] == [e.public_id for e in sent]
    assert [e.outcome for e in events] == ["allowed", "denied"]  # a denied attempt is shown as denied
    assert {p.state for p in chain_proofs(events).values()} == {"verified"}
    assert accesses_receive("node-1", logged_elsewhere["message"])[1]["taken"] == 0  # again: nothing doubled


def test_the_home_node_refuses_what_the_batch_does_not_prove(logged_elsewhere, alice):
    message = logged_elsewhere["message"]
    at_alices_home(alice)

    assert accesses_receive("node-7", message)[0] == 403  # not an authority
    changed = {"events": [{**message["events"][0], "purpose": "research"}]}  # not what was logged
    assert accesses_receive("node-1", changed) == (200, {"taken": 0, "refused": 1})
    unknown = {
        "events": [{**message["events"][0], "chain_tx": "bafyreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}]
    }
    assert accesses_receive("node-1", unknown)[0] == 409
    assert accesses_receive("node-1", {"nothing": []})[0] == 400
    assert not AccessEvent.objects.exists()


def test_forwarding_waits_for_the_home_node(logged_elsewhere, monkeypatch):
    from chain.peer_apps import Answer

    calls = []
    answers = iter([Answer("node-2", 0, {"error": "unreachable"}), Answer("node-2", 200, {"taken": 2})])
    monkeypatch.setattr(
        "records.footprint.forwarding.call", lambda node, name, value, timeout: calls.append(node) or next(answers)
    )
    assert accesses_forward() == {}
    assert set(AccessEvent.objects.exclude(forward="").values_list("forward", flat=True)) == {"pending"}
    assert accesses_forward() == {"node-2": 2} and calls == ["node-2", "node-2"]
    assert set(AccessEvent.objects.exclude(forward="").values_list("forward", flat=True)) == {"done"}
