"""Break-glass across nodes: an emergency doctor opens a patient whose home is another node.

The doctor's node (B) holds no key that opens the patient's records, and must
not hold one for longer than the emergency. So:

1. At B the clinician re-authenticates and gives a reason, as for any
   break-glass. B puts ``records.break_glass_opened`` on chain, signed by the
   clinician's key, naming the patient by a random pseudonym (B has not the
   patient's pseudonym secret, and a random one links nothing), and waits for
   the consortium to commit it.
2. B asks every node for an **emergency release** with the patient's Yilian ID
   and the session id. Only the patient's home node (A) knows the patient; it
   releases nothing before it has verified, on its own copy of the chain, that
   the session is open, unexpired, opened by this clinician's key, and that
   the clinician is listed as a clinician of an institution whose node is B
   (:func:`emergency_release`).
3. A then issues, on the patient's behalf, a **time-boxed emergency grant** to
   the clinician: every record, sensitive ones included, until the session's
   end, signed by the patient's key that A holds. It is an ordinary grant to
   everything downstream: it goes to B with the patient's card and the
   records, their keys sealed to this clinician only (``deliveries``); the
   patient is notified, sees it in their sharing page and may revoke it at
   once; every read at B reaches their footprint.
4. When the session ends (its time is up, or B's reviewer closes it on chain)
   A revokes the grant (:func:`emergency_grants_end`, from the beat and after
   every block), which re-keys every record it covered: the keys B held open
   nothing written or re-encrypted after.

When A is down, step 2 gets no answer. If B already knows the patient (their
card, an earlier visit), the session opens over what B itself holds (records
written at B, records shared with B's people before) and the doctor is told
that the home node's records are not reachable; otherwise nothing opens and
the doctor is told to try again. B never gets a standing key either way.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.directory import directory_sync
from accounts.health_id import normalize
from accounts.models import Institution, ListedInstitution, ListedStaff, Role, User
from chain.peer_apps import call_each, consortium_nodes
from records.audit import audit
from records.consortium.cards import card_adopt, card_of
from records.ledger import break_glass_state_key
from records.models import AccessEvent, BreakGlass, Grant, GrantPurpose, Notification
from records.notices import notify
from records.sharing import breakglass
from records.sharing.grants import grant_issue, grant_revoke

log = logging.getLogger(__name__)

EMERGENCY_MESSAGE = "records.emergency"
COMMIT_WAIT = 20.0  # seconds the request waits for the consortium to commit the opening


class HomeUnreachable(ValidationError):
    pass


# -- at the emergency doctor's node -----------------------------------------------------------------------
def break_glass_open_remote(
    *, clinician, health_id: str, reason: str, detail: str, credential: str, hours: int = breakglass.DEFAULT_HOURS
) -> tuple[BreakGlass, bool]:
    """Open emergency access to a patient whose home is another node; ``(session, released)``.

    ``released`` is False when the home node could not be reached and the
    session covers only what this node holds (the patient was known here).
    """
    hours = breakglass.check_request(clinician=clinician, reason=reason, detail=detail, hours=hours)
    known = User.objects.filter(role=Role.PATIENT, health_id=health_id).exclude(home_node="").first()
    breakglass.reauthenticate(clinician, credential, patient=known)
    opened_at = timezone.now()
    session_id, expires_at = os.urandom(16), opened_at + timedelta(hours=hours)
    pseudonym = os.urandom(32)
    with transaction.atomic():
        entry = breakglass.submit_opening(
            clinician, session=session_id, pseudonym=pseudonym, reason=reason, expires_at=expires_at
        )
    _wait_committed(entry.cid)
    message = {
        "health_id": health_id,
        "session": session_id,
        "clinician": bytes(clinician.sign_public),
        "institution": clinician.institution.code,
    }
    answers = _ask_for_release(message)
    card = next((a for a in answers if a.ok and isinstance(a.value.get("card"), dict)), None)
    if card is not None:
        patient, released = card_adopt(card.value["card"], node=card.node), True
    elif known is not None and any(a.status == 0 for a in answers):
        patient, released = known, False
    elif any(a.status == 0 for a in answers):
        raise HomeUnreachable(
            _(
                "The patient's home hospital cannot be reached now, and this hospital has none of their records. "
                "Emergency access was logged; try again in a minute."
            )
        )
    else:
        raise ValidationError(_("No patient with this Yilian ID in the consortium."))
    session = breakglass.record_opening(
        clinician=clinician,
        patient=patient,
        session=session_id,
        pseudonym=pseudonym,
        reason=reason,
        detail=detail,
        opened_at=opened_at,
        expires_at=expires_at,
        opened_tx=entry.cid,
        notify_patient=False,  # the home node tells the patient
    )
    return session, released


def _ask_for_release(message: dict) -> list:
    """Every node's answer; asked again while the home node's copy of the chain lags behind ours (409)."""
    deadline = time.monotonic() + COMMIT_WAIT
    while True:
        answers = call_each(consortium_nodes(), EMERGENCY_MESSAGE, message, timeout=10.0)
        if not any(a.status == 409 for a in answers) or time.monotonic() > deadline:
            return answers
        time.sleep(0.3)


def _wait_committed(tx_cid: str) -> None:
    from chain.models import Transaction

    deadline = time.monotonic() + COMMIT_WAIT
    while not Transaction.objects.filter(cid=tx_cid).exists():
        if time.monotonic() > deadline:
            raise HomeUnreachable(_("The consortium did not confirm the emergency access in time; try again."))
        time.sleep(0.2)


# -- at the patient's home node -------------------------------------------------------------------------------
def emergency_release(node: str, message: dict) -> tuple[int, dict]:
    """Another node's clinician broke the glass for one of this node's patients: check, then grant until the end."""
    from chain.ledger_services import DbState, ms_to_datetime

    try:
        health_id = normalize(str(message["health_id"]))
        session_id, clinician_key = bytes(message["session"]), bytes(message["clinician"])
        code = str(message["institution"])
    except (KeyError, TypeError, ValueError):
        return 400, {"error": "malformed"}
    if health_id is None or len(session_id) != 16:
        return 400, {"error": "malformed"}
    state = DbState().get(break_glass_state_key(session_id))
    if state is None:
        return 409, {"error": "the session is not on chain here yet"}
    until = ms_to_datetime(state["not_after"])
    if bytes(state["opener"]) != clinician_key or state["closed"] or until <= timezone.now():
        return 403, {"error": "no open session of this clinician"}
    listed = ListedInstitution.objects.filter(code=code, node=node).first()
    staff = ListedStaff.objects.filter(sign_public=clinician_key.hex(), institution_code=code, listed=True).first()
    if listed is None or staff is None or staff.role != Role.CLINICIAN:
        return 403, {"error": "not a listed clinician of the asking node"}
    patient = User.objects.filter(role=Role.PATIENT, home_node="", health_id=health_id, is_active=True).first()
    if patient is None:
        return 404, {"error": "unknown"}
    clinician = User.objects.filter(sign_public=clinician_key).first()
    if clinician is None:
        directory_sync(codes=[code], people=[clinician_key.hex()])
        clinician = User.objects.filter(sign_public=clinician_key).first()
    if clinician is None:
        return 409, {"error": "the clinician's directory row is not here yet"}
    with transaction.atomic():
        grant = Grant.objects.filter(session=session_id).first()
        if grant is None:
            grant = grant_issue(
                patient=patient,
                grantee_user=clinician,
                scope="all",
                purpose=GrantPurpose.EMERGENCY,
                valid_from=timezone.now(),
                valid_until=until,
                include_sensitive=True,
                session=session_id,
            )
            institution = Institution.objects.filter(code=code).first()
            audit(
                actor=clinician,
                action=AccessEvent.Action.BREAK_GLASS,
                patient=patient,
                purpose="emergency",
                basis="break-glass",
                detail="released by the home node",
            )
            notify(
                user=patient,
                kind=Notification.Kind.BREAK_GLASS,
                person=clinician,
                institution=institution,
                link="/patient/sharing/",
            )
    log.info("emergency release to %s at %s until %s", code, node, until.isoformat())
    return 200, {"card": card_of(patient), "until": until.isoformat()}


def emergency_grants_end(*, sessions: list[bytes] | None = None) -> int:
    """Revoke the emergency grants whose session ended (time up, or closed on chain); how many.

    Revoking re-keys every record the grant covered, so the keys the
    emergency doctor held open nothing written or re-encrypted after.
    """
    from chain.ledger_services import DbState

    now = timezone.now()
    grants = Grant.objects.filter(
        purpose=GrantPurpose.EMERGENCY, status=Grant.Status.ACTIVE, patient__home_node=""
    ).exclude(session=b"")
    if sessions is not None:
        grants = grants.filter(session__in=sessions)
    ended = 0
    state = DbState()
    for grant in grants.select_related("patient"):
        session = state.get(break_glass_state_key(bytes(grant.session)))
        closed = session is not None and session.get("closed")
        if grant.valid_until <= now or closed:
            grant_revoke(patient=grant.patient, grant=grant)
            ended += 1
    return ended


def sessions_changed(keys: list[str]) -> None:
    """After a block: an emergency session closed on chain ends its grant here at once."""
    from records.ledger import BREAK_GLASS_PREFIX

    emergency_grants_end(sessions=[bytes.fromhex(k.removeprefix(BREAK_GLASS_PREFIX)) for k in keys])


def register() -> None:
    from chain.ledger_registry import register_commit_hook
    from chain.peer_apps import register_peer_handler
    from records.ledger import BREAK_GLASS_PREFIX

    register_peer_handler(EMERGENCY_MESSAGE, emergency_release)
    register_commit_hook("records.emergency", (BREAK_GLASS_PREFIX,), sessions_changed)
