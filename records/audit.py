"""Audit rows: one per read, write, download, upload and denied attempt.

Callers write the row in the same database transaction as the action it
records, so an action without its audit row cannot be committed.
"""

from __future__ import annotations

from records.models import AccessEvent


def audit(
    *,
    actor,
    action: str,
    outcome: str = AccessEvent.Outcome.ALLOWED,
    patient=None,
    record=None,
    visit=None,
    purpose: str = "treatment",
    basis: str = "",
    detail: str = "",
) -> AccessEvent:
    return AccessEvent.objects.create(
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        actor_institution_id=getattr(actor, "institution_id", None),
        patient=patient,
        record=record,
        visit=visit,
        action=action,
        outcome=outcome,
        purpose=purpose,
        basis=basis,
        detail=detail[:200],
        # The patient's home node keeps their footprint: an event about someone of another node goes there.
        forward="pending" if patient is not None and patient.home_node else "",
    )
