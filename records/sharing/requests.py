"""Access requests: a verified doctor asks, the patient approves (a grant) or declines.

- Only cleared clinicians (verified by their institution, 2FA on) ask; at
  most one pending request per doctor and patient.
- The reason may be clinical, so it is never stored in plaintext: AES-256-GCM
  under a random 32-byte key, with the request's associated data; that key is
  sealed (``chain.core.crypto.seal_key``) to the patient and to the requester,
  the only two people who can read it.
- The ``records.access_requested`` transaction, signed by the requester's key,
  goes out in the request's database transaction: a request id (16 random
  bytes), the relationship's pseudonym and the purpose — nothing personal.
- Notifications (in the portal and by email) carry names and a link, never
  clinical content; emails leave only once the transaction commits.
- Only the patient decides; approving issues a grant through ``grant_issue``.
"""

from __future__ import annotations

import os
from datetime import timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.keys import signing_private_key
from accounts.models import Role, User
from records.audit import audit
from records.keys import open_message, seal_message
from records.ledger import ACCESS_REQUESTED
from records.models import AccessEvent, AccessRequest, GrantPurpose, GrantScope, Notification, RecordKind
from records.notices import notify
from records.policy import staff_cleared
from records.sharing.grants import grant_issue, pseudonym_for

REASON_MAX = 1000
DAYS_MAX = 365


# -- the sealed reason ---------------------------------------------------------------------------
def _seal_reason(request: AccessRequest, reason: str) -> None:
    if request.patient is None:  # nobody to read it but the requester
        request.reason_ciphertext, (request.reason_key_requester,) = seal_message(
            reason, aad=request.associated_data(), recipients=[request.requester]
        )
        request.reason_key_patient = b""
        return
    request.reason_ciphertext, (request.reason_key_patient, request.reason_key_requester) = seal_message(
        reason, aad=request.associated_data(), recipients=[request.patient, request.requester]
    )


def access_request_reason(request: AccessRequest, *, user) -> str:
    """The reason, opened with ``user``'s own key: the patient's or the requester's only."""
    if user.pk == request.patient_id:
        envelope = bytes(request.reason_key_patient)
    elif user.pk == request.requester_id:
        envelope = bytes(request.reason_key_requester)
    else:
        raise PermissionDenied(_("Only the patient and the requester read a request's reason."))
    return open_message(bytes(request.reason_ciphertext), envelope, holder=user, aad=request.associated_data())


# -- notifications ---------------------------------------------------------------------------------
def _notify_patient(request: AccessRequest) -> None:
    notify(
        user=request.patient,
        kind=Notification.Kind.REQUEST_RECEIVED,
        person=request.requester,
        institution=request.requester_institution,
        link=reverse("patient_sharing") + "#requests",
        extra={"request": str(request.public_id)},
    )


def _notify_requester(request: AccessRequest, *, approved: bool) -> None:
    notify(
        user=request.requester,
        kind=Notification.Kind.REQUEST_APPROVED if approved else Notification.Kind.REQUEST_DECLINED,
        person=request.patient,
        link=reverse("clinic_patients") + "#my-requests",
    )
    # The patient answered: their notice of the request is no longer news.
    Notification.objects.filter(
        user=request.patient,
        kind=Notification.Kind.REQUEST_RECEIVED,
        read_at__isnull=True,
        params__request=str(request.public_id),
    ).update(read_at=timezone.now())


def notifications_mark_read(*, user, notifications) -> int:
    """Mark ``user``'s given unread notifications read; returns how many."""
    ids = [n.pk for n in notifications if n.read_at is None and n.user_id == user.pk]
    if not ids:
        return 0
    return Notification.objects.filter(pk__in=ids, user=user).update(read_at=timezone.now())


