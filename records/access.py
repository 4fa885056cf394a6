"""Who may read or write which record: the one access helper every view uses.

``record_get_for_user`` decides, audits the decision (allowed or denied, in
the same transaction as whatever the caller then does) and returns the key
material the user may open. Rules for now (the sharing issue extends them):

- the patient, for their own records;
- the record's author, while a verified staff member with 2FA on;
- verified colleagues (2FA on) at the record's institution while the
  record's visit is open: the care team, through the institution's key;
- a grant: an active (not revoked), in-window, in-scope grant from the
  patient to this clinician, or to their institution (verified staff with
  2FA), through the key sealed for the grant's recipient. Researchers never
  open a single record: research grants feed the de-identified datasets of
  ``records.research``, which apply the same scope rules in bulk. Revocation and expiry are checked here on
  every request, so they take effect on the very next one;
- break-glass: a cleared clinician's open, unexpired emergency session for
  the patient (``records.breakglass``), through the patient's own envelope
  (no key is delivered, so nothing outlives the session). Drafts stay out.

Everyone else is denied, and the denial is an audit row. The decision costs a
constant number of queries whatever the number of records or keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from allauth.mfa.utils import is_mfa_enabled
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, F, OuterRef, Q
from django.http import Http404
from django.utils import timezone

from accounts.models import Role
from records.audit import audit
from records.keys import open_dek
from records.models import AccessEvent, Grant, MedicalRecord, RecordVersion, Visit, WrappedKey


class RecordAccessDenied(PermissionDenied):
    pass


@dataclass
class RecordAccess:
    record: MedicalRecord
    version: RecordVersion
    basis: str
    wrapped: WrappedKey
    user: object

    @cached_property
    def dek(self) -> bytes:
        return open_dek(self.version, self.wrapped)

    @property
    def is_patient(self) -> bool:
        return self.basis == "patient"


def staff_cleared(user) -> bool:
    return user.is_verified_staff and user.role == Role.CLINICIAN and is_mfa_enabled(user)


def _grants_for(user, record: MedicalRecord) -> list[Grant]:
    """The patient's grants usable by ``user`` now that cover ``record``; one query.

    Grants to the user come before grants to their institution.
    """
    from records.sharing import grant_in_scope

    now = timezone.now()
    to = Q(grantee_user_id=user.pk)
    if user.institution_id is not None:
        to |= Q(grantee_institution_id=user.institution_id)
    named = Grant.records.through.objects.filter(grant_id=OuterRef("pk"), medicalrecord_id=record.pk)
    grants = (
        Grant.objects.filter(to, patient_id=record.patient_id, status=Grant.Status.ACTIVE)
        .filter(valid_from__lte=now, valid_until__gt=now)
        .annotate(named=Exists(named))
        .order_by(F("grantee_institution_id").asc(nulls_first=True), "-created_at")  # personal grants first
    )
    return [g for g in grants if grant_in_scope(g, record, named=g.named)]


def records_shown_to_patient(patient):
    """A patient's own records as they see them: all but other people's unsigned drafts.

    A clinician's draft is their working copy: the patient sees the record once it is signed.
    """
    return MedicalRecord.objects.filter(patient=patient).exclude(
        Q(status=MedicalRecord.Status.DRAFT) & ~Q(author=patient)
    )


def _unsigned_for_patient(user, record: MedicalRecord) -> bool:
    return user.pk == record.patient_id and record.status == MedicalRecord.Status.DRAFT and record.author_id != user.pk


def _decide(user, record: MedicalRecord) -> tuple[str | None, list[Grant]]:
    if user.pk == record.patient_id:
        return "patient", []
    if not user.is_verified_staff or not is_mfa_enabled(user):
        return None, []
    if user.role == Role.CLINICIAN:
        if user.pk == record.author_id:
            return "author", []
        visit = record.visit
        if (
            visit is not None
            and visit.status == Visit.Status.OPEN
            and record.institution_id is not None
            and user.institution_id == record.institution_id
        ):
            return "care-team", []
    # Researchers never open a single (identified) record: research grants feed
    # the de-identified datasets of ``records.research`` only.
    if user.role != Role.CLINICIAN or record.status == MedicalRecord.Status.DRAFT:
        return None, []
    grants = _grants_for(user, record)
    if grants:
        return "grant", grants
    if user.role == Role.CLINICIAN:
        from records.breakglass import break_glass_active

        if break_glass_active(user, record.patient_id) is not None:
            return "break-glass", []
    return None, []


def _basis(user, record: MedicalRecord) -> str | None:
    return _decide(user, record)[0]


def _key_for(user, version: RecordVersion, basis: str, grants=(), *, patient_id=None) -> WrappedKey | None:
    qs = WrappedKey.objects.select_related("user", "institution").filter(version=version)
    if basis == "break-glass":
        return qs.filter(user_id=patient_id).first()
    if basis == "care-team":
        return qs.filter(institution_id=user.institution_id).first()
    if basis == "grant":
        institutions = {g.grantee_institution_id for g in grants if g.grantee_institution_id}
        mine = any(g.grantee_user_id == user.pk for g in grants)
        recipients = Q(institution_id__in=institutions) | (Q(user=user) if mine else Q(pk__in=[]))
        # A personal envelope before the institution's.
        return qs.filter(recipients).order_by(F("user_id").desc(nulls_last=True)).first()
    return qs.filter(user=user).first()


def _grant_of(wrapped: WrappedKey, grants) -> Grant:
    for grant in grants:
        if (grant.grantee_user_id and grant.grantee_user_id == wrapped.user_id) or (
            grant.grantee_institution_id and grant.grantee_institution_id == wrapped.institution_id
        ):
            return grant
    return grants[0]


def record_get_for_user(
    user,
    record_id,
    *,
    purpose: str = "treatment",
    action: str = AccessEvent.Action.VIEW,
    version_number: int | None = None,
    detail: str = "",
    quiet: bool = False,
) -> RecordAccess:
    """The record and the key this user may use, or ``RecordAccessDenied``/``Http404``.

    Unknown ids are 404 for everyone (and audited as denied), so probing ids
    tells an outsider nothing. ``quiet`` skips the row for an *allowed*
    request that shows nothing (a page polling processing status); denials
    are always recorded.
    """
    record = (
        MedicalRecord.objects.select_related("patient", "visit", "institution", "author", "current_version")
        .filter(public_id=record_id)
        .first()
    )
    if record is None:
        audit(actor=user, action=action, outcome=AccessEvent.Outcome.DENIED, purpose=purpose, detail="unknown record")
        raise Http404("no such record")
    if _unsigned_for_patient(user, record):
        # Not yet theirs to see, and not an attempt against them: nothing in their footprint.
        audit(actor=user, action=action, outcome=AccessEvent.Outcome.DENIED, record=record, detail="unsigned draft")
        raise Http404("not signed yet")
    basis, grants = _decide(user, record) if user.is_authenticated else (None, [])
    version = record.current_version
    if version_number is not None and version is not None and version.number != version_number:
        version = record.versions.filter(number=version_number).first()
    wrapped = (
        _key_for(user, version, basis, grants, patient_id=record.patient_id)
        if (basis and version is not None)
        else None
    )
    if wrapped is None and basis == "grant" and user.role == Role.CLINICIAN and version is not None:
        # A grant without a key for this version must not hide an emergency session.
        from records.breakglass import break_glass_active

        if break_glass_active(user, record.patient_id) is not None:
            basis, grants = "break-glass", []
            wrapped = _key_for(user, version, basis, patient_id=record.patient_id)
    if wrapped is not None and basis == "grant":
        purpose = _grant_of(wrapped, grants).purpose
    elif basis == "break-glass":
        purpose = "emergency"
    if wrapped is None:
        audit(
            actor=user,
            action=action,
            outcome=AccessEvent.Outcome.DENIED,
            patient=record.patient,
            record=record,
            purpose=purpose,
            detail=detail or ("no basis" if basis is None else "no key for this version"),
        )
        raise RecordAccessDenied("You may not open this record.")
    if not quiet:
        audit(
            actor=user,
            action=action,
            patient=record.patient,
            record=record,
            visit=record.visit,
            purpose=purpose,
            basis=basis,
            detail=detail,
        )
    return RecordAccess(record=record, version=version, basis=basis, wrapped=wrapped, user=user)


def visit_get_for_user(user, visit_id, *, action: str = AccessEvent.Action.VIEW_CHART) -> Visit:
    """A visit of the user's own institution (verified, 2FA) — or denied and audited."""
    visit = Visit.objects.select_related("patient", "institution", "opened_by").filter(public_id=visit_id).first()
    if visit is None:
        audit(actor=user, action=action, outcome=AccessEvent.Outcome.DENIED, detail="unknown visit")
        raise Http404("no such visit")
    if not (staff_cleared(user) and user.institution_id == visit.institution_id):
        audit(
            actor=user,
            action=action,
            outcome=AccessEvent.Outcome.DENIED,
            patient=visit.patient,
            visit=visit,
            detail="not this institution's visit",
        )
        raise RecordAccessDenied("You may not open this visit.")
    audit(actor=user, action=action, patient=visit.patient, visit=visit)
    return visit


