"""Version keys for a patient's grantees: sealing a record's current data key to whoever its grants now cover.

Every path that changes who may read a record (a draft signed, a record no
longer sensitive, a record arriving from another node) calls
:func:`deliver_to_grantees`; the grant itself seals what it covers when it is
issued (``records.sharing.grants``).
"""

from __future__ import annotations

from records.keys import open_dek, seal_for
from records.models import MedicalRecord, WrappedKey
from records.policy import grantees_in_scope


def deliver_to_grantees(record: MedicalRecord) -> int:
    """Seal ``record``'s current data key to every current grantee whose scope now covers it.

    For records that enter a grant's scope after the grant was issued: a draft
    signed later, a record no longer marked sensitive. Opens the key through
    the patient's own envelope; constant queries whatever the number of grants.
    Returns how many envelopes were added.
    """
    version = record.current_version
    if version is None or record.status == MedicalRecord.Status.DRAFT:
        return 0
    users, institutions = grantees_in_scope(record)
    if not users and not institutions:
        return 0
    held = WrappedKey.objects.filter(version=version).values_list("user_id", "institution_id")
    held_users = {u for u, _i in held if u}
    held_institutions = {i for _u, i in held if i}
    users = [u for u in users if u.pk not in held_users]
    institutions = [i for i in institutions if i.pk not in held_institutions]
    own = WrappedKey.objects.select_related("user").filter(version=version, user_id=record.patient_id).first()
    if own is None or not (users or institutions):
        return 0
    rows = seal_for(version, open_dek(version, own), users=users, institutions=institutions)
    WrappedKey.objects.bulk_create(rows)
    return len(rows)
