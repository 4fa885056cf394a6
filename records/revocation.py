"""Putting a revoked grant's revocation on chain, now or once its grant is sealed."""

from __future__ import annotations

import logging

from django.db import transaction

from accounts.keys import signing_private_key
from chain.ledger_services import DbState, TxRejected, tx_sign_and_submit
from records.ledger import GRANT_REVOKED, grant_state_key
from records.models import Grant

log = logging.getLogger(__name__)


def revocation_submit(grant: Grant, patient) -> bool:
    """Sign and submit ``grant``'s revocation as ``patient``; False while the grant itself is not sealed."""
    if DbState().get(grant_state_key(bytes(grant.chain_id))) is None:
        return False  # the issue is not sealed yet: the row is the outbox
    entry = tx_sign_and_submit(
        private_key=signing_private_key(patient), type=GRANT_REVOKED, payload={"grant": bytes(grant.chain_id)}
    )
    grant.revoked_tx = entry.cid
    grant.save(update_fields=["revoked_tx"])
    return True


def grant_revocation_submit(grant: Grant) -> bool:
    """Put a revoked grant's revocation on chain if it waited and now can; whether it did."""
    if grant.status != Grant.Status.REVOKED or grant.revoked_tx:
        return False
    try:
        with transaction.atomic():
            locked = Grant.objects.select_for_update().select_related("patient").get(pk=grant.pk)
            return not locked.revoked_tx and revocation_submit(locked, locked.patient)
    except TxRejected as exc:  # already revoked on chain by another path: nothing to redo
        log.warning("revocation of grant %s refused: %s", grant.public_id, exc)
        return False
