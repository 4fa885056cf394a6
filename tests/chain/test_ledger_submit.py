"""Submitting transactions: validated on the way in, kept in the mempool (the outbox)."""

from __future__ import annotations

import dataclasses

import pytest
from django.db import transaction

from chain.core import crypto
from chain.core.transaction import Transaction as CoreTx
from chain.ledger_services import TxRejected, next_seq, tx_sign_and_submit, tx_submit, tx_submit_many
from chain.models import MempoolEntry

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("chain_dir")]


@pytest.fixture
def pair():
    return crypto.new_ed25519()


def rejected(tx) -> TxRejected:
    with pytest.raises(TxRejected) as info:
        tx_submit(tx)
    assert not MempoolEntry.objects.filter(cid=str(tx.cid) if isinstance(tx, CoreTx) else "").exists()
    return info.value


def test_a_valid_transaction_waits_in_the_mempool(pair, demo_tx):
    tx = demo_tx(pair, 1)
    entry = tx_submit(tx)
    assert entry.cid == str(tx.cid)
    assert bytes(MempoolEntry.objects.get(cid=entry.cid).raw) == tx.encode()
    assert (entry.type, entry.signer, entry.seq) == ("chain.demo", pair.public.hex(), 1)


def test_encoded_bytes_are_accepted_too(pair, demo_tx):
    tx = demo_tx(pair, 1)
    assert tx_submit(tx.encode()).cid == str(tx.cid)


def test_bad_signature(pair, demo_tx):
    tx = demo_tx(pair, 1)
    forged = dataclasses.replace(tx, payload={"nonce": 99})  # same signature, other content
    assert rejected(forged).reason == "bad-signature"


def test_signature_by_another_key(pair, demo_tx):
    tx = demo_tx(pair, 1)
    other = crypto.new_ed25519()
    stolen = dataclasses.replace(tx, signer=other.public)
    assert rejected(stolen).reason == "bad-signature"


def test_replay_of_a_pending_transaction(pair, demo_tx):
    tx = demo_tx(pair, 1)
    tx_submit(tx)
    error = rejected_again(tx)
    assert error.reason == "replay"
    assert "already used" in error.message


def rejected_again(tx) -> TxRejected:
    with pytest.raises(TxRejected) as info:
        tx_submit(tx)
    return info.value


def test_replay_of_a_sealed_transaction(pair, demo_tx):
    from chain.ledger_services import chain_seal

    tx = demo_tx(pair, 1)
    tx_submit(tx)
    chain_seal()
    assert rejected_again(tx).reason == "replay"


def test_a_number_that_skips_ahead(pair, demo_tx):
    assert rejected(demo_tx(pair, 2)).reason == "bad-seq"


def test_the_next_numbers_follow_the_pending_ones(pair, demo_tx):
    tx_submit(demo_tx(pair, 1))
    tx_submit(demo_tx(pair, 2))
    assert next_seq(pair.public) == 3


def test_unknown_type(pair, demo_tx):
    error = rejected(demo_tx(pair, 1, type="records.unheard_of", payload={}))
    assert error.reason == "unknown-type"


def test_invalid_payload(pair, demo_tx):
    assert rejected(demo_tx(pair, 1, payload={"nonce": "one"})).reason == "invalid-payload"
    assert rejected(demo_tx(pair, 1, payload={"nonce": 1, "name": "Alice"})).reason == "invalid-payload"


def test_the_type_validator_refuses(pair, demo_tx):
    error = rejected(demo_tx(pair, 1, payload={"nonce": -1}))
    assert error.reason == "rejected"
    assert "negative" in error.message


def test_oversize(settings, pair, demo_tx):
    settings.CHAIN_MAX_TX_BYTES = 230  # before genesis the configured limit applies
    tx = demo_tx(pair, 1, payload={"nonce": 1, "memo": "x" * 64})
    small = demo_tx(crypto.new_ed25519(), 1)
    assert tx.size > 230 > small.size
    error = rejected(tx.encode())
    assert error.reason == "oversize"
    tx_submit(small)


def test_wrong_chain(pair, demo_tx):
    assert rejected(demo_tx(pair, 1, chain_id="another-chain")).reason == "wrong-chain"


def test_from_the_future(pair, demo_tx):
    from chain.core.transaction import now_ms

    assert rejected(demo_tx(pair, 1, timestamp=now_ms() + 3_600_000)).reason == "bad-timestamp"


