"""The consortium's directory: this node's institution and staff published on chain, the others' projected here.

Publishing (this node's own): an institution lists itself, then its verified
staff, each listing signed by the institution's key
(``accounts.institution_listed``, ``accounts.staff_listed``). A listing
depends on key registrations the chain must already hold, so what is owed
lives in the rows (``directory_tx == ""``) and :func:`directory_publish`
submits it once its dependencies are committed; the beat runs it every few
seconds, and a verification runs it at once.

Projecting (the others'): for each listed institution and staff member whose
home is another node, this node keeps an ``Institution`` or ``User`` row with
``home_node`` set, the public keys from the chain and the professional
information the listing carries, never a password or a private key
(:func:`directory_sync`, run after every block that changed a listing).
With those rows a patient here can share with a doctor there exactly as
with a doctor here. docs/identity.md says what each node stores about whom.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.ledger import institution_listing_submit, staff_listing_submit
from accounts.models import STAFF_ROLES, Institution, ListedInstitution, ListedStaff, User
from chain.models import KeyRegistration

log = logging.getLogger(__name__)

REMOTE_EMAIL_DOMAIN = "directory.invalid"  # RFC 2606: never delivered, never someone's real address


def remote_email(sign_public_hex: str, node: str) -> str:
    """The address kept for a person whose account is on another node: unique, and never delivered."""
    return f"{sign_public_hex[:24]}.{node}@{REMOTE_EMAIL_DOMAIN}".lower()


# -- publishing this node's own ------------------------------------------------------------------------
def _registered(sign_publics: Iterable[bytes]) -> set[str]:
    keys = [bytes(k).hex() for k in sign_publics]
    return set(KeyRegistration.objects.filter(sign_public__in=keys).values_list("sign_public", flat=True))


def directory_publish() -> int:
    """Submit the listings this node owes whose dependencies the chain already holds; how many it submitted."""
    submitted = 0
    institutions = list(Institution.objects.filter(home_node="", directory_tx=""))
    registered = _registered(i.sign_public for i in institutions)
    for institution in institutions:
        if bytes(institution.sign_public).hex() in registered:
            with transaction.atomic():
                entry = institution_listing_submit(institution)
                Institution.objects.filter(pk=institution.pk).update(directory_tx=entry.cid)
            submitted += 1
    staff = list(
        User.objects.filter(
            home_node="", directory_tx="", role__in=STAFF_ROLES, institution__home_node=""
        ).select_related("institution")
    )
    if not staff:
        return submitted
    listed_codes = {
        code: key
        for code, key in ListedInstitution.objects.filter(code__in={m.institution.code for m in staff}).values_list(
            "code", "sign_public"
        )
    }
    registered = _registered(m.sign_public for m in staff)
    current = {row.sign_public: row for row in ListedStaff.objects.filter(sign_public__in=registered)}
    for member in staff:
        key = bytes(member.sign_public).hex()
        institution_key = bytes(member.institution.sign_public).hex()
        if key not in registered or listed_codes.get(member.institution.code) != institution_key:
            continue  # the chain does not yet hold their key or their institution's listing
        wanted = member.is_verified_staff
        row = current.get(key)
        if row is not None and row.listed == wanted and (not wanted or _same_listing(row, member)):
            User.objects.filter(pk=member.pk).update(directory_tx=row.tx_cid)
            continue
        if row is None and not wanted:
            User.objects.filter(pk=member.pk).update(directory_tx="unlisted")
            continue
        with transaction.atomic():
            entry = staff_listing_submit(member, listed=wanted)
            User.objects.filter(pk=member.pk).update(directory_tx=entry.cid)
        submitted += 1
    return submitted


def _same_listing(row: ListedStaff, member: User) -> bool:
    return (row.institution_code, row.role, row.name, row.name_en, row.title) == (
        member.institution.code,
        member.role,
        member.name,
        member.name_en,
        member.staff_title,
    )


def listing_owed(member: User) -> None:
    """Mark ``member``'s listing as owed (verified, unverified, renamed) and publish it after the commit."""
    User.objects.filter(pk=member.pk).update(directory_tx="")
    transaction.on_commit(_publish_quietly)


