"""Break-glass: time-boxed emergency access without the patient's grant.

A verified clinician with 2FA, facing an emergency, opens a patient's records
after re-entering their password or a fresh authenticator code, giving a
reason from a fixed list and in their own words. In one database transaction:

- the ``BreakGlass`` row (what the access helper reads: an open session of
  this clinician for this patient, not yet expired nor closed);
- the free-text reason, encrypted (AES-256-GCM under a random key sealed to
  the patient, the clinician and the clinician's institution — it may be
  clinical);
- ``records.break_glass_opened`` signed by the clinician's key, naming the
  patient only by the (clinician, break-glass) pseudonym;
- an audit row (basis ``break-glass``), which the patient's footprint shows in
  red, and a notification to the patient in the portal and by email.

No data key is delivered: while the session is open the node opens the
record's key through the patient's own envelope (the node holds every
private key wrapped by its KEK), so the moment the session ends there is
nothing left behind to revoke. An administrator of the clinician's
institution reviews the session (seeing every read made under it), records
whether it was justified and closes it (``records.break_glass_closed``, signed
by the reviewer's key); closing ends access at once if it is still running.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import timedelta

from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.keys import signing_private_key
from accounts.models import Role, User
from records.audit import audit
from records.keys import open_message, seal_message
from records.ledger import BREAK_GLASS_CLOSED, BREAK_GLASS_OPENED, break_glass_state_key
from records.models import AccessEvent, BreakGlass, BreakGlassReason, Notification
from records.notices import notify
from records.policy import break_glass_active, staff_cleared
from records.sharing.grants import pseudonym_for

log = logging.getLogger(__name__)

DEFAULT_HOURS = 4
MAX_HOURS = 12
DETAIL_MAX = 1000
NOTE_MAX = 500
PURPOSE = "emergency"
PSEUDONYM_PURPOSE = "break-glass"
REAUTH_FAILURES_MAX = 5
REAUTH_WINDOW = 15 * 60
_TOTP_CODE = re.compile(r"^\d{6}$")


class ReauthenticationFailed(PermissionDenied):
    pass


# -- re-authentication ---------------------------------------------------------------------------
REAUTH_FAILED = "re-authentication failed"


def _credential_ok(user, credential: str) -> bool:
    """``credential`` is ``user``'s password or a fresh code from their authenticator app.

    A TOTP code is accepted once (allauth records it as used).
    """
    credential = (credential or "").strip()
    if _TOTP_CODE.match(credential):
        authenticator = Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).first()
        if authenticator is not None and TOTP(authenticator).validate_code(credential):
            return True
    return bool(credential) and user.check_password(credential)


def reauthenticate(user, credential: str, *, patient=None) -> None:
    """Check the clinician's password or authenticator code; five failures in fifteen minutes lock it.

    Failures are the audit rows themselves (the patient sees each attempt), counted
    under the clinician's row lock, so parallel guesses cannot slip past the limit
    and the count survives restarts. Raises ``ReauthenticationFailed``.
    """
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()
        since = timezone.now() - timedelta(seconds=REAUTH_WINDOW)
        failures = AccessEvent.objects.filter(
            actor=user,
            action=AccessEvent.Action.BREAK_GLASS,
            outcome=AccessEvent.Outcome.DENIED,
            detail=REAUTH_FAILED,
            at__gte=since,
        ).count()
        locked = failures >= REAUTH_FAILURES_MAX
        ok = not locked and _credential_ok(user, credential)
        if not ok:
            audit(
                actor=user,
                action=AccessEvent.Action.BREAK_GLASS,
                outcome=AccessEvent.Outcome.DENIED,
                patient=patient,
                purpose=PURPOSE,
                basis="break-glass",
                detail=REAUTH_FAILED,
            )
    if locked:
        raise ReauthenticationFailed(_("Too many wrong attempts. Wait fifteen minutes, or ask a colleague."))
    if not ok:
        raise ReauthenticationFailed(_("That is not your password or a current authenticator code."))


# -- the sealed free-text reason -------------------------------------------------------------------
_DETAIL_READERS = ("patient", "clinician", "institution")


def _seal_for_readers(session: BreakGlass, text: str, *, aad: bytes) -> tuple[bytes, dict[str, str]]:
    holders = [session.patient, session.clinician, session.institution]
    ciphertext, envelopes = seal_message(text, aad=aad, recipients=holders)
    return ciphertext, {label: envelope.hex() for label, envelope in zip(_DETAIL_READERS, envelopes, strict=True)}


def _seal_detail(session: BreakGlass, detail: str) -> None:
    session.detail_ciphertext, session.detail_keys = _seal_for_readers(session, detail, aad=session.associated_data())


def break_glass_detail(session: BreakGlass, *, user) -> str:
    """The clinician's own words, opened with the reader's key: the patient, the clinician or a reviewer."""
    label, holder = _reader(session, user)
    envelope = bytes.fromhex(session.detail_keys[label])
    return open_message(bytes(session.detail_ciphertext), envelope, holder=holder, aad=session.associated_data())


def break_glass_review_note(session: BreakGlass, *, user) -> str:
    """The reviewer's note (empty if none), opened like the reason, by the same three readers."""
    if not session.review_note_keys:
        return ""
    label, holder = _reader(session, user)
    envelope = bytes.fromhex(session.review_note_keys[label])
    ciphertext = bytes(session.review_note_ciphertext)
    return open_message(ciphertext, envelope, holder=holder, aad=session.review_associated_data())


