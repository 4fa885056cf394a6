"""Sealing through a real Celery store worker on Redis, sharing the test database (MariaDB)."""

from __future__ import annotations

import time

import pytest
from celery import Celery
from django.db import connection

from chain import chainstore
from chain.core import crypto
from chain.ledger_services import tx_submit
from chain.ledger_verify import chain_verify
from chain.models import Block, KeyRegistration, MempoolEntry, Transaction
from tests.conftest import require_service
from tests.emr_site.test_celery import start_worker, stop_worker, worker_env


def _database_url() -> str:
    """The URL of the test database this process uses, for the worker subprocess."""
    db = connection.settings_dict
    user = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"mysql://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 3306}/{db['NAME']}"


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_store_worker_seals_what_was_submitted(tmp_path, redis_url, settings, chain_dir, demo_tx, alice):
    if connection.vendor != "mysql":
        require_service("MariaDB (the worker must share the test database)", False)
    pairs = [crypto.new_ed25519() for _ in range(5)]
    for pair in pairs:
        tx_submit(demo_tx(pair, 1))
    env = worker_env(
        tmp_path,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        DATABASE_URL=_database_url(),
        CHAIN_DIR=str(chain_dir),
        EMR_KEK_FILE=str(settings.EMR_KEK_FILE),
        CHAIN_ID=settings.CHAIN_ID,
        EMR_NODE_ID=settings.NODE_ID,
    )
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    app = Celery("probe", broker=redis_url, backend=redis_url)
    worker = start_worker(env, "store")
    try:
        result = app.send_task("store.chain_seal", queue="store", ignore_result=False)
        outcome = result.get(timeout=90)
        assert outcome is not None, "the worker found the store locked"
        if outcome["height"] is None:  # a stale message from an earlier run sealed it first
            outcome = {"included": Transaction.objects.count()}
        deadline = time.monotonic() + 30
        while MempoolEntry.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not MempoolEntry.objects.exists()
        assert Transaction.objects.count() == 6  # five demo transactions and alice's key registration
        assert KeyRegistration.objects.filter(sign_public=bytes(alice.sign_public).hex()).exists()
        # This process reads the worker's store as a secondary while the worker holds it.
        with pytest.raises(chainstore.StoreLocked):
            chainstore.primary()
        verified = chain_verify()
        assert verified.ok, verified.summary()
        assert verified.to_height == Block.objects.order_by("-height").first().height
    finally:
        chainstore.close_all()
        output = stop_worker(worker)
    assert "Traceback" not in output, output