def test_garbage_bytes(pair):
    assert rejected(b"\xa1\x61x\x01").reason == "bad-encoding"


def test_submission_commits_and_rolls_back_with_the_callers_transaction(pair, demo_tx):
    tx = demo_tx(pair, 1)

    def business_change_that_fails():
        with transaction.atomic():
            tx_submit(tx)
            raise RuntimeError("the business change failed")

    with pytest.raises(RuntimeError):
        business_change_that_fails()
    assert not MempoolEntry.objects.exists()


def test_a_refusal_leaves_the_callers_transaction_usable(pair, demo_tx):
    with transaction.atomic():
        tx_submit(demo_tx(pair, 1))
        with pytest.raises(TxRejected):
            tx_submit(demo_tx(pair, 5))
        tx_submit(demo_tx(pair, 2))
    assert MempoolEntry.objects.count() == 2


def test_two_transactions_racing_for_one_number(pair, demo_tx, monkeypatch):
    """Both passed validation with seq 1; the unique (signer, seq) keeps only the first."""
    import chain.ledger_services as services

    first, second = demo_tx(pair, 1, nonce=1), demo_tx(pair, 1, nonce=2)
    tx_submit(first)
    monkeypatch.setattr(services, "_pending_seqs", lambda signers: {})  # as if it read before the first
    error = rejected_again(second)
    assert error.reason == "replay"
    assert "pending" in error.message


def test_sign_and_submit_picks_the_next_number(pair):
    first = tx_sign_and_submit(private_key=pair.private, type="chain.demo", payload={"nonce": 7})
    second = tx_sign_and_submit(private_key=pair.private, type="chain.demo", payload={"nonce": 8})
    assert (first.seq, second.seq) == (1, 2)


def test_submission_query_count(pair, demo_tx, django_assert_max_num_queries):
    tx_submit(demo_tx(pair, 1))
    with django_assert_max_num_queries(6):
        tx_submit(demo_tx(pair, 2))


# -- the batch path (relayed transactions, a node's own bulk submissions) ------------------------------
def test_a_batch_gets_one_outcome_per_transaction_in_order(pair, demo_tx):
    other = crypto.new_ed25519()
    good = [demo_tx(pair, 1), demo_tx(pair, 2), demo_tx(other, 1)]
    forged = dataclasses.replace(demo_tx(pair, 3), payload={"nonce": 99})
    gap = demo_tx(other, 5)
    batch = [good[0], b"not a transaction", good[1], forged, good[0], gap, good[2].encode()]

    outcomes = tx_submit_many(batch)

    reasons = [o.reason if isinstance(o, TxRejected) else "ok" for o in outcomes]
    assert reasons == ["ok", "bad-encoding", "ok", "bad-signature", "replay", "bad-seq", "ok"]
    assert set(MempoolEntry.objects.values_list("cid", flat=True)) == {str(tx.cid) for tx in good}


def test_a_batch_continues_where_the_mempool_stands(pair, demo_tx):
    tx_submit(demo_tx(pair, 1))
    outcomes = tx_submit_many([demo_tx(pair, 2), demo_tx(pair, 3)])
    assert [o.seq for o in outcomes] == [2, 3]
    assert next_seq(pair.public) == 4


def test_a_batch_costs_a_fixed_number_of_queries(demo_tx, django_assert_max_num_queries):
    pairs = [crypto.new_ed25519() for _ in range(20)]
    batch = [demo_tx(p, seq) for p in pairs for seq in (1, 2, 3, 4, 5)]
    with django_assert_max_num_queries(8):
        outcomes = tx_submit_many(batch)
    assert not [o for o in outcomes if isinstance(o, TxRejected)]
    assert MempoolEntry.objects.count() == 100


def test_a_batch_refuses_what_a_concurrent_submission_took_and_keeps_the_rest(pair, demo_tx, monkeypatch):
    import chain.ledger_services as services

    tx_submit(demo_tx(pair, 1, nonce=1))
    monkeypatch.setattr(services, "_pending_seqs", lambda signers: {})  # read before that submission
    other = crypto.new_ed25519()
    outcomes = tx_submit_many([demo_tx(pair, 1, nonce=2), demo_tx(other, 1)])
    assert isinstance(outcomes[0], TxRejected) and outcomes[0].reason == "replay"
    assert outcomes[1].seq == 1
    assert MempoolEntry.objects.count() == 2