def _reader(session: BreakGlass, user):
    if user.pk == session.patient_id:
        label, holder = "patient", user
    elif user.pk == session.clinician_id:
        label, holder = "clinician", user
    elif may_review(user, session):
        label, holder = "institution", session.institution
    else:
        raise PermissionDenied(_("Only the patient, the clinician and their institution's reviewers read this."))
    return label, holder


# -- open ----------------------------------------------------------------------------------------------
def break_glass_open(
    *, clinician, patient, reason: str, detail: str, credential: str, hours: int = DEFAULT_HOURS
) -> BreakGlass:
    """Open emergency access to ``patient``'s records for ``hours`` (default 4, at most 12).

    The input is checked and the clinician re-authenticated first; a failed
    re-authentication is audited (the patient sees the attempt) and nothing
    else is written. Returns the clinician's session already open for this
    patient, if any, instead of a second one.
    """
    hours = check_request(clinician=clinician, reason=reason, detail=detail, hours=hours)
    if patient is None or patient.role != Role.PATIENT or not patient.is_active or patient.pk == clinician.pk:
        raise ValidationError(_("No patient with this Yilian ID or email address."))
    reauthenticate(clinician, credential, patient=patient)
    return _open(clinician=clinician, patient=patient, reason=reason, detail=detail.strip(), hours=hours)


def check_request(*, clinician, reason: str, detail: str, hours) -> int:
    """Who may break the glass, and what they must say; the hours as a number. Raises before anything is written."""
    if not staff_cleared(clinician):
        raise PermissionDenied(_("Only verified clinicians with two-factor sign-in can use emergency access."))
    if reason not in BreakGlassReason.values:
        raise ValidationError(_("Choose the kind of emergency."))
    detail = (detail or "").strip()
    if not detail or len(detail) > DETAIL_MAX:
        raise ValidationError(_("Describe the emergency in at most %(n)d characters.") % {"n": DETAIL_MAX})
    try:
        hours = int(hours)
    except (TypeError, ValueError):
        hours = 0
    if not 1 <= hours <= MAX_HOURS:
        raise ValidationError(_("Emergency access lasts between 1 and %(n)d hours.") % {"n": MAX_HOURS})
    return hours


@transaction.atomic
def _open(*, clinician, patient, reason: str, detail: str, hours: int) -> BreakGlass:
    # The clinician's row lock serialises their sessions: two cannot race in for one patient.
    User.objects.select_for_update().filter(pk=clinician.pk).first()
    current = break_glass_active(clinician, patient.pk)
    if current is not None:
        return current
    now = timezone.now()
    session_id, expires_at = os.urandom(16), now + timedelta(hours=hours)
    pseudonym = pseudonym_for(patient, grantee_public_id=clinician.public_id, purpose=PSEUDONYM_PURPOSE)
    entry = submit_opening(clinician, session=session_id, pseudonym=pseudonym, reason=reason, expires_at=expires_at)
    return record_opening(
        clinician=clinician,
        patient=patient,
        session=session_id,
        pseudonym=pseudonym,
        reason=reason,
        detail=detail,
        opened_at=now,
        expires_at=expires_at,
        opened_tx=entry.cid,
    )


def submit_opening(clinician, *, session: bytes, pseudonym: bytes, reason: str, expires_at):
    """``records.break_glass_opened``, signed by the clinician's key (inside the caller's transaction)."""
    from chain.ledger_services import tx_sign_and_submit

    payload = {"session": session, "pseudonym": pseudonym, "reason": reason, "not_after": _ms(expires_at)}
    return tx_sign_and_submit(private_key=signing_private_key(clinician), type=BREAK_GLASS_OPENED, payload=payload)


@transaction.atomic
def record_opening(
    *,
    clinician,
    patient,
    session: bytes,
    pseudonym: bytes,
    reason: str,
    detail: str,
    opened_at,
    expires_at,
    opened_tx: str,
    notify_patient: bool = True,
) -> BreakGlass:
    """The session's row, its sealed reason, the audit row and the notices, for an opening already submitted."""
    row = BreakGlass(
        chain_id=session,
        clinician=clinician,
        institution=clinician.institution,
        patient=patient,
        reason=reason,
        opened_at=opened_at,
        expires_at=expires_at,
        pseudonym=pseudonym.hex(),
        opened_tx=opened_tx,
    )
    _seal_detail(row, detail)
    row.save()
    audit(
        actor=clinician,
        action=AccessEvent.Action.BREAK_GLASS,
        patient=patient,
        purpose=PURPOSE,
        basis="break-glass",
        detail=reason,  # the code: audit rows do not depend on the language of the request
    )
    if notify_patient:
        _notify_patient(row)
    _notify_reviewers(row)
    return row


def _ms(value) -> int:
    from chain.ledger_services import datetime_to_ms

    return datetime_to_ms(value)


