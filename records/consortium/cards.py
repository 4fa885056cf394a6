"""A patient's card, given to another node's institution with a one-time code.

At the patient's home node (A) the patient makes a one-time code beside their
Yilian ID. A doctor at another node (B) types both. B asks every node for the
card (:func:`card_fetch`); only A knows the patient, and A answers only when
the code is right, unused and fresh, and the asking doctor is listed on chain
as staff of an institution whose node is the one asking
(:func:`card_release`). The code is then used up: its row is the patient's
recorded consent. The patient is notified at A, and the release appears in
their footprint.

The card is what B needs to treat the patient as its own: their public id,
Yilian ID, public keys (checked against the chain), name, date of birth and
sex. B keeps it as a directory row (``User.home_node`` = A): no password, no
private key. docs/identity.md lists what each node stores about whom.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import date, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.directory import directory_sync, remote_email
from accounts.health_id import normalize
from accounts.models import Institution, ListedInstitution, ListedStaff, Role, User
from chain.models import KeyRegistration
from chain.peer_apps import call_each, consortium_nodes
from records.audit import audit
from records.models import AccessEvent, CardCode, Notification
from records.models.consortium import CARD_CODE_TRIES
from records.notices import notify

log = logging.getLogger(__name__)

CARD_MESSAGE = "records.card"
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud and typed from a phone
CODE_LENGTH = 8
CODE_LIFETIME = timedelta(minutes=15)


def _digest(patient: User, code: str) -> str:
    return hashlib.sha256(f"yilian/card-code/v1|{patient.public_id}|{code}".encode()).hexdigest()


def normalize_code(typed: str) -> str:
    return "".join(ch for ch in (typed or "").upper() if ch.isalnum())


def display_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


@transaction.atomic
def card_code_issue(patient: User) -> tuple[str, CardCode]:
    """A fresh one-time code for ``patient`` (their earlier unused codes stop working); shown once."""
    if patient.role != Role.PATIENT or patient.is_remote:
        raise ValidationError(_("Only a patient makes a code for their own card."))
    now = timezone.now()
    CardCode.objects.filter(patient=patient, used_at__isnull=True, expires_at__gt=now).update(expires_at=now)
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    row = CardCode.objects.create(patient=patient, digest=_digest(patient, code), expires_at=now + CODE_LIFETIME)
    return code, row


def card_releases(patient: User) -> list[CardCode]:
    """The institutions this patient gave their card to, newest first."""
    return list(
        CardCode.objects.filter(patient=patient, used_at__isnull=False)
        .select_related("released_to", "released_to_institution")
        .order_by("-used_at")[:50]
    )


# -- at the patient's home node: the answer ---------------------------------------------------------------
def card_release(node: str, message: dict) -> tuple[int, dict]:
    """Another node asks for a patient's card with their Yilian ID and one-time code."""
    health_id = normalize(str(message.get("health_id", "")))
    code = normalize_code(str(message.get("code", "")))
    institution_code = str(message.get("institution", ""))
    clinician_key = message.get("clinician")
    if health_id is None or not code or not isinstance(clinician_key, bytes):
        return 400, {"error": "malformed"}
    listed = ListedInstitution.objects.filter(code=institution_code, node=node).first()
    staff = ListedStaff.objects.filter(
        sign_public=clinician_key.hex(), institution_code=institution_code, listed=True
    ).first()
    if listed is None or staff is None or staff.role != Role.CLINICIAN:
        return 403, {"error": "not a listed clinician of the asking node"}
    with transaction.atomic():
        patient = User.objects.filter(role=Role.PATIENT, home_node="", health_id=health_id, is_active=True).first()
        if patient is None:
            return 404, {"error": "unknown"}
        now = timezone.now()
        row = (
            CardCode.objects.select_for_update()
            .filter(patient=patient, used_at__isnull=True, expires_at__gt=now, failures__lt=CARD_CODE_TRIES)
            .order_by("-created_at")
            .first()
        )
        if row is None:
            return 403, {"error": "code"}
        if not hmac.compare_digest(row.digest, _digest(patient, code)):
            CardCode.objects.filter(pk=row.pk).update(failures=row.failures + 1)
            return 403, {"error": "code"}
        clinician = User.objects.filter(sign_public=clinician_key).first()
        if clinician is None:  # the directory row is made after each block; make it now if it lags
            directory_sync(codes=[institution_code], people=[clinician_key.hex()])
            clinician = User.objects.filter(sign_public=clinician_key).first()
        institution = Institution.objects.filter(code=institution_code).first()
        row.used_at = now
        row.released_to_node = node
        row.released_to_institution = institution
        row.released_to = clinician
        row.save(update_fields=["used_at", "released_to_node", "released_to_institution", "released_to"])
        if clinician is not None:
            notify(
                user=patient,
                kind=Notification.Kind.CARD_RELEASED,
                person=clinician,
                institution=institution,
                link=reverse("patient_card"),
            )
        # In the patient's footprint: who at which institution received the card (a directory row).
        audit(actor=clinician, action=AccessEvent.Action.CARD, patient=patient, basis="card")
    log.info("card of a patient released to %s at %s", institution_code, node)
    return 200, {"card": card_of(patient)}


