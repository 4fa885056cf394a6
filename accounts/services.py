"""Write paths for people and institutions.

Portal views, admin actions and management commands all call these, so a
user or institution never comes into being without its keys and a staff
verification is always checked against the verifier's own institution.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

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
    return member


@transaction.atomic
def staff_unverify(*, verifier: User, member: User) -> User:
    if not can_verify(verifier, member):
        raise PermissionDenied("You may change only staff of your own institution.")
    member = User.objects.select_for_update().get(pk=member.pk)
    member.verified_at = None
    member.verified_by = None
    member.save(update_fields=["verified_at", "verified_by"])
    return member
