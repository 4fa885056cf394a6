"""Fixtures for the ledger's Django side: a private chain store per test, demo transactions."""

from __future__ import annotations

import pytest


@pytest.fixture
def chain_dir(settings, tmp_path):
    """Point CHAIN_DIR at a fresh directory and close this process's store handles around the test."""
    from chain import chainstore, ledger_services

    chainstore.close_all()
    ledger_services._head_cache.clear()
    settings.CHAIN_DIR = tmp_path / "chain"
    yield settings.CHAIN_DIR
    chainstore.close_all()
    ledger_services._head_cache.clear()


@pytest.fixture
def demo_tx():
    """``demo_tx(pair, seq, **options)``: a signed ``chain.demo`` transaction for this node's chain."""
    from django.conf import settings

    from chain.core.transaction import Transaction

    def make(pair, seq, *, nonce=None, chain_id=None, type="chain.demo", payload=None, timestamp=None):
        return Transaction.create(
            chain_id=chain_id or settings.CHAIN_ID,
            type=type,
            payload=payload if payload is not None else {"nonce": seq if nonce is None else nonce},
            seq=seq,
            private_key=pair.private,
            timestamp=timestamp,
        )

    return make