def chart_patient_for_user(user, patient_id):
    """The patient whose chart a clinician may open: one with a visit at their
    institution, one who granted them or their institution access, or one
    whose records they opened under break-glass (while it lasts).

    Returns ``(patient, open_visit_or_None)``; denial is audited.
    """
    from accounts.models import User

    patient = User.objects.filter(public_id=patient_id, role=Role.PATIENT).first()
    if patient is None:
        audit(
            actor=user,
            action=AccessEvent.Action.VIEW_CHART,
            outcome=AccessEvent.Outcome.DENIED,
            detail="unknown patient",
        )
        raise Http404("no such patient")
    if staff_cleared(user):
        visits = Visit.objects.filter(patient=patient, institution_id=user.institution_id)
        open_visit = visits.filter(status=Visit.Status.OPEN).order_by("-opened_at").first()
        if open_visit is not None or visits.filter(opened_by=user).exists():
            audit(actor=user, action=AccessEvent.Action.VIEW_CHART, patient=patient, visit=open_visit)
            return patient, open_visit
        from records.sharing import grants_usable_by

        grant = grants_usable_by(user).filter(patient=patient).first()
        if grant is not None:
            audit(
                actor=user, action=AccessEvent.Action.VIEW_CHART, patient=patient, basis="grant", purpose=grant.purpose
            )
            return patient, None
        from records.breakglass import break_glass_active

        if break_glass_active(user, patient.pk) is not None:
            audit(
                actor=user,
                action=AccessEvent.Action.VIEW_CHART,
                patient=patient,
                basis="break-glass",
                purpose="emergency",
            )
            return patient, None
    audit(
        actor=user,
        action=AccessEvent.Action.VIEW_CHART,
        outcome=AccessEvent.Outcome.DENIED,
        patient=patient,
        detail="no visit at this institution",
    )
    raise RecordAccessDenied("You may not open this chart.")
