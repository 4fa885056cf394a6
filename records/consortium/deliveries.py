"""Records and grants reach the nodes whose people may read them.

Two kinds of delivery, each a row of the :class:`~records.models.Delivery`
outbox made in the database transaction that causes it, sent on commit and
by the beat until the other node took it:

* **A record version** goes to the home node of its patient when it was
  written elsewhere (story: seen at another hospital), and from the patient's
  home to the nodes of its other readers (a grantee at a third node, the
  author's node after a re-keying). The message holds the record's routing
  metadata (kind, visit, institution, author, dates), each stored version's
  encrypted content, the files' wrapped keys, and the version keys sealed to
  the readers *on the receiving node* only. No key that opens anything leaves
  a node unsealed.
* **A grant** goes from the patient's home to the grantee's node: the grant
  (scope, purpose, period, state), the patient's card, and the records in its
  scope with their keys sealed to the grantee. A revocation is the same
  message with the grant revoked; the grantee's node also learns it from the
  chain, after every block (:func:`grants_revoked_on_chain`).

A receiving node believes nothing on the sender's word. Every version must
be anchored on its own copy of the chain, by a transaction its author signed
(or, re-keyed, by the patient), with the same root, number and record handle,
and a commitment naming this patient and record. Until the chain there holds
it, it answers 409 and the sender tries again a second later. Beyond that:

* at the patient's home, the sender must be a node the patient gave their
  card to, and the author a listed clinician of that node's institution;
* anywhere else, the sender must be the patient's home node; for a grant, the
  grant must be on chain, issued by the patient's key to a local grantee's key.

The receiving node then fetches the version's DAG (manifest, content, files)
from the nodes that hold it and pins it, whatever the placement says
(:func:`chain.replication.replicate_here`): the patient's home holds all of
their records, a reader's node what its readers may read, so both still open
them when the writing node is down.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from accounts.directory import directory_sync
from accounts.models import Institution, ListedInstitution, ListedStaff, Role, User
from chain.cluster import in_consortium
from chain.ledger_services import to_dag_json
from chain.models import LedgerState, Transaction
from chain.models.ledger import state_key_digest
from chain.peer_apps import call
from chain.replication import replicate_here
from records import ledger
from records.envelopes import deliver_to_grantees
from records.models import (
    CardCode,
    Delivery,
    Grant,
    GrantScope,
    MedicalRecord,
    Notification,
    RecordFile,
    RecordKind,
    RecordVersion,
    Visit,
    WrappedKey,
)
from records.notices import notify

log = logging.getLogger(__name__)

DELIVERY_MESSAGE = "records.deliver"
SHARE_MESSAGE = "records.share"
ANCHOR_TYPES = {ledger.ANCHORED, ledger.SUPERSEDED, ledger.REKEYED}
MAX_BACKOFF = timedelta(minutes=10)
SEND_BATCH = 50


# -- what this node owes --------------------------------------------------------------------------------------
def deliveries_owed(version: RecordVersion) -> None:
    """Inside the transaction that anchored ``version`` or sealed new keys to it: owe it to the nodes that read it.

    Here, not the patient's home: to the patient's home only (it passes the
    record on to the patient's grantees). The patient's home: to every other
    node holding a key to it. A delivery already made is sent again (new keys).
    """
    record = version.record
    patient = record.patient
    if patient.home_node:
        nodes = {patient.home_node}
    else:
        # The patient's home holds every version of their records, whatever the placement says, so a
        # store wiped here is repaired from the replicas (chain.replication audits what it holds).
        root = version.root_cid
        transaction.on_commit(lambda: replicate_here(root) if in_consortium() else None)
        nodes = set()
        for key in version.wrapped_keys.select_related("user", "institution"):
            holder = key.user if key.user_id else key.institution
            if holder.home_node:
                nodes.add(holder.home_node)
    for node in nodes:
        _owe(version=version, node=node)


def grant_owed(grant: Grant) -> None:
    """Inside the transaction that issued or revoked ``grant``: owe its state to a grantee's other node.

    A revocation is also sent at once when the transaction commits, before the
    patient's page answers, so the grantee's node refuses the very next
    request; if that node cannot be reached, the outbox keeps trying (and the
    chain's next block tells it too).
    """
    grantee = grant.grantee_user or grant.grantee_institution
    if grantee.home_node and not grant.patient.home_node:
        delivery = _owe(grant=grant, node=grantee.home_node)
        if grant.status == Grant.Status.REVOKED:
            transaction.on_commit(lambda: _send_now(delivery.pk))


def _owe(*, node: str, version: RecordVersion | None = None, grant: Grant | None = None) -> Delivery:
    delivery, made = Delivery.objects.get_or_create(version=version, grant=grant, node=node)
    if not made:
        Delivery.objects.filter(pk=delivery.pk).update(
            state=Delivery.State.PENDING, attempts=0, next_try_at=timezone.now()
        )
    transaction.on_commit(_send_soon)
    return delivery


def _send_now(delivery_id: int) -> None:
    claimed = Delivery.objects.filter(pk=delivery_id, state__in=[Delivery.State.PENDING, Delivery.State.ERROR]).update(
        state=Delivery.State.SENDING, next_try_at=timezone.now()
    )
    if claimed:
        _send(Delivery.objects.get(pk=delivery_id), timeout=3.0)


def _send_soon() -> None:
    from records.consortium.tasks import deliver

    deliver.delay()


def deliveries_send(*, limit: int = SEND_BATCH) -> dict[str, int]:
    """Send the deliveries that are due; counts by outcome."""
    now = timezone.now()
    due = Delivery.objects.filter(
        Q(state__in=[Delivery.State.PENDING, Delivery.State.ERROR], next_try_at__lte=now)
        | Q(state=Delivery.State.SENDING, next_try_at__lt=now - timedelta(minutes=5))
    ).order_by("next_try_at")
    counts: dict[str, int] = {}
    for delivery in due[:limit]:
        claimed = Delivery.objects.filter(pk=delivery.pk, state=delivery.state).update(
            state=Delivery.State.SENDING, next_try_at=now
        )
        if not claimed:
            continue  # another worker took it
        outcome = _send(delivery)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _send(delivery: Delivery, *, timeout: float = 15.0) -> str:
    try:
        if delivery.version_id:
            name, message = DELIVERY_MESSAGE, delivery_message(delivery.version_id, node=delivery.node)
        else:
            name, message = SHARE_MESSAGE, share_message(delivery.grant_id, node=delivery.node)
        answer = call(delivery.node, name, message, timeout=timeout)
    except Exception as exc:
        log.exception("delivery %s could not be sent", delivery.pk)
        return _retry(delivery, f"{type(exc).__name__}: {exc}")
    if answer.ok:
        # Unless it was owed again meanwhile (new keys): then the next run sends it again.
        Delivery.objects.filter(pk=delivery.pk, state=Delivery.State.SENDING).update(
            state=Delivery.State.DELIVERED, delivered_at=timezone.now(), last_error=""
        )
        return "delivered"
    if answer.status == 409:  # the chain there does not hold it yet: soon
        return _retry(delivery, answer.error or "not anchored there yet", soon=True)
    return _retry(delivery, f"{answer.status or 'unreachable'}: {answer.error}")


def _retry(delivery: Delivery, error: str, *, soon: bool = False) -> str:
    attempts = delivery.attempts + 1
    if soon and attempts < 30:
        wait = timedelta(seconds=1)
    else:
        wait = min(MAX_BACKOFF, timedelta(seconds=2 ** min(attempts, 10)))
    Delivery.objects.filter(pk=delivery.pk, state=Delivery.State.SENDING).update(
        state=Delivery.State.ERROR, attempts=attempts, last_error=error[:300], next_try_at=timezone.now() + wait
    )
    return "waiting" if soon else "error"


# -- the messages -----------------------------------------------------------------------------------------------
def delivery_message(version_id: int, *, node: str) -> dict[str, Any]:
    """One record, for ``node``: ciphertext, routing metadata, and the keys of ``node``'s readers."""
    version = RecordVersion.objects.select_related("record").get(pk=version_id)
    return {"patient": bytes(version.record.patient.sign_public), "record": record_message(version.record, node=node)}


def share_message(grant_id: int, *, node: str) -> dict[str, Any]:
    """A grant's state for the grantee's node, the patient's card, and the records in its scope."""
    from records.consortium.cards import card_of
    from records.policy import granted_records_q

    grant = Grant.objects.select_related("patient", "grantee_user", "grantee_institution").get(pk=grant_id)
    records = []
    if grant.status == Grant.Status.ACTIVE:
        # A record not stored yet follows on its own when it is (its version is owed to the grantee's node).
        covered = MedicalRecord.objects.filter(
            granted_records_q([grant]), current_version__storage=RecordVersion.Storage.STORED
        )
        records = [record_message(r, node=node) for r in covered.select_related("patient")]
    grantee = (
        {"user": bytes(grant.grantee_user.sign_public)}
        if grant.grantee_user_id
        else {"institution": grant.grantee_institution.code}
    )
    return {
        "card": card_of(grant.patient),
        "grant": {
            "public_id": str(grant.public_id),
            "chain_id": bytes(grant.chain_id),
            **grantee,
            "scope": grant.scope,
            "kinds": list(grant.kinds or []),
            "include_sensitive": grant.include_sensitive,
            "purpose": grant.purpose,
            "valid_from": grant.valid_from.isoformat(),
            "valid_until": grant.valid_until.isoformat(),
            "revoked": grant.status == Grant.Status.REVOKED,
            "pseudonym": grant.pseudonym,
            "records": [str(r) for r in grant.records.values_list("public_id", flat=True)],
        },
        "records": records,
    }


def record_message(record: MedicalRecord, *, node: str) -> dict[str, Any]:
    stored = list(
        record.versions.filter(storage=RecordVersion.Storage.STORED)
        .select_related("created_by")
        .prefetch_related("files__uploaded_by", "wrapped_keys__user", "wrapped_keys__institution")
        .order_by("number")
    )
    visit = record.visit
    return {
        "public_id": str(record.public_id),
        "anchor_id": bytes(record.anchor_id),
        "kind": record.kind,
        "status": record.status,
        "sensitive": record.sensitive,
        "created_at": record.created_at.isoformat(),
        "institution": record.institution.code if record.institution else "",
        "author": bytes(record.author.sign_public),
        "visit": None
        if visit is None
        else {
            "public_id": str(visit.public_id),
            "kind": visit.kind,
            "status": visit.status,
            "opened_at": visit.opened_at.isoformat(),
            "closed_at": visit.closed_at.isoformat() if visit.closed_at else "",
            "opened_by": bytes(visit.opened_by.sign_public),
        },
        "versions": [_version_message(v, node=node) for v in stored],
    }


def _version_message(version: RecordVersion, *, node: str) -> dict[str, Any]:
    return {
        "public_id": str(version.public_id),
        "number": version.number,
        "origin": version.origin,
        "created_by": bytes(version.created_by.sign_public),
        "created_at": version.created_at.isoformat(),
        "finalized_at": version.finalized_at.isoformat() if version.finalized_at else "",
        "content": bytes(version.content_ciphertext),
        "content_size": version.content_size,
        "root_cid": version.root_cid,
        "commitment": version.commitment,
        "salt": bytes(version.commitment_salt),
        "anchor_tx": version.anchor_tx,
        "files": [
            {
                "public_id": str(f.public_id),
                "key_wrapped": bytes(f.key_wrapped),
                "stream_id": str(f.stream_id),
                "media_type": f.media_type,
                "size": f.size,
                "ciphertext_size": f.ciphertext_size,
                "root_cid": f.root_cid,
                "uploaded_by": bytes(f.uploaded_by.sign_public),
                "uploaded_at": f.uploaded_at.isoformat(),
                "position": f.position,
            }
            for f in version.files.all()
            if f.status == RecordFile.Status.STORED
        ],
        # Only the keys of the receiving node's readers: nobody else's envelope leaves this node.
        "keys": [
            {"user": bytes(k.user.sign_public), "envelope": bytes(k.envelope)}
            if k.user_id
            else {"institution": k.institution.code, "envelope": bytes(k.envelope)}
            for k in version.wrapped_keys.all()
            if (k.user if k.user_id else k.institution).home_node == node
        ],
    }


# -- receiving ----------------------------------------------------------------------------------------------------
class Refused(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _answer(node: str, work) -> tuple[int, dict]:
    try:
        return 200, work()
    except Refused as refusal:
        if refusal.status != 409:
            log.warning("refused a delivery from %s: %s", node, refusal.error)
        return refusal.status, {"error": refusal.error}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("malformed delivery from %s: %s", node, exc)
        return 400, {"error": "malformed"}


def delivery_receive(node: str, message: dict) -> tuple[int, dict]:
    """Another node delivers a record version: for this node's patient, or for a reader here."""
    return _answer(node, lambda: _receive_record_delivery(node, message))


def share_receive(node: str, message: dict) -> tuple[int, dict]:
    """A patient's home node tells this node of a grant to one of its people (issued, changed or revoked)."""
    return _answer(node, lambda: _receive_share(node, message))


def _when(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@transaction.atomic
def _receive_record_delivery(node: str, message: dict) -> dict:
    patient = User.objects.filter(sign_public=bytes(message["patient"]), role=Role.PATIENT, is_active=True).first()
    if patient is None:
        raise Refused(404, "no such patient here")
    if not patient.home_node:
        if not CardCode.objects.filter(patient=patient, used_at__isnull=False, released_to_node=node).exists():
            # A node writes for this node's patient only once the patient gave it their card.
            raise Refused(403, "the patient has not given their card to the sending node")
    elif patient.home_node != node:
        raise Refused(403, "only the patient's home node passes their records on")
    record, stored, first = _import_record(node, patient, message["record"])
    if first and not patient.home_node:
        notify(
            user=patient,
            kind=Notification.Kind.RECORD_ARRIVED,
            person=record.author,
            institution=record.institution,
            link=reverse("record_detail", args=[record.public_id]),
        )
    if not patient.home_node:
        _pass_on(record)
    return {"stored": stored}


def _pass_on(record: MedicalRecord) -> None:
    """At the patient's home: seal a record that arrived to the patient's grantees, and owe it to their nodes."""
    deliver_to_grantees(record)
    if record.current_version is not None:
        deliveries_owed(record.current_version)


@transaction.atomic
def _receive_share(node: str, message: dict) -> dict:
    from records.consortium.cards import card_adopt

    card, data = message["card"], message["grant"]
    if card.get("node") != node:
        raise Refused(403, "only the patient's home node shares their records")
    state = _chain_state(ledger.grant_state_key(bytes(data["chain_id"])))
    if state is None:
        raise Refused(409, "the grant is not on chain here yet")
    if bytes(state["issuer"]) != bytes(card["sign_public"]):
        raise Refused(403, "the grant was not issued by this patient")
    grantee_user = grantee_institution = None
    if "user" in data:
        grantee_user = User.objects.filter(sign_public=bytes(data["user"]), home_node="").first()
        grantee_key = bytes(data["user"])
    else:
        grantee_institution = Institution.objects.filter(code=data["institution"], home_node="").first()
        grantee_key = bytes(grantee_institution.sign_public) if grantee_institution else b""
    if (grantee_user or grantee_institution) is None or bytes(state["grantee_key"]) != grantee_key:
        raise Refused(403, "the grant is not to anyone of this node")
    try:
        patient = card_adopt(card, node=node)
    except Exception as exc:
        raise Refused(403, "the card does not match the chain") from exc
    if data["scope"] not in GrantScope.values:
        raise Refused(400, "unknown scope")
    revoked = bool(data["revoked"] or state["revoked"])
    values = {
        "chain_id": bytes(data["chain_id"]),
        "patient": patient,
        "grantee_user": grantee_user,
        "grantee_institution": grantee_institution,
        "scope": data["scope"],
        "kinds": list(data["kinds"]),
        "include_sensitive": bool(data["include_sensitive"]),
        "purpose": data["purpose"],
        "valid_from": _when(data["valid_from"]),
        "valid_until": _when(data["valid_until"]),
        "pseudonym": str(data["pseudonym"])[:64],
    }
    grant = Grant.objects.select_for_update().filter(public_id=data["public_id"]).first()
    if grant is None:
        grant = Grant.objects.create(public_id=data["public_id"], **values)
    elif grant.patient_id != patient.pk or bytes(grant.chain_id) != values["chain_id"]:
        raise Refused(409, "grant id clash")
    else:
        for name, value in values.items():
            setattr(grant, name, value)
        grant.save()
    if revoked and grant.status != Grant.Status.REVOKED:
        Grant.objects.filter(pk=grant.pk).update(status=Grant.Status.REVOKED, revoked_at=timezone.now())
        return {"stored": 0, "revoked": True}
    stored = 0
    for item in [] if revoked else message["records"]:
        _record, made, _first = _import_record(node, patient, item)
        stored += made
    if grant.scope == GrantScope.RECORDS:
        grant.records.set(MedicalRecord.objects.filter(public_id__in=data["records"], patient=patient))
    return {"stored": stored, "revoked": revoked}


def _chain_state(key: str) -> Any:
    from chain.core import dagcbor

    row = LedgerState.objects.filter(key_digest=state_key_digest(key)).first()
    return dagcbor.decode(bytes(row.value)) if row is not None else None


def grants_revoked_on_chain(keys: list[str]) -> None:
    """After a block: grants to this node's people that their patient revoked are revoked here too."""
    from chain.core import dagcbor

    revoked = []
    for row in LedgerState.objects.filter(key_digest__in=[state_key_digest(k) for k in keys]):
        if dagcbor.decode(bytes(row.value)).get("revoked"):
            revoked.append(bytes.fromhex(row.key.removeprefix(ledger.GRANT_PREFIX)))
    if revoked:
        Grant.objects.filter(chain_id__in=revoked, status=Grant.Status.ACTIVE).update(
            status=Grant.Status.REVOKED, revoked_at=timezone.now()
        )


def _import_record(node: str, patient: User, data: dict) -> tuple[MedicalRecord, int, bool]:
    """Write (or bring up to date) one record as ``node`` sent it; every version checked against the chain."""
    here_is_home = not patient.home_node
    people = _people_of(data)
    if here_is_home:  # from the node that wrote it: its institution, its listed author
        institution = _institution_of(node, data["institution"])
        author = people.get(bytes(data["author"]))
        if author is None or author.institution_id != institution.pk:
            raise Refused(403, "the author is not listed as staff of the sending node's institution")
    else:  # from the patient's home: whoever wrote it, wherever
        institution = Institution.objects.filter(code=data["institution"]).first() if data["institution"] else None
        author = people.get(bytes(data["author"]))
        if author is None or (data["institution"] and institution is None):
            raise Refused(409, "the record's author or institution is not in the directory here yet")
    versions = sorted(data["versions"], key=lambda v: v["number"])
    if not versions:
        raise Refused(400, "no version")
    if data["kind"] not in RecordKind.values:
        raise Refused(400, "unknown kind of record")
    anchor_id = bytes(data["anchor_id"])
    for item in versions:
        _check_anchor(item, anchor_id, people)
        _check_commitment(item, patient=patient, record_id=str(data["public_id"]))

    existing = MedicalRecord.all_objects.filter(public_id=data["public_id"]).first()
    if existing is not None and existing.patient_id != patient.pk:
        raise Refused(409, "record id clash")
    visit = None
    if data.get("visit") and institution is not None:
        visit = _visit(data["visit"], patient=patient, institution=institution, people=people)
    values = {
        "anchor_id": anchor_id,
        "patient": patient,
        "visit": visit,
        "institution": institution,
        "author": author,
        "kind": data["kind"],
        "status": data["status"] if data["status"] in MedicalRecord.Status.values else MedicalRecord.Status.FINAL,
        "sensitive": bool(data["sensitive"]),
        "created_at": _when(data["created_at"]),
    }
    if existing is None:
        record = MedicalRecord.objects.create(public_id=data["public_id"], **values)
    else:
        record = existing
        for name, value in values.items():
            setattr(record, name, value)
        record.save()
    stored = 0
    current = None
    for item in versions:
        current, made = _version(record, item, people)
        stored += made
    record.current_version = current
    record.updated_at = timezone.now()
    record.save(update_fields=["current_version", "updated_at"])
    # The patient's home holds all of their records, and a reader's node what its readers read, so
    # both still open them when the writing node is down (whatever the placement says).
    roots = [item["root_cid"] for item in versions]
    transaction.on_commit(lambda: [replicate_here(root) for root in roots])
    return record, stored, existing is None


def _institution_of(node: str, code: str) -> Institution:
    listed = ListedInstitution.objects.filter(code=code).first()
    if listed is None or listed.node != node:
        raise Refused(403, "the institution is not listed as the sending node's")
    institution = Institution.objects.filter(code=code, home_node=node).first()
    if institution is None:
        directory_sync(codes=[code], people=[])
        institution = Institution.objects.filter(code=code, home_node=node).first()
    if institution is None:
        raise Refused(409, "the institution's directory row is not here yet")
    return institution


def _people_of(data: dict) -> dict[bytes, User]:
    """The people a record message names (authors, uploaders, key holders) that this node knows, by signing key."""
    keys = {bytes(data["author"])}
    for item in data["versions"]:
        keys.add(bytes(item["created_by"]))
        keys.update(bytes(f["uploaded_by"]) for f in item["files"])
        keys.update(bytes(k["user"]) for k in item["keys"] if "user" in k)
    visit = data.get("visit")
    if visit:
        keys.add(bytes(visit["opened_by"]))
    people = {bytes(u.sign_public): u for u in User.objects.filter(sign_public__in=list(keys))}
    missing = [k.hex() for k in keys if k not in people]
    listed = set(ListedStaff.objects.filter(sign_public__in=missing, listed=True).values_list("sign_public", flat=True))
    if listed:  # listed on chain, no row yet (the hook after the block lags): make them now
        directory_sync(codes=[], people=sorted(listed))
        people.update(
            {bytes(u.sign_public): u for u in User.objects.filter(sign_public__in=[bytes.fromhex(k) for k in listed])}
        )
    return people


def _check_anchor(item: dict, anchor_id: bytes, people: dict[bytes, User]) -> None:
    """The version is anchored on this node's copy of the chain, by a transaction its author signed."""
    tx = Transaction.objects.filter(cid=item["anchor_tx"]).first()
    if tx is None:
        raise Refused(409, "not anchored here yet")
    payload = tx.payload
    if (
        tx.type not in ANCHOR_TYPES
        or payload.get("root") != {"/": item["root_cid"]}
        or payload.get("version") != item["number"]
        or payload.get("record") != to_dag_json(anchor_id)
    ):
        raise Refused(403, "the version does not match its anchor")
    if tx.type == ledger.REKEYED:
        return  # re-keyed by the patient, whose home is this node; the chain checked the signer
    author = people.get(bytes(item["created_by"]))
    if author is None or bytes(author.sign_public).hex() != tx.signer:
        raise Refused(403, "the anchor is not signed by the version's author")


def _check_commitment(item: dict, *, patient: User, record_id: str) -> None:
    """The anchor's commitment names this patient and this record (records.ledger.commitment)."""
    expected = ledger.commitment(
        salt=bytes(item["salt"]), patient_id=str(patient.public_id), record_id=record_id, root=item["root_cid"]
    )
    if expected.hex() != item["commitment"]:
        raise Refused(403, "the version's commitment does not name this patient and record")


def _visit(data: dict | None, *, patient: User, institution: Institution, people: dict[bytes, User]) -> Visit | None:
    if not data:
        return None
    opener = people.get(bytes(data["opened_by"]))
    if opener is None:
        raise Refused(409, "the visit's clinician is not in the directory here yet")
    values = {
        "patient": patient,
        "institution": institution,
        "opened_by": opener,
        "kind": data["kind"] if data["kind"] in Visit.Kind.values else Visit.Kind.OUTPATIENT,
        "status": data["status"] if data["status"] in Visit.Status.values else Visit.Status.CLOSED,
        "opened_at": _when(data["opened_at"]),
        "closed_at": _when(data["closed_at"]),
    }
    visit = Visit.objects.filter(public_id=data["public_id"]).first()
    if visit is None:
        return Visit.objects.create(public_id=data["public_id"], **values)
    if visit.patient_id != patient.pk or visit.institution_id != institution.pk:
        raise Refused(409, "visit id clash")
    for name, value in values.items():
        setattr(visit, name, value)
    visit.save()
    return visit


def _version(record: MedicalRecord, item: dict, people: dict[bytes, User]) -> tuple[RecordVersion, int]:
    version = RecordVersion.objects.filter(public_id=item["public_id"]).first()
    if version is not None:
        if version.record_id != record.pk or version.root_cid != item["root_cid"]:
            raise Refused(409, "version id clash")
        made = 0
    else:
        creator = people.get(bytes(item["created_by"]))
        if creator is None:
            raise Refused(409, "the version's author is not in the directory here yet")
        version = RecordVersion.objects.create(
            public_id=item["public_id"],
            record=record,
            number=item["number"],
            origin=item["origin"] if item["origin"] in RecordVersion.Origin.values else RecordVersion.Origin.ORIGINAL,
            created_by=creator,
            created_at=_when(item["created_at"]),
            finalized_at=_when(item["finalized_at"]),
            content_ciphertext=bytes(item["content"]),
            content_size=item["content_size"],
            storage=RecordVersion.Storage.STORED,
            root_cid=item["root_cid"],
            commitment=item["commitment"],
            commitment_salt=bytes(item["salt"]),
            anchor_tx=item["anchor_tx"],
        )
        made = 1
        for f in item["files"]:
            uploader = people.get(bytes(f["uploaded_by"])) or creator
            RecordFile.objects.create(
                public_id=f["public_id"],
                version=version,
                key_wrapped=bytes(f["key_wrapped"]),
                stream_id=f["stream_id"],
                media_type=str(f["media_type"])[:100],
                size=f["size"],
                ciphertext_size=f["ciphertext_size"],
                root_cid=f["root_cid"],
                status=RecordFile.Status.STORED,
                uploaded_by=uploader,
                uploaded_at=_when(f["uploaded_at"]),
                stored_at=timezone.now(),
                position=f["position"],
            )
    # Keys: for the readers this node knows; more may come with a later delivery (a grant).
    institutions = {
        i.code: i
        for i in Institution.objects.filter(code__in=[k["institution"] for k in item["keys"] if "institution" in k])
    }
    have_users = set(version.wrapped_keys.filter(user__isnull=False).values_list("user_id", flat=True))
    have_institutions = set(
        version.wrapped_keys.filter(institution__isnull=False).values_list("institution_id", flat=True)
    )
    for key in item["keys"]:
        if "user" in key:
            holder = people.get(bytes(key["user"]))
            if holder is not None and holder.pk not in have_users:
                WrappedKey.objects.create(
                    version=version, recipient_kind="user", user=holder, envelope=bytes(key["envelope"])
                )
                have_users.add(holder.pk)
        else:
            holder = institutions.get(key["institution"])
            if holder is not None and holder.pk not in have_institutions:
                WrappedKey.objects.create(
                    version=version, recipient_kind="institution", institution=holder, envelope=bytes(key["envelope"])
                )
                have_institutions.add(holder.pk)
    return version, made
