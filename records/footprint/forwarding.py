"""Reads at this node of a patient whose home is another node go to the patient's footprint there.

This node logs every access on its own chain batches, as always
(``services.access_events_log``). An event about a patient whose home is
another node is then forwarded (:func:`accesses_forward`, queued after each
logging run): its fields, with people and institutions named by their signing
keys and codes, its digest and the batch transaction that carries it. The
rows are the outbox (``AccessEvent.forward``: pending, then done).

The home node (:func:`accesses_receive`) rebuilds each event with the same
public id, recomputes its digest from what it was told and accepts it only if
that digest is in the batch, and the batch was signed by the sending node's
key, on its own copy of the chain. Its footprint then proves the event exactly
as it proves its own (``services.chain_proofs``). Until the batch is committed
there, it answers 409 and the events are sent again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

from django.db import transaction

from accounts.models import Institution, User
from chain.models import Transaction
from chain.peer_apps import call
from records.footprint.services import EVENT_RELATED, batch_digests, event_digest
from records.ledger import ACCESS_LOGGED
from records.models import AccessEvent, MedicalRecord, Visit

log = logging.getLogger(__name__)

ACCESS_MESSAGE = "records.accessed"
FORWARD_BATCH = 500


def accesses_forward(*, limit: int = FORWARD_BATCH) -> dict[str, int]:
    """Send logged events about other nodes' patients to those nodes; counts by node."""
    events = list(
        AccessEvent.objects.filter(forward="pending")
        .exclude(chain_tx="")
        .select_related(*EVENT_RELATED, "patient__institution")
        .order_by("pk")[:limit]
    )
    by_node: dict[str, list[AccessEvent]] = defaultdict(list)
    for event in events:
        by_node[event.patient.home_node].append(event)
    sent: dict[str, int] = {}
    for node, batch in by_node.items():
        answer = call(node, ACCESS_MESSAGE, {"events": [_event_message(e) for e in batch]}, timeout=15.0)
        if answer.ok:
            AccessEvent.objects.filter(pk__in=[e.pk for e in batch]).update(forward="done")
            sent[node] = len(batch)
        elif answer.status != 409:
            log.warning(
                "forwarding %d access events to %s failed: %s %s", len(batch), node, answer.status, answer.error
            )
    return sent


def _event_message(event: AccessEvent) -> dict:
    return {
        "public_id": str(event.public_id),
        "at": event.at.isoformat(),
        "patient": bytes(event.patient.sign_public),
        "actor": bytes(event.actor.sign_public) if event.actor_id else None,
        "institution": event.actor_institution.code if event.actor_institution_id else "",
        "record": str(event.record.public_id) if event.record_id else "",
        "visit": str(event.visit.public_id) if event.visit_id else "",
        "action": event.action,
        "outcome": event.outcome,
        "purpose": event.purpose,
        "basis": event.basis,
        "detail": event.detail,
        "client": event.client,
        "chain_tx": event.chain_tx,
        "chain_digest": event.chain_digest,
    }


def accesses_receive(node: str, message: dict) -> tuple[int, dict]:
    """Another node tells this node of accesses to its patients' data, each proved by that node's batch."""
    try:
        items = list(message["events"])
        return _receive(node, items)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("malformed access events from %s: %s", node, exc)
        return 400, {"error": "malformed"}


@transaction.atomic
def _receive(node: str, items: list[dict]) -> tuple[int, dict]:
    from chain.core.consortium import authorities_of
    from chain.ledger_services import DbState

    keys = {a.id: a.public_key.hex() for a in authorities_of(DbState())}
    if node not in keys:
        return 403, {"error": "not an authority"}
    batches = {
        tx.cid: tx for tx in Transaction.objects.filter(cid__in={i["chain_tx"] for i in items}, type=ACCESS_LOGGED)
    }
    if any(i["chain_tx"] not in batches for i in items):
        return 409, {"error": "a batch is not on chain here yet"}
    if any(tx.signer != keys[node] for tx in batches.values()):
        return 403, {"error": "a batch was not logged by the sending node"}
    digests = {cid: batch_digests(tx) for cid, tx in batches.items()}
    taken = refused = 0
    known = set(
        AccessEvent.objects.filter(public_id__in=[i["public_id"] for i in items]).values_list("public_id", flat=True)
    )
    for item in items:
        if any(str(k) == item["public_id"] for k in known):
            continue
        event = _event_from(item)
        if event is None or event_digest(event) not in digests[item["chain_tx"]]:
            refused += 1
            continue
        event.chain_digest = event_digest(event).hex()
        event.chain_tx = item["chain_tx"]
        event.save()
        taken += 1
    if refused:
        log.warning("refused %d access events from %s: unknown patient or a digest not in its batch", refused, node)
    return 200, {"taken": taken, "refused": refused}


def _event_from(item: dict) -> AccessEvent | None:
    """The event as this node's rows name it (same public ids); None if it is not about a patient here."""
    patient = User.objects.filter(sign_public=bytes(item["patient"]), home_node="", role="patient").first()
    if patient is None:
        return None
    actor = User.objects.filter(sign_public=bytes(item["actor"])).first() if item["actor"] else None
    institution = Institution.objects.filter(code=item["institution"]).first() if item["institution"] else None
    record = MedicalRecord.all_objects.filter(public_id=item["record"]).first() if item["record"] else None
    visit = Visit.objects.filter(public_id=item["visit"]).first() if item["visit"] else None
    if (item["actor"] and actor is None) or (item["institution"] and institution is None):
        return None
    if (item["record"] and record is None) or (item["visit"] and visit is None):
        return None
    return AccessEvent(
        public_id=item["public_id"],
        at=datetime.fromisoformat(item["at"]),
        actor=actor,
        actor_institution=institution,
        patient=patient,
        record=record,
        visit=visit,
        action=item["action"],
        outcome=item["outcome"],
        purpose=item["purpose"],
        basis=item["basis"],
        detail=str(item["detail"])[:200],
        client=str(item.get("client") or "")[:80],
    )


def register() -> None:
    from chain.peer_apps import register_peer_handler

    register_peer_handler(ACCESS_MESSAGE, accesses_receive)
