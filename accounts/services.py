"""Write paths for people and institutions.

Portal views, admin actions and management commands all call these, so a
user or institution never comes into being without its keys and a staff
verification is always checked against the verifier's own institution.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from accounts.directory import listing_owed
from accounts.keys import issue_keys
from accounts.ledger import key_registration_submit
from accounts.models import STAFF_ROLES, Institution, Role, User


@transaction.atomic
def institution_create(*, code: str, kind: str, name: str, name_en: str = "", city: str = "") -> Institution:
    institution = Institution(code=code, kind=kind, name=name, name_en=name_en, city=city)
    issue_keys(institution)
    institution.full_clean()
    institution.save()
    key_registration_submit(institution, kind="institution")
    return institution


@transaction.atomic
def user_create(
    *,
    email: str,
    password: str | None,
    role: str = Role.PATIENT,
    name: str = "",
    name_en: str = "",
    institution: Institution | None = None,
    staff_title: str = "",
) -> User:
    if role in STAFF_ROLES and institution is None:
        raise ValueError("Staff accounts belong to an institution.")
    user = User.objects.create_user(
        email=email,
        password=password,
        role=role,
        name=name,
        name_en=name_en,
        institution=institution if role in STAFF_ROLES else None,
        staff_title=staff_title,
        # Institution admins use Django admin for their institution's records.
        is_staff=role in {Role.INSTITUTION_ADMIN, Role.OPERATOR},
    )
    key_registration_submit(user, kind="user")
    return user


def can_verify(verifier: User, member: User) -> bool:
    """An institution admin may verify staff of their own institution; operators any."""
    if not verifier.is_active or member.pk == verifier.pk or not member.is_institution_staff:
        return False
    if verifier.role == Role.OPERATOR or verifier.is_superuser:
        return True
    return (
        verifier.role == Role.INSTITUTION_ADMIN
        and verifier.is_verified_staff
        and verifier.institution_id == member.institution_id
    )


@transaction.atomic
def staff_verify(*, verifier: User, member: User) -> User:
    if not can_verify(verifier, member):
        raise PermissionDenied("You may verify only staff of your own institution.")
    member = User.objects.select_for_update().get(pk=member.pk)
    if member.verified_at is None:
        member.verified_at = timezone.now()
        member.verified_by = verifier
        member.save(update_fields=["verified_at", "verified_by"])
        listing_owed(member)
    return member


@transaction.atomic
def staff_unverify(*, verifier: User, member: User) -> User:
    if not can_verify(verifier, member):
        raise PermissionDenied("You may change only staff of your own institution.")
    member = User.objects.select_for_update().get(pk=member.pk)
    if member.verified_at is not None:
        member.verified_at = None
        member.verified_by = None
        member.save(update_fields=["verified_at", "verified_by"])
        listing_owed(member)
    return member


def patient_find(identifier: str) -> User | None:
    """The active patient a clinic means by a Yilian ID (any spacing, with or without ``YL``) or an email.

    Raises ``ValidationError`` for something typed as an ID that fails its check symbol, so a
    typo is reported as a typo and never reaches another patient.
    """
    from django.core.exceptions import ValidationError
    from django.utils.translation import gettext as _

    from accounts.health_id import looks_like_health_id, normalize

    value = (identifier or "").strip()
    patients = User.objects.filter(role=Role.PATIENT, is_active=True)
    if "@" in value:
        return patients.filter(email__iexact=value).first()
    health_id = normalize(value)
    if health_id is not None:
        return patients.filter(health_id=health_id).first()
    if looks_like_health_id(value):
        raise ValidationError(
            _("This is not a valid Yilian ID: check it for a typing mistake (it looks like YL-4K7P-M2QD-X)."),
            code="invalid_id",
        )
    return None


DOCTOR_RESULTS_MAX = 20


def doctors_find(query: str) -> list[User]:
    """Verified clinicians matching every word of ``query`` in their name or their institution's.

    A hospital directory, for a patient choosing whom to share with: names and workplaces of
    verified staff only, never patients, never an unverified account.
    """
    from django.db.models import Q

    words = [w for w in (query or "").split() if w][:5]
    if not words:
        return []
    doctors = User.objects.filter(role=Role.CLINICIAN, is_active=True, verified_at__isnull=False)
    for word in words:
        doctors = doctors.filter(
            Q(name__icontains=word)
            | Q(name_en__icontains=word)
            | Q(institution__name__icontains=word)
            | Q(institution__name_en__icontains=word)
            | Q(institution__code__iexact=word)
        )
    return list(doctors.select_related("institution").order_by("institution__code", "name")[:DOCTOR_RESULTS_MAX])
