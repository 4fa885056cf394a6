"""Patient-issued grants and their revocation: the one write path for sharing.

A grant lets one doctor or one institution read some of a patient's records
(all, some kinds, or chosen ones) for a purpose and a period. Issuing it, in
one database transaction: the ``Grant`` row (what the access helper reads),
the current data key of every in-scope record sealed to the grantee's X25519
key (an institution grant to the institution's key, which its cleared staff
open), an audit row, and the ``records.grant_issued`` transaction signed by
the patient's own key. Records created later are sealed to in-scope grantees
by ``records.clinical.services.version_recipients``.

Revocation marks the row revoked, which the access helper checks on every
request, so it takes effect on the very next request. Expiry needs no job:
the helper compares the window with ``timezone.now()``. What a grantee
already viewed cannot be recalled. In the same transaction the revocation
writes a ``RekeyJob`` with one ``RekeyItem`` per record the grant covered (the
outbox) and queues ``store.records_rekey`` on commit; ``records.sharing.rekey`` then
re-encrypts each record under a fresh key the revoked grantee never held.

On chain the patient appears only under a per-relationship pseudonym:
``HMAC-SHA256(patient secret, grantee public id ‖ purpose)``, so two grants
of one patient to different grantees or purposes are unlinkable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.keys import signing_private_key
from accounts.models import Role, User
from chain.core import crypto
from chain.kek import node_kek
from records.audit import audit
from records.consortium.deliveries import grant_owed
from records.envelopes import deliver_to_grantees
from records.keys import open_dek, seal_for
from records.ledger import GRANT_ISSUED
from records.models import (
    AccessEvent,
    Grant,
    GrantPurpose,
    GrantScope,
    MedicalRecord,
    PatientSecret,
    RecordKind,
    RekeyItem,
    RekeyJob,
    WrappedKey,
)
from records.policy import grant_in_scope
from records.revocation import grant_revocation_submit, revocation_submit
from records.sharing import tasks

log = logging.getLogger(__name__)


# -- scope ---------------------------------------------------------------------------------
def scope_digest(grant: Grant, record_handles: list[bytes]) -> bytes:
    """A commitment to the scope: what was granted, without saying it on chain."""
    document = {
        "scope": grant.scope,
        "kinds": sorted(grant.kinds or []),
        "records": sorted(h.hex() for h in record_handles),
        "include_sensitive": grant.include_sensitive,
        "nonce": bytes(grant.chain_id).hex(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).digest()


# -- pseudonyms ----------------------------------------------------------------------------
def _pseudonym_secret(patient) -> bytes:
    owner = f"user:{patient.public_id}/pseudonym"
    row = PatientSecret.objects.filter(patient=patient).first()
    if row is None:
        secret = os.urandom(32)
        PatientSecret.objects.create(
            patient=patient, secret_wrapped=crypto.wrap_private_key(node_kek(), secret, owner=owner)
        )
        return secret
    return crypto.unwrap_private_key(node_kek(), bytes(row.secret_wrapped), owner=owner)


def pseudonym_for(patient, *, grantee_public_id, purpose: str) -> bytes:
    """HMAC-SHA256(patient's secret, grantee public id ‖ purpose): one pseudonym per relationship."""
    message = f"{grantee_public_id}|{purpose}".encode()
    return hmac.new(_pseudonym_secret(patient), message, hashlib.sha256).digest()


def _ms(value) -> int:
    from chain.ledger_services import datetime_to_ms

    return datetime_to_ms(value)


# -- issue and revoke ----------------------------------------------------------------------
@transaction.atomic
def grant_issue(
    *,
    patient,
    grantee_user=None,
    grantee_institution=None,
    scope: str,
    kinds=(),
    records=(),
    purpose: str,
    valid_from,
    valid_until,
    include_sensitive: bool = False,
    session: bytes = b"",
) -> Grant:
    """Grant ``grantee_user`` or ``grantee_institution`` access to some of ``patient``'s records."""
    from chain.ledger_services import tx_sign_and_submit

    if patient.role != Role.PATIENT:
        raise PermissionDenied(_("Only patients grant access to their records."))
    if (grantee_user is None) == (grantee_institution is None):
        raise ValidationError(_("Choose one doctor or one institution."))
    if grantee_user is not None and not (grantee_user.is_verified_staff and grantee_user.pk != patient.pk):
        raise ValidationError(_("Access can be granted only to verified staff of an institution."))
    if scope not in GrantScope.values:
        raise ValidationError(_("Choose what to share."))
    if purpose not in GrantPurpose.values:
        raise ValidationError(_("Choose a purpose."))
    kinds = sorted(set(kinds))
    if scope == GrantScope.KINDS and (not kinds or any(k not in RecordKind.values for k in kinds)):
        raise ValidationError(_("Choose at least one kind of record."))
    if valid_until <= valid_from:
        raise ValidationError(_("The grant must end after it starts."))
    if valid_until <= timezone.now():
        raise ValidationError(_("The grant must end in the future."))
    chosen = []
    if scope == GrantScope.RECORDS:
        chosen = list(MedicalRecord.objects.filter(patient=patient, pk__in=[r.pk for r in records]))
        if not chosen or len(chosen) != len({r.pk for r in records}):
            raise ValidationError(_("Choose at least one of your records."))
    grantee = grantee_user or grantee_institution
    grant = Grant(
        chain_id=os.urandom(16),
        patient=patient,
        grantee_user=grantee_user,
        grantee_institution=grantee_institution,
        scope=scope,
        kinds=kinds if scope == GrantScope.KINDS else [],
        include_sensitive=include_sensitive,
        purpose=purpose,
        valid_from=valid_from,
        valid_until=valid_until,
        session=session,
    )
    pseudonym = pseudonym_for(patient, grantee_public_id=grantee.public_id, purpose=purpose)
    grant.pseudonym = pseudonym.hex()
    grant.save()
    if chosen:
        grant.records.set(chosen)
    _deliver_keys(grant, chosen)
    entry = tx_sign_and_submit(
        private_key=signing_private_key(patient),
        type=GRANT_ISSUED,
        payload={
            "grant": bytes(grant.chain_id),
            "pseudonym": pseudonym,
            "grantee_key": bytes(grantee.sign_public),
            "purpose": purpose,
            "not_before": _ms(valid_from),
            "not_after": _ms(valid_until),
            "scope_digest": scope_digest(grant, [bytes(r.anchor_id) for r in chosen]),
        },
    )
    grant.issued_tx = entry.cid
    grant.save(update_fields=["issued_tx"])
    grant_owed(grant)  # a grantee at another node: the grant and the records go there
    audit(
        actor=patient,
        action=AccessEvent.Action.GRANT,
        patient=patient,
        purpose=purpose,
        basis="patient",
        detail=f"{grant.get_scope_display()} → {grantee.display_name}",
    )
    return grant


@transaction.atomic
def grant_issue_once(**terms) -> tuple[Grant, bool]:
    """:func:`grant_issue`, unless the patient already has a grant giving exactly this; ``(grant, issued)``.

    A form sent twice (a double click, the back button) would otherwise leave
    two grants alike, and the patient who revokes one would think access ended.
    The patient's row is locked, so two requests at once make one grant.
    """
    patient = terms["patient"]
    User.objects.select_for_update().filter(pk=patient.pk).first()
    same = _grant_alike(terms)
    if same is not None:
        return same, False
    return grant_issue(**terms), True


def _grant_alike(terms: dict) -> Grant | None:
    """The patient's unrevoked grant with these very terms (grantee, records, purpose, period), if any.

    ``terms`` are :func:`grant_issue`'s. A grant from today starts at the moment it is made: any
    grant already in force starts alike.
    """
    scope = terms["scope"]
    kinds = sorted(set(terms.get("kinds", ()))) if scope == GrantScope.KINDS else []
    chosen = {r.pk for r in terms.get("records", ())} if scope == GrantScope.RECORDS else set()
    alike = Grant.objects.filter(
        patient=terms["patient"],
        grantee_user=terms.get("grantee_user"),
        grantee_institution=terms.get("grantee_institution"),
        scope=scope,
        purpose=terms["purpose"],
        include_sensitive=terms.get("include_sensitive", False),
        valid_until=terms["valid_until"],
        status=Grant.Status.ACTIVE,
    ).prefetch_related("records")
    now, valid_from = timezone.now(), terms["valid_from"]
    alike = alike.filter(valid_from__lte=now) if valid_from <= now else alike.filter(valid_from=valid_from)
    return next((g for g in alike if g.kinds == kinds and {r.pk for r in g.records.all()} == chosen), None)


def _deliver_keys(grant: Grant, chosen: list[MedicalRecord]) -> int:
    """Seal the current data key of every in-scope, non-draft record to the grantee.

    The patient's own envelope opens each key. Constant queries: the records,
    the patient's envelopes and one bulk insert, whatever the number of records.
    """
    records = MedicalRecord.objects.filter(patient=grant.patient, current_version__isnull=False).exclude(
        status=MedicalRecord.Status.DRAFT
    )
    if grant.scope == GrantScope.KINDS:
        records = records.filter(kind__in=grant.kinds)
    elif grant.scope == GrantScope.RECORDS:
        records = records.filter(pk__in=[r.pk for r in chosen])
    named = {r.pk for r in chosen}
    in_scope = [r for r in records.select_related("current_version") if grant_in_scope(grant, r, named=r.pk in named)]
    versions = [r.current_version for r in in_scope]
    recipient = Q(user=grant.grantee_user) if grant.grantee_user_id else Q(institution=grant.grantee_institution)
    have = set(WrappedKey.objects.filter(recipient, version__in=versions).values_list("version_id", flat=True))
    own = {
        w.version_id: w
        for w in WrappedKey.objects.select_related("user").filter(version__in=versions, user=grant.patient)
    }
    rows = []
    for version in versions:
        if version.pk in have or version.pk not in own:
            continue
        dek = open_dek(version, own[version.pk])
        rows.extend(
            seal_for(
                version,
                dek,
                users=[grant.grantee_user] if grant.grantee_user_id else [],
                institutions=[grant.grantee_institution] if grant.grantee_institution_id else [],
            )
        )
    WrappedKey.objects.bulk_create(rows, batch_size=500)
    return len(rows)


@transaction.atomic
def grant_revoke(*, patient, grant: Grant) -> Grant:
    """Revoke ``grant``: the grantee is denied from the very next request.

    The ``records.grant_revoked`` transaction is submitted now if the grant's
    own transaction is sealed; otherwise ``grants_redrive`` submits it once it
    is (the validator checks the grant against sealed state).
    """
    grant = Grant.objects.select_for_update().get(pk=grant.pk)
    if grant.patient_id != patient.pk:
        raise PermissionDenied(_("Only the patient who granted access can revoke it."))
    if grant.status == Grant.Status.REVOKED:
        return grant
    grant.status = Grant.Status.REVOKED
    grant.revoked_at = timezone.now()
    grant.save(update_fields=["status", "revoked_at"])
    revocation_submit(grant, patient)
    grant_owed(grant)  # a grantee at another node is told at once (and by the chain's next block)
    rekey_job_create(grant)
    audit(
        actor=patient,
        action=AccessEvent.Action.REVOKE,
        patient=patient,
        purpose=grant.purpose,
        basis="patient",
        detail=str(grant.grantee.display_name),
    )
    return grant


def records_to_rekey(grant: Grant) -> list[int]:
    """Ids of the non-draft records the grant covered, or whose keys its grantee holds.

    Two queries for the patient's records and the grantee's envelopes, plus
    one for the named records, whatever their number.
    """
    records = (
        MedicalRecord.objects.filter(patient=grant.patient, current_version__isnull=False)
        .exclude(status=MedicalRecord.Status.DRAFT)
        .only("pk", "patient_id", "kind", "sensitive")
    )
    named = set(grant.records.values_list("pk", flat=True)) if grant.scope == GrantScope.RECORDS else set()
    covered = {r.pk for r in records if grant_in_scope(grant, r, named=r.pk in named)}
    recipient = Q(user=grant.grantee_user_id) if grant.grantee_user_id else Q(institution=grant.grantee_institution_id)
    held = WrappedKey.objects.filter(recipient, version__record__in=records).values_list(
        "version__record_id", flat=True
    )
    return sorted(covered | set(held))


def rekey_job_create(grant: Grant) -> RekeyJob:
    """The outbox for re-keying after ``grant``'s revocation; queued when the transaction commits."""
    record_ids = records_to_rekey(grant)
    now = timezone.now()
    job = RekeyJob.objects.create(
        grant=grant,
        total=len(record_ids),
        status=RekeyJob.Status.PENDING if record_ids else RekeyJob.Status.DONE,
        created_at=now,
        updated_at=now,
    )
    RekeyItem.objects.bulk_create([RekeyItem(job=job, record_id=pk) for pk in record_ids], batch_size=500)
    if record_ids:
        job_id = job.pk
        transaction.on_commit(lambda: _queue_rekey(job_id))
    return job


@transaction.atomic
def rekey_job_retry(job_public_id) -> RekeyJob:
    """The operator runs a failed re-keying job again (once its cause is repaired, e.g. a replica restored).

    Its finished records stay done; the pending ones are tried again by the store worker.
    :class:`RekeyJob.DoesNotExist` if there is no such job; ``ValidationError`` unless it failed.
    """
    job = RekeyJob.objects.select_for_update().get(public_id=job_public_id)
    if job.status != RekeyJob.Status.FAILED:
        raise ValidationError(_("Only a re-keying job that stopped can be run again."))
    job.status = RekeyJob.Status.RUNNING
    job.error = ""
    job.updated_at = timezone.now()
    job.save(update_fields=["status", "error", "updated_at"])
    job_id = job.pk
    transaction.on_commit(lambda: _queue_rekey(job_id))
    log.info("re-keying job %s is run again by an operator", job.public_id)
    return job


def _queue_rekey(job_id: int) -> None:
    tasks.rekey.delay(job_id)


def grants_redrive(limit: int = 200) -> int:
    """Submit revocations that waited for their grant's transaction to be sealed."""

    # This node's patients only: a grant another node shared here is revoked on chain by the patient's home.
    pending = Grant.objects.filter(status=Grant.Status.REVOKED, revoked_tx="", patient__home_node="")[:limit]
    submitted = sum(grant_revocation_submit(grant) for grant in pending)
    if submitted:
        log.info("submitted %d waiting grant revocations", submitted)
    return submitted


# -- the grantee's side ----------------------------------------------------------------------
@transaction.atomic
def record_set_sensitive(*, patient, record: MedicalRecord, sensitive: bool) -> MedicalRecord:
    """The patient marks one of their records sensitive (or not).

    Effective on the next request: the access helper leaves a sensitive
    record out of every grant that does not name it or include sensitive
    records, whatever keys were delivered before.
    """
    if record.patient_id != patient.pk:
        raise PermissionDenied(_("Only the patient marks their records sensitive."))
    if record.sensitive != sensitive:
        MedicalRecord.objects.filter(pk=record.pk).update(sensitive=sensitive)
        record.sensitive = sensitive
        if not sensitive:
            deliver_to_grantees(record)
        audit(
            actor=patient,
            action=AccessEvent.Action.EDIT,
            patient=patient,
            record=record,
            basis="patient",
            detail="marked sensitive" if sensitive else "no longer sensitive",
        )
    return record
