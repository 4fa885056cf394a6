"""Crash safety: a seal interrupted at any step leaves a valid chain, and every
transaction sealed exactly once or still pending; the next seal recovers."""

from __future__ import annotations

import pytest

import chain.ledger_services as services
from chain import chainstore
from chain.core import crypto, ledger
from chain.ledger_services import chain_seal, tx_submit
from chain.ledger_verify import chain_verify
from chain.models import Block, MempoolEntry, Transaction

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("chain_dir")]


class Crash(Exception):
    """Stands for the process dying at that instant."""


def crash(*args, **kwargs):
    raise Crash


def after(original):
    def run(*args, **kwargs):
        original(*args, **kwargs)
        raise Crash

    return run


STEPS = {
    "reading the mempool": lambda mp: mp.setattr(services, "_load_pending", crash),
    "sealing": lambda mp: mp.setattr(ledger, "seal_block", crash),
    "before the RocksDB write": lambda mp: mp.setattr(chainstore.ChainStore, "write_block", crash),
    "after the RocksDB write": lambda mp: mp.setattr(
        chainstore.ChainStore, "write_block", after(chainstore.ChainStore.write_block)
    ),
    "inserting the Block row": lambda mp: mp.setattr(services.Block.objects, "create", crash),
    "after the transaction rows": lambda mp: mp.setattr(services, "_insert_rows", after(services._insert_rows)),
    "projecting the state": lambda mp: mp.setattr(services, "_project_state", crash),
    "clearing the mempool": lambda mp: mp.setattr(services, "_delete_mempool", crash),
}


def submit(demo_tx, count: int) -> set[str]:
    cids = set()
    for _ in range(count):
        tx = demo_tx(crypto.new_ed25519(), 1)
        tx_submit(tx)
        cids.add(str(tx.cid))
    return cids


def assert_each_sealed_once_or_pending(cids: set[str]) -> None:
    sealed = list(Transaction.objects.filter(cid__in=cids).values_list("cid", flat=True))
    pending = set(MempoolEntry.objects.filter(cid__in=cids).values_list("cid", flat=True))
    assert len(sealed) == len(set(sealed))
    assert set(sealed).isdisjoint(pending)
    assert set(sealed) | pending == cids


@pytest.mark.parametrize("step", list(STEPS))
def test_a_seal_interrupted_at_each_step(step, demo_tx, monkeypatch):
    chain_seal()  # genesis
    first = submit(demo_tx, 3)
    chain_seal()
    second = submit(demo_tx, 4)

    with monkeypatch.context() as patch:
        STEPS[step](patch)
        with pytest.raises(Crash):
            chain_seal()

    # The database shows blocks 0 and 1 only; every transaction sealed once or pending.
    assert list(Block.objects.order_by("height").values_list("height", flat=True)) == [0, 1]
    assert_each_sealed_once_or_pending(first | second)
    assert set(MempoolEntry.objects.values_list("cid", flat=True)) == second
    # The chain store holds a valid chain whatever the step: at most the new block, complete.
    store = chainstore.primary()
    top = store.head()[0]
    assert top in (1, 2)
    if top == 2:
        assert {str(c) for c in store.block_at(2).txs} == second

    third = submit(demo_tx, 2)
    outcome = chain_seal()  # recovers the stored block first, if any, then seals what is left
    assert outcome.recovered == (1 if top == 2 else 0)
    while chain_seal().height is not None:
        pass
    assert not MempoolEntry.objects.exists()
    assert_each_sealed_once_or_pending(first | second | third)
    assert Transaction.objects.count() == 9
    result = chain_verify()
    assert result.ok, result.summary()


def test_recovery_itself_interrupted_is_retried(demo_tx, monkeypatch):
    chain_seal()
    cids = submit(demo_tx, 3)
    with monkeypatch.context() as patch:
        patch.setattr(chainstore.ChainStore, "write_block", after(chainstore.ChainStore.write_block))
        with pytest.raises(Crash):
            chain_seal()
    with monkeypatch.context() as patch:
        patch.setattr(services, "_project_state", crash)
        with pytest.raises(Crash):
            chain_seal()  # dies while recovering block 1
    assert not Block.objects.filter(height=1).exists()
    assert chain_seal().recovered == 1
    assert set(Transaction.objects.values_list("cid", flat=True)) == cids
    assert not MempoolEntry.objects.exists()
    assert chain_verify().ok


def test_a_database_ahead_of_the_store_is_refused_not_forked(demo_tx, settings, tmp_path):
    chain_seal()
    submit(demo_tx, 1)
    chain_seal()
    chainstore.close_all()
    services._head_cache.clear()
    settings.CHAIN_DIR = tmp_path / "empty"  # the chain store was lost; the database was not
    with pytest.raises(services.ChainError, match="chain store"):
        chain_seal()
    chainstore.close_all()
