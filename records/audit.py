"""Audit rows: one per read, write, download, upload and denied attempt.

Callers write the row in the same database transaction as the action it
records, so an action without its audit row cannot be committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from records.models import AccessEvent

_client: ContextVar[str] = ContextVar("audit_client", default="")


@contextmanager
def calling_client(name: str) -> Iterator[None]:
    """Mark every audit row written inside as made through ``name`` (``api``, ``app:<client id>``).

    The portals write rows with no mark; the REST API and FHIR endpoints wrap
    each request, so a patient's footprint says which application read.
    """
    token = _client.set(name[:80])
    try:
        yield
    finally:
        _client.reset(token)


def set_calling_client(name: str) -> None:
    """Inside :func:`calling_client`: name the application once the caller is known (after authentication)."""
    _client.set(name[:80])


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
    event = audit_row(
        actor=actor,
        action=action,
        outcome=outcome,
        patient=patient,
        record=record,
        visit=visit,
        purpose=purpose,
        basis=basis,
        detail=detail,
    )
    event.save(force_insert=True)
    return event


def audit_row(
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
    """The row :func:`audit` writes, unsaved: for callers that record many reads in one ``bulk_create``."""
    return AccessEvent(
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
        client=_client.get(),
        # The patient's home node keeps their footprint: an event about someone of another node goes there.
        forward="pending" if patient is not None and patient.home_node else "",
    )