def _publish_quietly() -> None:
    try:
        directory_publish()
    except Exception:  # the beat retries; the verification itself stands
        log.exception("publishing the directory failed; the beat will retry")


# -- projecting the others' ---------------------------------------------------------------------------
def directory_sync(*, codes: Iterable[str] | None = None, people: Iterable[str] | None = None) -> int:
    """Bring the rows of other nodes' institutions and staff in step with the chain's listings.

    ``codes`` and ``people`` (signing keys, hex) narrow it to what a block
    changed; with neither, everything is checked (the beat's repair). Returns
    how many rows it created or changed.
    """
    changed = 0
    listings = ListedInstitution.objects.all()
    if codes is not None or people is not None:
        listings = listings.filter(code__in=list(codes or []))
    for listing in listings:
        changed += _institution_sync(listing)
    staff = ListedStaff.objects.all()
    if people is not None or codes is not None:
        staff = staff.filter(sign_public__in=list(people or []))
    for listing in staff:
        changed += _staff_sync(listing)
    return changed


def _enc_public(sign_public_hex: str) -> bytes | None:
    row = KeyRegistration.objects.filter(sign_public=sign_public_hex).first()
    return bytes.fromhex(row.enc_public) if row is not None else None


@transaction.atomic
def _institution_sync(listing: ListedInstitution) -> int:
    if listing.node == settings.NODE_ID:
        return 0  # ours: the row is the original
    institution = Institution.objects.select_for_update().filter(code=listing.code).first()
    if institution is not None and not institution.home_node:
        if bytes(institution.sign_public).hex() != listing.sign_public:
            log.warning(
                "institution %s is listed by node %s with another key; keeping ours", listing.code, listing.node
            )
        return 0
    enc_public = _enc_public(listing.sign_public)
    if enc_public is None:
        return 0
    values = {
        "kind": listing.kind,
        "name": listing.name,
        "name_en": listing.name_en,
        "city": listing.city,
        "home_node": listing.node,
        "sign_public": bytes.fromhex(listing.sign_public),
        "enc_public": enc_public,
    }
    if institution is None:
        # The same public id on every node: an access event names the institution by it (its digest).
        Institution.objects.create(code=listing.code, public_id=listing.public_id, **values)
        return 1
    return _bring_up_to_date(institution, values)


@transaction.atomic
def _staff_sync(listing: ListedStaff) -> int:
    sign_public = bytes.fromhex(listing.sign_public)
    person = User.objects.select_for_update().filter(sign_public=sign_public).first()
    if person is not None and not person.home_node:
        return 0  # ours: the row is the original
    institution = Institution.objects.filter(code=listing.institution_code).exclude(home_node="").first()
    if institution is None:
        home = ListedInstitution.objects.filter(code=listing.institution_code).first()
        if home is None or home.node == settings.NODE_ID:
            return 0
        _institution_sync(home)
        institution = Institution.objects.filter(code=listing.institution_code).exclude(home_node="").first()
        if institution is None:
            return 0
    enc_public = _enc_public(listing.sign_public)
    if enc_public is None:
        return 0
    values = {
        "role": listing.role,
        "name": listing.name,
        "name_en": listing.name_en,
        "staff_title": listing.title,
        "institution": institution,
        "home_node": institution.home_node,
        "is_active": listing.listed,
        "enc_public": enc_public,
    }
    if person is None:
        person = User(
            public_id=listing.public_id,
            email=remote_email(listing.sign_public, institution.home_node),
            sign_public=sign_public,
            verified_at=timezone.now() if listing.listed else None,
            **values,
        )
        person.set_unusable_password()
        person.save()
        return 1
    verified_at = person.verified_at if listing.listed else None
    if listing.listed and verified_at is None:
        verified_at = timezone.now()
    values["verified_at"] = verified_at
    return _bring_up_to_date(person, values)


def _bring_up_to_date(row, values: dict) -> int:
    """Write ``values`` into ``row`` when any differs; 1 if it changed, else 0."""
    if all(_same(getattr(row, name), value) for name, value in values.items()):
        return 0
    for name, value in values.items():
        setattr(row, name, value)
    row.save(update_fields=list(values))
    return 1


def _same(current, wanted) -> bool:
    if isinstance(wanted, bytes):
        return bytes(current or b"") == wanted
    return current == wanted