def _notify_patient(session: BreakGlass) -> None:
    notify(
        user=session.patient,
        kind=Notification.Kind.BREAK_GLASS,
        person=session.clinician,
        institution=session.institution,
        link=reverse("patient_footprint") + "?basis=break-glass",
    )


def _notify_reviewers(session: BreakGlass) -> None:
    """Tell the institution's verified administrators there is a session to review (names only)."""
    reviewers = User.objects.filter(
        role=Role.INSTITUTION_ADMIN, institution_id=session.institution_id, verified_at__isnull=False, is_active=True
    ).exclude(pk=session.clinician_id)
    link = reverse("institution_break_glass_detail", args=[session.public_id])
    for reviewer in reviewers:
        notify(user=reviewer, kind=Notification.Kind.BREAK_GLASS_REVIEW, person=session.clinician, link=link)


# -- review and close -----------------------------------------------------------------------------------
def reviewer_cleared(user) -> bool:
    """A verified institution administrator with 2FA on: who may see and close break-glass sessions."""
    from allauth.mfa.utils import is_mfa_enabled

    return (
        user.is_authenticated
        and user.role == Role.INSTITUTION_ADMIN
        and user.is_verified_staff
        and is_mfa_enabled(user)
    )


def may_review(user, session: BreakGlass) -> bool:
    """A cleared administrator of the session's institution who is not the clinician."""
    return reviewer_cleared(user) and user.institution_id == session.institution_id and user.pk != session.clinician_id


def sessions_for_review(admin):
    """The admin's institution's sessions, awaiting review first; a lazy queryset."""
    return (
        BreakGlass.objects.filter(institution_id=admin.institution_id)
        .select_related("clinician", "patient", "closed_by", "institution")
        .order_by(F("closed_at").asc(nulls_first=True), "-opened_at")
    )


def session_reads(session: BreakGlass):
    """Every access the clinician made to the patient's data under this session."""
    end = min(session.closed_at, session.expires_at) if session.closed_at else session.expires_at
    return (
        AccessEvent.objects.filter(
            actor_id=session.clinician_id,
            patient_id=session.patient_id,
            basis="break-glass",
            at__gte=session.opened_at,
            at__lte=end,
        )
        .select_related("record")
        .order_by("at")
    )


@transaction.atomic
def break_glass_close(*, reviewer, session: BreakGlass, review: str, note: str = "") -> BreakGlass:
    """Record the review and close the session; access ends now if it was still running."""
    session = BreakGlass.objects.select_for_update().select_related("clinician", "patient").get(pk=session.pk)
    if not may_review(reviewer, session):
        raise PermissionDenied(_("Only a verified administrator of the clinician's institution reviews this."))
    if session.closed_at is not None:
        raise ValidationError(_("This emergency access has already been reviewed and closed."))
    if review not in BreakGlass.Review.values:
        raise ValidationError(_("Say whether the emergency access was justified."))
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise ValidationError(_("Keep the review note under %(n)d characters.") % {"n": NOTE_MAX})
    if review == BreakGlass.Review.NOT_JUSTIFIED and not note:
        raise ValidationError(_("Say what was wrong: the note is required when access was not justified."))
    now = timezone.now()
    session.closed_at = now
    session.closed_by = reviewer
    session.review = review
    if note:
        aad = session.review_associated_data()
        session.review_note_ciphertext, session.review_note_keys = _seal_for_readers(session, note, aad=aad)
    session.save(update_fields=["closed_at", "closed_by", "review", "review_note_ciphertext", "review_note_keys"])
    _submit_closing(session, reviewer)
    audit(
        actor=reviewer,
        action=AccessEvent.Action.BREAK_GLASS_CLOSE,
        patient=session.patient,
        purpose=PURPOSE,
        basis="review",
        detail=review,
    )
    return session


def _submit_closing(session: BreakGlass, reviewer) -> bool:
    from chain.ledger_services import DbState, TxRejected, tx_sign_and_submit

    if DbState().get(break_glass_state_key(bytes(session.chain_id))) is None:
        return False  # the opening is not sealed yet: the row is the outbox
    try:
        with transaction.atomic():
            entry = tx_sign_and_submit(
                private_key=signing_private_key(reviewer),
                type=BREAK_GLASS_CLOSED,
                payload={"session": bytes(session.chain_id), "outcome": session.review},
            )
    except TxRejected as exc:
        # E.g. the reviewer's key registration is not sealed yet: the closing stands in the
        # database (access has ended) and ``break_glass_redrive`` submits it later.
        log.warning("closing of break-glass %s waits: %s", session.public_id, exc)
        return False
    session.closed_tx = entry.cid
    session.save(update_fields=["closed_tx"])
    return True


def break_glass_redrive(limit: int = 200) -> int:
    """Submit closings that waited for their session's opening (or the reviewer's key) to be sealed."""
    submitted = 0
    pending = BreakGlass.objects.filter(closed_at__isnull=False, closed_tx="").select_related("closed_by")[:limit]
    for session in pending:
        with transaction.atomic():
            if _submit_closing(session, session.closed_by):
                submitted += 1
    return submitted