# -- create, approve, decline ----------------------------------------------------------------------
@transaction.atomic
def access_request_create(
    *, requester, patient, scope: str, kinds=(), purpose: str, reason: str, days: int, asked_as: str = ""
) -> AccessRequest:
    """A cleared clinician asks ``patient`` for access; the patient is notified.

    ``patient`` is None when nobody answers to ``asked_as`` (what the doctor typed): the
    request is kept all the same, so the doctor sees one more unanswered request and the
    form never says whether an account exists. Nobody is notified and nothing goes on chain.
    """
    from chain.ledger_services import tx_sign_and_submit

    if not staff_cleared(requester):
        raise PermissionDenied(_("Only verified doctors with two-factor sign-in can request access."))
    if patient is not None and (patient.role != Role.PATIENT or not patient.is_active or patient.pk == requester.pk):
        patient = None
    asked_as = (asked_as or "").strip() or (patient.health_id_display or patient.email if patient else "")
    if not asked_as:
        raise ValidationError(_("Give the patient's Yilian ID or email address."))
    if scope not in (GrantScope.ALL, GrantScope.KINDS):
        raise ValidationError(_("Choose what you ask to see."))
    kinds = sorted(set(kinds or ()))
    if scope == GrantScope.KINDS and (not kinds or any(k not in RecordKind.values for k in kinds)):
        raise ValidationError(_("Choose at least one kind of record."))
    if purpose not in GrantPurpose.values:
        raise ValidationError(_("Choose a purpose."))
    reason = (reason or "").strip()
    if not reason or len(reason) > REASON_MAX:
        raise ValidationError(_("Give a reason of at most %(n)d characters.") % {"n": REASON_MAX})
    if not 1 <= int(days) <= DAYS_MAX:
        raise ValidationError(_("Ask for between 1 and %(n)d days.") % {"n": DAYS_MAX})
    # The requester's row lock serialises their requests: two pending ones cannot race in.
    User.objects.select_for_update().filter(pk=requester.pk).first()
    waiting = AccessRequest.objects.filter(requester=requester, status=AccessRequest.Status.PENDING)
    same = Q(patient=patient) if patient is not None else Q(patient=None, asked_as__iexact=asked_as)
    if waiting.filter(same).exists():
        raise ValidationError(
            _("You already have a request waiting for this patient. Wait for their answer before asking again.")
        )
    request = AccessRequest(
        chain_id=os.urandom(16),
        patient=patient,
        asked_as=asked_as,
        requester=requester,
        requester_institution=requester.institution,
        scope=scope,
        kinds=kinds if scope == GrantScope.KINDS else [],
        purpose=purpose,
        requested_days=int(days),
    )
    _seal_reason(request, reason)
    if patient is None:
        request.save()
        return request
    pseudonym = pseudonym_for(patient, grantee_public_id=requester.public_id, purpose=purpose)
    request.pseudonym = pseudonym.hex()
    request.save()
    entry = tx_sign_and_submit(
        private_key=signing_private_key(requester),
        type=ACCESS_REQUESTED,
        payload={"request": bytes(request.chain_id), "pseudonym": pseudonym, "purpose": purpose},
    )
    request.requested_tx = entry.cid
    request.save(update_fields=["requested_tx"])
    audit(
        actor=requester,
        action=AccessEvent.Action.REQUEST,
        patient=patient,
        purpose=purpose,
        basis="request",
        detail=request.get_scope_display(),
    )
    _notify_patient(request)
    return request


def _pending_for_patient(patient, request: AccessRequest) -> AccessRequest:
    locked = AccessRequest.objects.select_for_update().select_related("requester", "patient").get(pk=request.pk)
    if locked.patient_id != patient.pk:
        raise PermissionDenied(_("Only the patient decides on a request for their records."))
    if locked.status != AccessRequest.Status.PENDING:
        raise ValidationError(_("This request has already been answered."))
    return locked


@transaction.atomic
def access_request_approve(*, patient, request: AccessRequest, valid_until=None) -> AccessRequest:
    """Grant the requester what they asked for, until ``valid_until`` (default: the requested days)."""
    request = _pending_for_patient(patient, request)
    now = timezone.now()
    grant = grant_issue(
        patient=patient,
        grantee_user=request.requester,
        scope=request.scope,
        kinds=request.kinds,
        purpose=request.purpose,
        valid_from=now,
        valid_until=valid_until or now + timedelta(days=request.requested_days),
    )
    request.status = AccessRequest.Status.APPROVED
    request.decided_at = now
    request.grant = grant
    request.save(update_fields=["status", "decided_at", "grant"])
    _notify_requester(request, approved=True)
    return request


@transaction.atomic
def access_request_decline(*, patient, request: AccessRequest) -> AccessRequest:
    request = _pending_for_patient(patient, request)
    request.status = AccessRequest.Status.DECLINED
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])
    audit(
        actor=patient,
        action=AccessEvent.Action.DECLINE,
        patient=patient,
        purpose=request.purpose,
        basis="patient",
        detail=str(request.requester.display_name),
    )
    _notify_requester(request, approved=False)
    return request


@transaction.atomic
def access_request_withdraw(*, requester, request: AccessRequest) -> AccessRequest:
    """The doctor takes back a request the patient has not answered; the patient's notice goes too."""
    locked = AccessRequest.objects.select_for_update().select_related("patient").get(pk=request.pk)
    if locked.requester_id != requester.pk:
        raise PermissionDenied(_("Only the doctor who asked can withdraw a request."))
    if locked.status != AccessRequest.Status.PENDING:
        raise ValidationError(_("This request has already been answered."))
    locked.status = AccessRequest.Status.WITHDRAWN
    locked.decided_at = timezone.now()
    locked.save(update_fields=["status", "decided_at"])
    if locked.patient is None:
        return locked
    Notification.objects.filter(
        user=locked.patient,
        kind=Notification.Kind.REQUEST_RECEIVED,
        read_at__isnull=True,
        params__request=str(locked.public_id),
    ).delete()
    audit(
        actor=requester,
        action=AccessEvent.Action.WITHDRAW,
        patient=locked.patient,
        purpose=locked.purpose,
        basis="request",
        detail=locked.get_scope_display(),
    )
    return locked
