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

- an institution export (``records_get_for_user(..., institution_export=True)``
  only, never a single read): a cleared institution administrator (verified,
  2FA on), for the signed records of their own institution, through the
  institution's key (FHIR Bulk Data, ``records.fhir.bulk``).

Everyone else is denied, and the denial is an audit row. The decision costs a
constant number of queries whatever the number of records or keys; the batch
form, ``records_get_for_user``, decides a chunk of records with the same
rules (the same ``_decide`` and ``_pick_key``) in a constant number of queries
for the whole chunk, from rows it loads once (``_Preloaded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from allauth.mfa.utils import is_mfa_enabled
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, F, OuterRef, Q
from django.http import Http404
from django.utils import timezone

from accounts.models import Role
from records.audit import audit, audit_row
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


@dataclass
class _Preloaded:
    """What ``_decide`` and ``_pick_key`` would query per record, loaded once for a chunk of records."""

    mfa: bool
    grants: list[Grant] = field(default_factory=list)  # usable by the reader now, personal ones first
    named: set[tuple[int, int]] = field(default_factory=set)  # (grant, record) pairs a grant lists
    glass: dict[int, BreakGlass] = field(default_factory=dict)  # open sessions, by patient
    keys: dict[int, list[WrappedKey]] = field(default_factory=dict)  # every envelope, by version

    def grants_for(self, record: MedicalRecord) -> list[Grant]:
        return [
            g
            for g in self.grants
            if g.patient_id == record.patient_id and grant_in_scope(g, record, named=(g.pk, record.pk) in self.named)
        ]


def _decide(
    user, record: MedicalRecord, pre: _Preloaded | None = None, *, institution_export: bool = False
) -> tuple[str | None, list[Grant]]:
    if institution_export:
        # The institution's own signed records, through its key: this rule alone, for anyone.
        own = record.institution_id is not None and record.institution_id == user.institution_id
        signed = record.status != MedicalRecord.Status.DRAFT
        if user.role == Role.INSTITUTION_ADMIN and own and signed and _cleared(user, pre):
            return "institution", []
        return None, []
    if user.pk == record.patient_id:
        return "patient", []
    if not _cleared(user, pre):
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
    grants = _grants_for(user, record) if pre is None else pre.grants_for(record)
    if grants:
        return "grant", grants
    if _session(user, record.patient_id, pre) is not None:
        return "break-glass", []
    return None, []


def _cleared(user, pre: _Preloaded | None) -> bool:
    return user.is_verified_staff and (pre.mfa if pre is not None else is_mfa_enabled(user))


def _basis(user, record: MedicalRecord) -> str | None:
    return _decide(user, record)[0]


def _session(user, patient_id: int, pre: _Preloaded | None) -> BreakGlass | None:
    return break_glass_active(user, patient_id) if pre is None else pre.glass.get(patient_id)


def _key_for(
    user, version: RecordVersion, basis: str, grants=(), *, patient_id=None, pre: _Preloaded | None = None
) -> WrappedKey | None:
    if pre is not None:
        held = pre.keys.get(version.pk, [])
    else:  # a version has a handful of envelopes: load them all, choose below
        held = list(WrappedKey.objects.select_related("user", "institution").filter(version=version))
    return _pick_key(user, held, basis, grants, patient_id=patient_id)


def _pick_key(user, held: Sequence[WrappedKey], basis: str, grants=(), *, patient_id=None) -> WrappedKey | None:
    """Which of a version's envelopes ``user`` opens under ``basis``; None: none of them."""
    if basis == "break-glass":
        # The patient's own envelope when their home is this node; at another node, the one their home
        # node sealed to this clinician for the session (records/sharing/emergency.py).
        own = [w for w in held if w.user_id == user.pk]
        return next((w for w in held if w.user_id == patient_id and not w.user.home_node), own[0] if own else None)
    if basis in ("care-team", "institution"):
        return next((w for w in held if w.institution_id and w.institution_id == user.institution_id), None)
    if basis == "grant":
        institutions = {g.grantee_institution_id for g in grants if g.grantee_institution_id}
        mine = any(g.grantee_user_id == user.pk for g in grants)
        # A personal envelope before the institution's.
        personal = [w for w in held if mine and w.user_id == user.pk]
        return next(iter(personal + [w for w in held if w.institution_id in institutions]), None)
    return next((w for w in held if w.user_id == user.pk), None)


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
    version = record.current_version
    if version_number is not None and version is not None and version.number != version_number:
        version = record.versions.filter(number=version_number).first()
    basis, wrapped, purpose = _resolve(user, record, version, purpose)
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


def _resolve(
    user,
    record: MedicalRecord,
    version: RecordVersion | None,
    purpose: str,
    pre: _Preloaded | None = None,
    *,
    institution_export: bool = False,
) -> tuple[str | None, WrappedKey | None, str]:
    """The basis, the envelope to open (None: denied) and the purpose to record, for a loaded record."""
    basis, grants = (
        _decide(user, record, pre, institution_export=institution_export) if user.is_authenticated else (None, [])
    )
    wrapped = (
        _key_for(user, version, basis, grants, patient_id=record.patient_id, pre=pre)
        if (basis and version is not None)
        else None
    )
    # A grant without a key for this version must not hide an emergency session.
    if (
        wrapped is None
        and basis == "grant"
        and user.role == Role.CLINICIAN
        and version is not None
        and _session(user, record.patient_id, pre) is not None
    ):
        basis, grants = "break-glass", []
        wrapped = _key_for(user, version, basis, patient_id=record.patient_id, pre=pre)
    if wrapped is not None and basis == "grant":
        purpose = _grant_of(wrapped, grants).purpose
    elif basis == "break-glass":
        purpose = "emergency"
    return basis, wrapped, purpose


def records_get_for_user(
    user,
    record_ids: Sequence,
    *,
    purpose: str = "treatment",
    action: str = AccessEvent.Action.VIEW,
    detail: str = "",
    institution_export: bool = False,
) -> list[RecordAccess]:
    """``record_get_for_user`` for a chunk of records (current versions): the same rules, every
    decision audited, in a constant number of queries whatever the chunk's size.

    Returns the accesses allowed, in the order of ``record_ids``. Unlike the
    single read nothing is raised: a record the user may not open (or that
    does not exist, or is a draft not yet theirs) is left out, and its denial
    recorded as the single read would record it. ``institution_export``:
    decide by the institution-export rule alone (module docstring). Call it
    inside a transaction, so the reads and their rows commit together.
    """
    DENIED = AccessEvent.Outcome.DENIED
    wanted = list(dict.fromkeys(record_ids))
    if not wanted:
        return []
    records = {
        r.public_id: r
        for r in MedicalRecord.objects.select_related(
            "patient", "visit", "institution", "author", "current_version__created_by"
        )
        .prefetch_related("current_version__files")
        .filter(public_id__in=wanted)
    }
    pre = _preload(user, list(records.values()), institution_export=institution_export)
    rows, allowed = [], []
    for record_id in wanted:
        record = records.get(record_id)
        if record is None:
            rows.append(audit_row(actor=user, action=action, outcome=DENIED, purpose=purpose, detail="unknown record"))
            continue
        if _unsigned_for_patient(user, record):
            rows.append(audit_row(actor=user, action=action, outcome=DENIED, record=record, detail="unsigned draft"))
            continue
        version = record.current_version
        basis, wrapped, used_for = _resolve(user, record, version, purpose, pre, institution_export=institution_export)
        if wrapped is None or version is None:
            reason = detail or ("no basis" if basis is None else "no key for this version")
            rows.append(
                audit_row(
                    actor=user,
                    action=action,
                    outcome=DENIED,
                    patient=record.patient,
                    record=record,
                    purpose=used_for,
                    detail=reason,
                )
            )
            continue
        rows.append(
            audit_row(
                actor=user,
                action=action,
                patient=record.patient,
                record=record,
                visit=record.visit,
                purpose=used_for,
                basis=basis or "",
                detail=detail,
            )
        )
        allowed.append(RecordAccess(record=record, version=version, basis=basis or "", wrapped=wrapped, user=user))
    AccessEvent.objects.bulk_create(rows, batch_size=500)
    return allowed


def _preload(user, records: list[MedicalRecord], *, institution_export: bool) -> _Preloaded:
    """The rows ``_decide`` and ``_pick_key`` need for ``records``: at most five queries."""
    if not user.is_authenticated:
        return _Preloaded(mfa=False)
    staff = user.role != Role.PATIENT
    pre = _Preloaded(mfa=staff and is_mfa_enabled(user))
    others = {r.patient_id for r in records if r.patient_id != user.pk}
    if pre.mfa and user.role == Role.CLINICIAN and others and not institution_export:
        pre.grants = list(
            grants_usable_by(user)
            .filter(patient_id__in=others)
            .order_by(F("grantee_institution_id").asc(nulls_first=True), "-created_at")  # personal grants first
        )
        pre.named = set(
            Grant.records.through.objects.filter(
                grant_id__in=[g.pk for g in pre.grants], medicalrecord_id__in=[r.pk for r in records]
            ).values_list("grant_id", "medicalrecord_id")
        )
        now = timezone.now()
        sessions = BreakGlass.objects.filter(
            clinician_id=user.pk, patient_id__in=others, closed_at__isnull=True, expires_at__gt=now
        ).order_by("expires_at")
        pre.glass = {s.patient_id: s for s in sessions}  # the latest-ending one wins, as break_glass_active
    versions = [r.current_version_id for r in records if r.current_version_id]
    for wrapped in WrappedKey.objects.select_related("user", "institution").filter(version_id__in=versions):
        pre.keys.setdefault(wrapped.version_id, []).append(wrapped)
    return pre


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