# -- submissions outside a transaction share commits (group commit) ------------------------------------
def _in_threads(work, count: int) -> list:
    """Run ``work(index)`` in ``count`` threads started together; their results (or exceptions) in order."""
    import threading

    from django.db import connection

    results: list = [None] * count
    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = work(index)
        except BaseException as exc:  # handed to the test to look at
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_submitters_outside_a_transaction_each_get_their_own_committed_outcome(demo_tx):
    pairs = [crypto.new_ed25519() for _ in range(8)]
    txs = [[demo_tx(p, seq) for seq in range(1, 11)] for p in pairs]
    forged = dataclasses.replace(demo_tx(pairs[0], 11), payload={"nonce": 99})

    def submit_all(index: int) -> list:
        outcomes = [tx_submit(tx).cid for tx in txs[index]]
        if index == 0:
            try:
                tx_submit(forged)
            except TxRejected as refused:
                outcomes.append(refused.reason)
        return outcomes

    results = _in_threads(submit_all, len(pairs))

    for index, outcomes in enumerate(results):
        assert outcomes[:10] == [str(tx.cid) for tx in txs[index]], outcomes
    assert results[0][10] == "bad-signature"  # refused to its own submitter only
    assert MempoolEntry.objects.count() == 80  # every acknowledged one is committed


@pytest.mark.django_db(transaction=True)
def test_a_failed_group_commit_fails_every_submission_in_it_and_writes_nothing(demo_tx, monkeypatch):
    import chain.ledger_services as services

    real = services._insert_entries

    def failing(entries, outcomes):
        with transaction.atomic():
            real(entries, outcomes)  # the rows are inserted, then the database fails before the commit
            raise services.IntegrityError("disk full")

    monkeypatch.setattr(services, "_insert_entries", failing)
    pairs = [crypto.new_ed25519() for _ in range(4)]
    results = _in_threads(lambda index: tx_submit(demo_tx(pairs[index], 1)), len(pairs))
    assert all(isinstance(r, services.IntegrityError) for r in results), results
    assert not MempoolEntry.objects.exists()
    monkeypatch.setattr(services, "_insert_entries", real)
    assert tx_submit(demo_tx(pairs[0], 1)).seq == 1  # the next submitter leads again


# -- SQLite: submitters of several processes take turns at the write lock -------------------------------
_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.django_db(transaction=True)
def test_a_group_commit_waits_its_turn_and_gets_it_when_the_holder_dies(pair, demo_tx, monkeypatch, tmp_path):
    import signal
    import subprocess
    import sys
    import threading

    import chain.ledger_services as services

    turn = str(tmp_path / "db.sqlite3.submit-turn")
    monkeypatch.setattr(services, "_submit_turn_path", lambda: turn)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, turn], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another process is in its write transaction
        done = threading.Event()
        results = []

        def submit() -> None:
            from django.db import connection

            try:
                results.append(tx_submit(demo_tx(pair, 1)))
            finally:
                connection.close()
                done.set()

        submitter = threading.Thread(target=submit)
        submitter.start()
        assert not done.wait(0.5)  # waiting for its turn, nothing written
        assert not MempoolEntry.objects.exists()
        holder.send_signal(signal.SIGKILL)  # the holder dies mid-transaction: the kernel frees the turn
        assert done.wait(10)
        submitter.join()
    finally:
        holder.kill()
        holder.wait()
    assert results[0].seq == 1
    assert MempoolEntry.objects.get().cid == results[0].cid


def test_the_turn_is_taken_only_for_an_sqlite_file_outside_a_transaction(tmp_path):
    from types import SimpleNamespace

    from chain.ledger_services import _submit_turn_path

    def db(vendor="sqlite", name=tmp_path / "yilian.sqlite3", in_atomic_block=False):
        return SimpleNamespace(vendor=vendor, settings_dict={"NAME": name}, in_atomic_block=in_atomic_block)

    assert _submit_turn_path(db()) == str(tmp_path / "yilian.sqlite3.submit-turn")
    assert _submit_turn_path(db(in_atomic_block=True)) is None  # the caller may hold the write lock already
    assert _submit_turn_path(db(name="file:memorydb_default?mode=memory&cache=shared")) is None  # one process
    assert _submit_turn_path(db(vendor="mysql")) is None  # row locks: nothing to order
