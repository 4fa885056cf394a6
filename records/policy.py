"""Who may read or write which record: the one access helper every view uses, and its predicates.

``record_get_for_user`` decides, audits the decision (allowed or denied, in
the same transaction as whatever the caller then does) and returns the key
material the user may open. It reads models only: the write paths (the
rooms' services) build on it, never the reverse. The rules:

- the patient, for their own records;
- the record's author, while a verified staff member with 2FA on;
- verified colleagues (2FA on) at the record's institution while the
  record's visit is open: the care team, through the institution's key;
- a grant: an active (not revoked), in-window, in-scope grant from the
  patient to this clinician, or to their institution (verified staff with
  2FA), through the key sealed for the grant's recipient. Researchers never
  open a single record: research grants feed the de-identified datasets of
  ``records.research``, which apply the same scope rules in bulk
  (``grant_in_scope``, ``granted_records_q``, below). Revocation and expiry
  are checked here on every request, so they take effect on the very next one;
- break-glass: a cleared clinician's open, unexpired emergency session for
  the patient (``records.sharing.breakglass``), through the patient's own envelope
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
from records.models import (
    AccessEvent,
    BreakGlass,
    Grant,
    GrantPurpose,
    GrantScope,
    MedicalRecord,
    RecordVersion,
    Visit,
    WrappedKey,
)


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
    if break_glass_active(user, record.patient_id) is not None:
        return "break-glass", []
    return None, []


def _basis(user, record: MedicalRecord) -> str | None:
    return _decide(user, record)[0]


def _key_for(user, version: RecordVersion, basis: str, grants=(), *, patient_id=None) -> WrappedKey | None:
    qs = WrappedKey.objects.select_related("user", "institution").filter(version=version)
    if basis == "break-glass":
        # The patient's own envelope when their home is this node; at another node, the one their home
        # node sealed to this clinician for the session (records/sharing/emergency.py).
        held = list(qs.filter(Q(user_id=patient_id) | Q(user=user)))
        own = [w for w in held if w.user_id == user.pk]
        return next((w for w in held if w.user_id == patient_id and not w.user.home_node), own[0] if own else None)
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
    # A grant without a key for this version must not hide an emergency session.
    if (
        wrapped is None
        and basis == "grant"
        and user.role == Role.CLINICIAN
        and version is not None
        and break_glass_active(user, record.patient_id) is not None
    ):
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
        grant = grants_usable_by(user).filter(patient=patient).first()
        if grant is not None:
            audit(
                actor=user, action=AccessEvent.Action.VIEW_CHART, patient=patient, basis="grant", purpose=grant.purpose
            )
            return patient, None
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


# -- grants: which records a grant covers, which grants a reader holds ------------------------------


def grant_in_scope(grant: Grant, record: MedicalRecord, *, named: bool | None = None) -> bool:
    """Whether ``record`` falls inside ``grant``'s scope (not its window or status).

    ``named``: whether the grant lists the record (pass it when known, e.g.
    from an ``Exists`` annotation, to avoid a query). A sensitive record is
    in scope only when the grant names it or the patient included sensitive
    records explicitly.
    """
    if record.patient_id != grant.patient_id:
        return False
    if named is None:
        named = grant.scope == GrantScope.RECORDS and grant.records.filter(pk=record.pk).exists()
    if record.sensitive and not (named or grant.include_sensitive):
        return False
    if grant.scope == GrantScope.ALL:
        return True
    if grant.scope == GrantScope.KINDS:
        return record.kind in (grant.kinds or [])
    return bool(named)


def grants_for_record(record: MedicalRecord, *, now=None):
    """The patient's grants that are not revoked nor expired, annotated ``named`` for ``record``.

    One query whatever the number of grants.
    """
    now = now or timezone.now()
    named = Grant.records.through.objects.filter(grant_id=OuterRef("pk"), medicalrecord_id=record.pk)
    return (
        Grant.objects.filter(patient_id=record.patient_id, status=Grant.Status.ACTIVE, valid_until__gt=now)
        .select_related("grantee_user", "grantee_institution")
        .annotate(named=Exists(named))
    )


def grantees_in_scope(record: MedicalRecord) -> tuple[list, list]:
    """The users and institutions of the patient's current or pending grants that cover ``record``; one query."""
    users, institutions = [], []
    for grant in grants_for_record(record):
        if grant_in_scope(grant, record, named=grant.named):
            if grant.grantee_user_id:
                users.append(grant.grantee_user)
            else:
                institutions.append(grant.grantee_institution)
    return users, institutions


def grants_usable_by(user, *, now=None):
    """Grants usable by ``user`` right now (to them or to their institution); a lazy queryset.

    The caller checks the user is cleared (verified, 2FA). Researchers use
    research grants only.
    """
    now = now or timezone.now()
    to = Q(grantee_user_id=user.pk)
    if user.institution_id is not None:
        to |= Q(grantee_institution_id=user.institution_id)
    grants = Grant.objects.filter(to, status=Grant.Status.ACTIVE, valid_from__lte=now, valid_until__gt=now)
    if user.role == Role.RESEARCHER:
        grants = grants.filter(purpose=GrantPurpose.RESEARCH)
    return grants


def granted_records_q(grants) -> Q:
    """A filter for the (non-draft) records the given grants cover; mirrors ``grant_in_scope``."""
    covered = Q(pk__in=[])
    for grant in grants:
        named = Q(pk__in=Grant.records.through.objects.filter(grant_id=grant.pk).values("medicalrecord_id"))
        if grant.scope == GrantScope.RECORDS:
            in_scope = named
        else:
            in_scope = Q() if grant.scope == GrantScope.ALL else Q(kind__in=grant.kinds or [])
            if not grant.include_sensitive:
                in_scope &= Q(sensitive=False)
        covered |= Q(patient_id=grant.patient_id) & in_scope
    return covered & ~Q(status=MedicalRecord.Status.DRAFT)


# -- break-glass -----------------------------------------------------------------------------------


def break_glass_active(clinician, patient_id: int, *, now=None) -> BreakGlass | None:
    """The clinician's open, unexpired session for this patient; one query."""
    now = now or timezone.now()
    return (
        BreakGlass.objects.filter(
            clinician_id=clinician.pk, patient_id=patient_id, closed_at__isnull=True, expires_at__gt=now
        )
        .order_by("-expires_at")
        .first()
    )
