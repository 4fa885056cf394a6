"""A record's FHIR resources, read through the access helpers: one record, or a chunk of them.

Both forms decide, audit and decrypt through ``records.policy`` (the chunk
through its batch form, a constant number of queries per chunk), then map
the decrypted version with ``mapping``; plaintext exists only in the
resources returned.
"""

from __future__ import annotations

from collections.abc import Sequence

from records.anchors import anchor_proof, anchor_proofs
from records.clinical import reading
from records.fhir import mapping
from records.models import AccessEvent
from records.policy import RecordAccess, record_get_for_user, records_get_for_user


def record_resources_for(user, record_id, version: int | None = None) -> list[dict]:
    """The record's resources (its current version, or ``version``), with the version's Provenance."""
    access = record_get_for_user(user, record_id, version_number=version)
    anchor = anchor_proof(access.version.anchor_tx) if access.version.anchor_tx else None
    return resources_of(access, anchor)


def chunk_resources(
    user,
    record_ids: Sequence,
    *,
    action: str = AccessEvent.Action.VIEW,
    detail: str = "",
    institution_export: bool = False,
) -> list[tuple[RecordAccess, list[dict]]]:
    """Each record of the chunk the user may open, with its resources; the others are left out (and audited)."""
    accesses = records_get_for_user(
        user, record_ids, action=action, detail=detail, institution_export=institution_export
    )
    anchors = anchor_proofs(a.version.anchor_tx for a in accesses)
    return [(a, resources_of(a, anchors.get(a.version.anchor_tx))) for a in accesses]


def resources_of(access: RecordAccess, anchor: dict | None) -> list[dict]:
    content = reading.content_of(access)
    files = [(f.record_file, f.name) for f in reading.files_of(access, content)]
    resources = mapping.record_resources(access.record, access.version, content, files)
    resources.append(mapping.provenance(access.record, access.version, resources, anchor))
    return resources
