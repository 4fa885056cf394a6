"""Ledger tasks. Both write the node's RocksDB, so both run on the store worker.

``store.chain_seal`` runs every ``CHAIN_BLOCK_INTERVAL`` from beat. It is
idempotent (nothing pending: nothing sealed) and safe to lose: pending
transactions live in the mempool table, not in the message, so a message that
expired or died with a worker is simply replaced by the next beat.
"""

from __future__ import annotations

import logging

from celery import shared_task

from chain.chainstore import StoreLocked
from chain.cluster import in_consortium
from chain.ledger_services import chain_seal
from chain.ledger_verify import chain_validate_recent

logger = logging.getLogger(__name__)


@shared_task(name="store.chain_seal", ignore_result=True, soft_time_limit=50, time_limit=60)
def chain_seal_task() -> dict | None:
    if in_consortium():
        return None  # the consensus process decides and writes every block
    try:
        return chain_seal().as_dict()
    except StoreLocked as exc:
        # A command (``chain seal`` with no worker running) holds the store for a moment;
        # the next beat seals instead.
        logger.info("chain store busy, not sealing this time: %s", exc)
        return None


@shared_task(name="store.chain_validate_recent", ignore_result=True, soft_time_limit=540, time_limit=600)
def chain_validate_recent_task() -> dict | None:
    result = chain_validate_recent()
    if result is None:
        return None  # another run is in progress
    return {"ok": result.ok, "to_height": result.to_height, "summary": result.summary()}