def card_of(patient: User) -> dict:
    return {
        "public_id": str(patient.public_id),
        "health_id": patient.health_id,
        "sign_public": bytes(patient.sign_public),
        "enc_public": bytes(patient.enc_public),
        "name": patient.name,
        "name_en": patient.name_en,
        "birth_date": patient.birth_date.isoformat() if patient.birth_date else "",
        "sex": patient.sex,
        "node": settings.NODE_ID,
    }


# -- at the doctor's node: the question ---------------------------------------------------------------------
def card_fetch(*, health_id: str, code: str, clinician: User) -> User:
    """Obtain the card of a patient whose home is another node; their directory row here.

    Raises ``ValidationError`` with what the doctor should do: a wrong or
    expired code, an unknown Yilian ID, a home node that cannot be reached.
    """
    code = normalize_code(code)
    if len(code) != CODE_LENGTH:
        raise ValidationError(_("The one-time code has 8 letters and digits (like 7KQM-42XP)."), code="code")
    message = {
        "health_id": health_id,
        "code": code,
        "institution": clinician.institution.code,
        "clinician": bytes(clinician.sign_public),
    }
    answers = call_each(consortium_nodes(), CARD_MESSAGE, message, timeout=5.0)
    for answer in answers:
        if answer.ok and isinstance(answer.value.get("card"), dict):
            return card_adopt(answer.value["card"], node=answer.node)
    errors = {answer.error for answer in answers if answer.status}
    if "code" in errors:
        raise ValidationError(
            _("The one-time code is wrong, used or expired. Ask the patient to make a new one in their portal."),
            code="code",
        )
    if "not a listed clinician of the asking node" in errors:
        raise ValidationError(
            _("The consortium does not list you yet as a clinician of this institution; try again in a minute."),
            code="unlisted",
        )
    if any(answer.status == 0 for answer in answers):
        raise ValidationError(
            _("The patient's home node cannot be reached now. Try again in a few minutes."), code="unreachable"
        )
    raise ValidationError(_("No patient with this Yilian ID in the consortium."), code="not_found")


@transaction.atomic
def card_adopt(card: dict, *, node: str) -> User:
    """Keep ``card`` (from ``node``) as this node's directory row of the patient; checked against the chain."""
    try:
        sign_public, enc_public = bytes(card["sign_public"]), bytes(card["enc_public"])
        public_id, health_id = str(card["public_id"]), normalize(str(card["health_id"]))
        birth = date.fromisoformat(card["birth_date"]) if card.get("birth_date") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(_("The patient's home node sent an unreadable card."), code="card") from exc
    registered = KeyRegistration.objects.filter(sign_public=sign_public.hex(), kind="user").first()
    if registered is None or registered.enc_public != enc_public.hex() or health_id is None:
        raise ValidationError(_("The card does not match the keys the chain holds for this patient."), code="card")
    values = {
        "name": str(card.get("name", ""))[:150],
        "name_en": str(card.get("name_en", ""))[:150],
        "birth_date": birth,
        "sex": card.get("sex") if card.get("sex") in {"female", "male", "other"} else "",
        "health_id": health_id,
        "home_node": node,
        "enc_public": enc_public,
    }
    patient = User.objects.select_for_update().filter(sign_public=sign_public).first()
    if patient is not None:
        if not patient.home_node or patient.role != Role.PATIENT or str(patient.public_id) != public_id:
            raise ValidationError(_("The card does not match the keys the chain holds for this patient."))
        for name, value in values.items():
            setattr(patient, name, value)
        patient.save(update_fields=list(values))
        return patient
    patient = User(
        public_id=public_id,
        email=remote_email(sign_public.hex(), node),
        role=Role.PATIENT,
        sign_public=sign_public,
        **values,
    )
    patient.set_unusable_password()
    patient.save()
    return patient
